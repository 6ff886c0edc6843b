"""emr_emulator holds each worker to its container size (emr_emulator/limits.py): the sizes as
Spark and EMR Serverless compute them, the watchdog on stand-in processes, and one Spark run
whose executor needs more than its worker has, which fails as EMR Serverless reports it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from emr_emulator.limits import EXECUTOR_MAIN, MEMORY_KILLED, Watchdog, container_mib
from emr_emulator.run import run_job
from lambda_trigger.request import (
    DRIVER_MEMORY,
    DRIVER_MEMORY_OVERHEAD,
    EXECUTOR_MEMORY,
    EXECUTOR_MEMORY_OVERHEAD,
)

pytestmark = pytest.mark.skipif(not Watchdog.available(), reason="no /proc")


def test_a_worker_is_its_memory_plus_its_overhead_as_spark_sizes_a_container():
    deployed = {
        "spark.driver.memory": DRIVER_MEMORY,
        "spark.driver.memoryOverhead": DRIVER_MEMORY_OVERHEAD,
        "spark.executor.memory": EXECUTOR_MEMORY["onnx"],
        "spark.executor.memoryOverhead": EXECUTOR_MEMORY_OVERHEAD["onnx"],
    }
    assert container_mib(deployed, "driver") == 6 * 1024
    assert container_mib(deployed, "executor") == 10 * 1024
    assert container_mib({}, "executor") == 1024 + 384  # 10%, at least 384 MiB
    assert container_mib({"spark.executor.memory": "10g"}, "executor") == 10240 + 1024
    factor = {"spark.driver.memory": "4g", "spark.driver.memoryOverheadFactor": "0.25"}
    assert container_mib(factor, "driver") == 5120
    # memoryOverhead without a unit is MiB; memory without one is bytes (as Spark reads them)
    plain = {"spark.executor.memory": str(2 << 30), "spark.executor.memoryOverhead": "512"}
    assert container_mib(plain, "executor") == 2560
    assert container_mib({**plain, "spark.executor.pyspark.memory": "1g"}, "executor") == 3584
    with pytest.raises(ValueError, match="not a Spark memory size"):
        container_mib({"spark.executor.memory": "lots"}, "executor")


HOLD = """
import sys, time
block = b"x" * ({mib} << 20)
print("holding", flush=True)
time.sleep(30)
"""


def _wait_for(watchdog: Watchdog, predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not predicate():
        watchdog.sample()
        time.sleep(0.05)


def test_the_watchdog_kills_an_executor_tree_over_its_size_and_the_driver_with_the_run(tmp_path):
    """Stand-ins: a 'java' (Python under that name) with an executor's command line holds
    300 MiB; the executor's size is 200 MiB. Then a driver over its own size."""
    java = tmp_path / "java"
    java.symlink_to(sys.executable)
    executor = [str(java), "-c", HOLD.format(mib=300), EXECUTOR_MAIN, "--executor-id", "7"]
    driver = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess; subprocess.run({executor!r})"],
        start_new_session=True,
    )
    try:
        watchdog = Watchdog(driver.pid, driver_mib=2000, executor_mib=200)
        _wait_for(watchdog, lambda: watchdog.killed)
        (kill,) = watchdog.killed
        assert kill.worker == "executor 7" and kill.limit_mib == 200
        assert 200 < kill.rss_mib < 400
        assert driver.wait(timeout=10) == 0  # the driver lives on (its child was killed)
        assert watchdog.peaks_mib["executor 7"] == kill.rss_mib
        assert watchdog.report()["killed"][0]["worker"] == "executor 7"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)

    big_driver = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(mib=300)], start_new_session=True
    )
    watchdog = Watchdog(big_driver.pid, driver_mib=200, executor_mib=2000)
    _wait_for(watchdog, lambda: watchdog.killed)
    assert [k.worker for k in watchdog.killed] == ["driver"]
    assert big_driver.wait(timeout=10) == -9


GREEDY = """
import sys, time
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()


def hold(_):
    blocks = []
    for _ in range(40):  # up to 4 GiB in 100 MiB steps: more than the worker's 2 GiB
        blocks.append(b"x" * (100 << 20))
        time.sleep(0.05)
    yield len(blocks)


print(spark.sparkContext.parallelize([0], 1).mapPartitions(hold).collect())
spark.stop()
"""


def test_an_executor_over_its_worker_size_fails_the_run_with_the_memory_cause(stack, tmp_path):
    """1 GiB of heap and 1 GiB of overhead: a Python worker holding up to 4 GiB is killed with
    its executor JVM, the task fails (spark.task.maxFailures=1, the request's own setting, keeps
    the run short: by default Spark would retry it 3 times, each killed the same way), and the
    run fails with the worker-memory cause. 25-30 s."""
    s3 = stack.client("s3")
    s3.put_object(Bucket=stack.bucket, Key="artifacts/greedy.py", Body=GREEDY.encode())
    confs = {
        "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": sys.executable,
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
        "spark.executor.memoryOverhead": "1g",
        "spark.task.maxFailures": "1",
    }
    request = {
        "name": "greedy",
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": f"s3://{stack.bucket}/artifacts/greedy.py",
                "sparkSubmitParameters": " ".join(f"--conf {k}={v}" for k, v in confs.items()),
            }
        },
        "executionTimeoutMinutes": 10,
    }
    result = run_job(
        request, s3, workdir=tmp_path / "run", keep=True, host_pythons=(sys.executable,)
    )
    memory = result["emulator"]["memory"]
    assert result["state"] == "FAILED", result["stateDetails"]
    assert MEMORY_KILLED in result["stateDetails"]
    assert memory["limitsMiB"]["executor"] == 2048
    (kill,) = memory["killed"]
    assert kill["worker"].startswith("executor ") and 2048 < kill["rss_mib"] < 4096
    assert kill["processes"] >= 3  # the JVM, the pyspark daemon and its Python worker
    assert (
        memory["failedSamples"] == 0 and memory["peakMiB"]["driver"] < memory["limitsMiB"]["driver"]
    )
    driver_log = (tmp_path / "run" / "driver.stderr").read_text()
    assert "ExecutorLostFailure" in driver_log and "Command exited with code 137" in driver_log
