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

# C1 compiler only (the reason is with the constant); the trigger passes the same option to
# EMR's driver and executors. On EMR the package arrives in the --py-files zip with the job's.
from fruits_contract import JVM_OPTIONS, PREFLIGHT_FLAG
from fruits_contract.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, USAGE_PREFIX

LOCAL_DRIVER_MEMORY = "4g"
EXIT_CONFIG_ERROR = EXIT_USAGE
EXIT_RUN_FAILED = EXIT_FAILED
# PySpark's Arrow code imports distutils in every Python worker. In a development venv,
# setuptools' hook answers that import by loading setuptools (a fixed cost per process,
# BENCHMARKS-history.md);
# the deployed archive has no setuptools (fruits_build/slim.py), so local runs and their
# workers (which inherit this environment) take the standard library's, as EMR does.
DISTUTILS_ENV = ("SETUPTOOLS_USE_DISTUTILS", "stdlib")
# The collector EMR's Spark runtime gives its JVMs: its spark-defaults.conf puts
# -XX:+UseParallelGC in spark.driver.defaultJavaOptions and spark.executor.defaultJavaOptions
# (EMR on EKS publishes those defaults; EMR Serverless runs the same runtime, and the report's
# spark.driver_gc says what a real run got). Without it a local JVM gets JDK 17's G1, which
# cost 0.35-1.0 s of a 5,000-photo run here (three pairs; BENCHMARKS.md, "Garbage collector
# and photos per model call"). Set as the defaults, not the extras, as EMR does:
# extraJavaOptions add to it (the executors' setting serves a local-cluster or standalone
# SPARK_MASTER). A different collector in JAVA_TOOL_OPTIONS would clash and stop the JVM.
LOCAL_DEFAULT_JAVA_OPTIONS = "-XX:+UseParallelGC"


def local_builder(master: str, driver_memory: str) -> object:
    """A session builder for a JVM this Python process starts (local runs and tests)."""
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(master)
        .config("spark.driver.memory", driver_memory)
        .config("spark.driver.defaultJavaOptions", LOCAL_DEFAULT_JAVA_OPTIONS)
        .config("spark.executor.defaultJavaOptions", LOCAL_DEFAULT_JAVA_OPTIONS)
        .config("spark.driver.extraJavaOptions", JVM_OPTIONS)
        .config("spark.executor.extraJavaOptions", JVM_OPTIONS)
        .config("spark.sql.session.timeZone", "UTC")
    )


def spark_session(app_name: str) -> object:
    """The session spark-submit prepared, or a local one when started by plain Python."""
    from pyspark.sql import SparkSession

    if "PYSPARK_GATEWAY_PORT" in os.environ:  # launched by spark-submit, as on EMR
        builder = SparkSession.builder
    else:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault(*DISTUTILS_ENV)
        master = os.environ.get("SPARK_MASTER", "local[*]")
        builder = local_builder(master, LOCAL_DRIVER_MEMORY)
    spark = builder.appName(app_name).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def is_preflight(argv: list[str]) -> bool:
    return any(arg == PREFLIGHT_FLAG or arg.startswith(f"{PREFLIGHT_FLAG}=") for arg in argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if is_preflight(argv):
        # Before anything imports the archive's libraries: a preflight reports an interpreter
        # or a library that cannot load, where a run would only die with a traceback.
        from emr_serverless_job import preflight

        return preflight.main(argv)
    from emr_serverless_job.config import ConfigError, JobConfig, parse_args

    try:
        config: JobConfig = parse_args(argv)
    except ConfigError as error:
        print(f"{USAGE_PREFIX}{error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    from emr_serverless_job import compact, erase, job
    from emr_serverless_job.inputs import InputError
    from emr_serverless_job.model import ModelError
    from emr_serverless_job.reduce import ReductionMismatch

    spark = spark_session("fruits-features")
    try:
        if config.erase:
            report = erase.run(config, spark)
        elif config.compact is not None:
            report = compact.run(config, spark)
        else:
            report = job.run(config, spark)
    except (InputError, ModelError, ReductionMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except (
        job.ReconciliationError,
        erase.ErasureIncomplete,
        compact.CompactionMismatch,
        compact.CompactionBusy,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    finally:
        spark.stop()
    print(report.summary())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
