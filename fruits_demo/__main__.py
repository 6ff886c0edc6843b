"""``python -m fruits_demo`` (``./dev run``): the demo, ``fruits_demo.run``."""

import sys

from fruits_demo.run import main

sys.exit(main())
