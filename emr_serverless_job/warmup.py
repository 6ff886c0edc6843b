"""Start the Python workers and build the model in them while the driver lists the inputs.

Without this, a run's first featurize batch arrived about 5 s after the stage started: the
executors fork their Python workers, import numpy, pandas, pyarrow and ONNX Runtime, and
build the inference session, while everything else waits. Listing (a folder walk, or reading
a manifest) runs on the driver and leaves the executors idle, so a one-row-per-core Spark
job, started from a background thread, does that work meanwhile. Spark keeps Python workers
alive between tasks (``spark.python.worker.reuse``, on by default) and hands a task an idle
worker of the same kind, so the featurize tasks find the model already built
(``featurize.worker_featurizer`` caches it per process).

The warm-up is only ever a head start: if it fails or is slow, the featurize tasks build the
model themselves and any real problem with it fails the run there, with its own error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
from pyspark import InheritableThread
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from emr_serverless_job.featurize import Counters, FeaturizerSpec, worker_featurizer

JOB_GROUP = "warm-up"
ERROR_CHARS = 500


@dataclass(frozen=True)
class Warmup:
    """A warm-up in flight; ``finish`` waits for it and says what it did."""

    thread: InheritableThread
    counters: Counters
    outcome: dict[str, object]

    def finish(self) -> dict[str, object]:
        """workers warmed, models built, seconds, and the error if it failed."""
        self.thread.join()
        return {**self.outcome, "models_built": self.counters.models_built.value}


def _warm_udf(spec: FeaturizerSpec, counters: Counters) -> Callable[..., object]:
    """A pandas UDF of the featurize UDF's kind (so Spark gives both the same workers) that
    builds the model and returns the worker's process id."""

    @F.pandas_udf(T.LongType())
    def warm(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        worker_featurizer(spec, counters)
        for ids in batches:
            yield pd.Series([os.getpid()] * len(ids), dtype="int64")

    return warm


def start(spark: SparkSession, spec: FeaturizerSpec) -> Warmup:
    """Run the warm-up job in the background: one task per core the session has now."""
    slots = spark.sparkContext.defaultParallelism
    counters = Counters.create(spark)
    outcome: dict[str, object] = {}

    def work() -> None:
        started = time.perf_counter()
        try:
            spark.sparkContext.setJobGroup(JOB_GROUP, "start Python workers, build the model")
            warm = _warm_udf(spec, counters)
            rows = spark.range(0, slots, 1, numPartitions=slots).select(warm("id")).collect()
            outcome["workers"] = len({row[0] for row in rows})
        except Exception as error:  # a head start only: featurize builds what is missing
            outcome["error"] = f"{type(error).__name__}: {error}"[:ERROR_CHARS]
        outcome["seconds"] = round(time.perf_counter() - started, 3)

    thread = InheritableThread(target=work, daemon=True)
    thread.start()
    return Warmup(thread, counters, outcome)
