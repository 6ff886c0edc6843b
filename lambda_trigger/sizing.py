"""How big a run's workers are, from how many photos (and bytes) it reads.

A trigger batch of a few hundred photos is seconds of work, and EMR Serverless bills every
worker it holds for at least a minute; a backfill of a million is hours of work that should
spread over every executor the application allows. So the request's executor size and count
follow from the run's work, estimated from the figures measured on this project's benchmark
machine (BENCHMARKS.md, runs J and K), within ``MaxExecutors``. Pure: no Spark, no AWS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# vCPU-seconds of the featurize stage per photo, ONNX int8 at 224 px: 2 cores at 159.3 img/s
# (run K, 5,000 Fruits-360 photos of ~20 KB), and per MB of JPEG beyond that: 100 phone photos
# (4032x3024, 2-4 MB) took about 10 s more than small ones on 2 cores (run J), decoding.
PHOTO_VCPU_S = 2 / 159.3
MB_VCPU_S = 0.062
# A run is spread wide enough that its featurizing work takes about this long per executor:
# longer runs would leave executors the quota allows unused; shorter ones pay each extra
# worker's start (tens of seconds) and its billing minimum for little work.
TARGET_WORK_S = 120
# (vCPU, JVM heap GB, memory overhead GB) per runtime. Each Python worker (one per vCPU) needs
# about 0.86 GiB (ONNX) or 1.6 GiB (TensorFlow) and up to 433 MiB more while decoding the
# largest admitted photo (BENCHMARKS.md, "Decode memory"); the heap holds result rows. EMR
# Serverless takes 2 vCPU with 4-16 GB and 4 vCPU with 8-30 GB, in 1 GB steps
# (docs.aws.amazon.com/emr/latest/EMR-Serverless-UserGuide/app-behavior.html). The large ONNX
# executor is the tightest: 4 x 1.29 GiB at worst in 6 GB of overhead leaves about 0.9 GB for
# the JVM's off-heap memory and a task's input batch (phone photos measured 2.3 GiB in all,
# BENCHMARKS.md); the small one holds 2 x 1.29 GiB in 4 GB.
SMALL_EXECUTOR = {"onnx": (2, 2, 4), "tensorflow": (2, 2, 5)}
LARGE_EXECUTOR = {"onnx": (4, 4, 6), "tensorflow": (4, 5, 9)}
DRIVER = (2, 4, 2)  # its Python holds the PCA moments' 1280 x 1280 matrices and manifest checks
# Runs whose work fits one small executor within TARGET_WORK_S use one: 240 vCPU-s is about
# 19,000 small photos, or 1,000 phone photos.
SMALL_RUN_VCPU_S = SMALL_EXECUTOR["onnx"][0] * TARGET_WORK_S


@dataclass(frozen=True)
class Worker:
    cores: int
    memory_gb: int  # the JVM heap
    overhead_gb: int  # Python workers, Arrow, native libraries

    @property
    def billed_gb(self) -> int:
        return self.memory_gb + self.overhead_gb


@dataclass(frozen=True)
class RunSize:
    driver: Worker
    executor: Worker
    min_executors: int
    initial_executors: int
    max_executors: int

    @property
    def max_vcpu(self) -> int:
        return self.driver.cores + self.max_executors * self.executor.cores

    def spark_conf(self) -> dict[str, str]:
        """The StartJobRun Spark properties that give a run this size."""
        return {
            "spark.driver.cores": str(self.driver.cores),
            "spark.driver.memory": f"{self.driver.memory_gb}g",
            "spark.driver.memoryOverhead": f"{self.driver.overhead_gb}g",
            "spark.executor.cores": str(self.executor.cores),
            "spark.executor.memory": f"{self.executor.memory_gb}g",
            "spark.executor.memoryOverhead": f"{self.executor.overhead_gb}g",
            "spark.dynamicAllocation.minExecutors": str(self.min_executors),
            "spark.dynamicAllocation.initialExecutors": str(self.initial_executors),
            "spark.dynamicAllocation.maxExecutors": str(self.max_executors),
            # The job splits its input into 4 x this many partitions; without it, the count
            # would follow the few executors that exist when the job starts.
            "spark.default.parallelism": str(self.max_executors * self.executor.cores),
        }


def work_vcpu_s(photos: int, total_bytes: int | None = None) -> float:
    """The featurize stage's vCPU-seconds for ``photos`` photos of ``total_bytes`` in all
    (unknown: counted as small photos, as a backfill's listing does not sum sizes)."""
    megabytes = (total_bytes or 0) / 1e6
    return photos * PHOTO_VCPU_S + megabytes * MB_VCPU_S


def widest_work_vcpu_s(max_executors: int, runtime: str = "onnx") -> float:
    """The work from which ``size_run`` gives every executor allowed: counting a backfill's
    photos past it changes nothing, so its listing stops there."""
    return max_executors * LARGE_EXECUTOR[runtime][0] * TARGET_WORK_S


def widest(runtime: str, max_executors: int) -> RunSize:
    """A run whose size is not known when it is submitted (a backfill of a prefix): every
    executor the stack allows, from the start."""
    return RunSize(
        driver=Worker(*DRIVER),
        executor=Worker(*LARGE_EXECUTOR[runtime]),
        min_executors=1,
        initial_executors=max_executors,
        max_executors=max_executors,
    )


def size_run(
    photos: int, *, runtime: str, max_executors: int, total_bytes: int | None = None
) -> RunSize:
    """The smallest footprint that does ``photos`` photos' work in about TARGET_WORK_S per
    executor, within ``max_executors``."""
    if max_executors < 1:
        raise ValueError(f"max_executors {max_executors}: at least 1")
    work = work_vcpu_s(photos, total_bytes)
    if work <= SMALL_RUN_VCPU_S:
        executor = Worker(*SMALL_EXECUTOR[runtime])
        count = 1
    else:
        executor = Worker(*LARGE_EXECUTOR[runtime])
        count = min(max_executors, math.ceil(work / (executor.cores * TARGET_WORK_S)))
    # All of them from the start (the work is known), and let idle ones go at the tail.
    return RunSize(
        driver=Worker(*DRIVER),
        executor=executor,
        min_executors=1,
        initial_executors=count,
        max_executors=count,
    )
