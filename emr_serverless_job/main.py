"""Entry point: ``spark-submit emr_serverless_job/main.py --input ... --output ...``.

The same file runs on EMR Serverless (spark-submit provides the session and the
package arrives through ``--py-files``) and locally through ``python -m
emr_serverless_job``, which starts a ``local[*]`` session with this interpreter as
the workers' Python.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file from a checkout: make the package next to this file importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emr_serverless_job.config import ConfigError, JobConfig, parse_args

LOCAL_DRIVER_MEMORY = "4g"
EXIT_CONFIG_ERROR = 2
EXIT_RUN_FAILED = 1


def spark_session(app_name: str) -> object:
    """The session spark-submit prepared, or a local one when started by plain Python."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.master(os.environ.get("SPARK_MASTER", "local[*]"))
            .config("spark.driver.memory", LOCAL_DRIVER_MEMORY)
            .config("spark.sql.session.timeZone", "UTC")
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def main(argv: list[str] | None = None) -> int:
    try:
        config: JobConfig = parse_args(argv)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    from emr_serverless_job import job
    from emr_serverless_job.inputs import InputError
    from emr_serverless_job.model import ModelError
    from emr_serverless_job.reduce import ReductionMismatch

    spark = spark_session("fruits-features")
    try:
        report = job.run(config, spark)
    except (InputError, ModelError, ReductionMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except job.ReconciliationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    finally:
        spark.stop()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
