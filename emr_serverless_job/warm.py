"""Warm the Python workers while the driver plans: each builds its model before photos arrive.

A fresh Python worker's first task imports the runtime and builds the model (about 1.5 s a
worker on 2 vCPU), and until the featurizing pass starts the executors' cores wait while the
driver lists the inputs and plans (about 4 s of a 5,000-photo run: BENCHMARKS.md, "Warm
workers"). A small job, submitted from a thread as soon as the model is shipped, builds every
worker's model in that wait; the pass then finds it built (``featurize.worker_featurizer``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from pyspark import InheritableThread
from pyspark.sql import SparkSession

from emr_serverless_job.featurize import Counters, FeaturizerSpec, worker_featurizer
from fruits_contract import logs
from fruits_contract.logs import log

# What a warm-up task returns: the Python worker it warmed.
WARM_SCHEMA = "worker_pid long"


def make_warmer(
    spec: FeaturizerSpec, counters: Counters
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of a warm-up task. A SQL function like the featurizing one,
    not an RDD task: Spark keeps SQL and RDD Python workers apart (their environments differ),
    so an RDD task would warm a worker the pass never uses. Its model counts in
    ``models_built`` as the pass's own would have."""

    def warm(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for _ in batches:
            pass
        worker_featurizer(spec, counters)
        yield pa.RecordBatch.from_arrays([pa.array([os.getpid()], pa.int64())], ["worker_pid"])

    return warm


@dataclass
class Warming:
    """The warm-up job running in the background; ``wait`` before the featurizing pass.

    Its failure fails nothing: the pass builds the same model and reports the same error
    where a run reports errors. Only its outcome is logged here.
    """

    thread: InheritableThread
    outcome: dict[str, object] = field(default_factory=dict)

    def wait(self) -> None:
        self.thread.join()


def start(spark: SparkSession, spec: FeaturizerSpec, counters: Counters) -> Warming:
    """One warm-up task per core the session has, in a thread of its own."""
    tasks = spark.sparkContext.defaultParallelism
    frame = spark.range(0, tasks, 1, tasks).mapInArrow(make_warmer(spec, counters), WARM_SCHEMA)

    def run() -> None:
        started = time.perf_counter()
        try:
            pids = sorted({row.worker_pid for row in frame.collect()})
        except Exception as error:  # the featurizing pass reports it where runs report errors
            # A worker's exception arrives as its whole traceback; its last line says what failed.
            lines = str(error).strip().splitlines() or [""]
            warming.outcome = {"error": f"{type(error).__name__}: {lines[-1][:300]}"}
            log("workers_warm_failed", logs.WARNING, **warming.outcome)
            return
        warming.outcome = {"workers": pids, "seconds": round(time.perf_counter() - started, 3)}
        log("workers_warmed", tasks=tasks, **warming.outcome)

    warming = Warming(InheritableThread(target=run, daemon=True))
    warming.thread.start()
    return warming
