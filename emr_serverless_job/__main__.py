"""``python -m emr_serverless_job`` runs the job locally with the same flags as spark-submit."""

import sys

from emr_serverless_job.main import main

sys.exit(main())
