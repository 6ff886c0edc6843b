"""The pandas UDF that turns image bytes into features on Spark's Python workers.

The model is built once per Python worker process (workers are reused across tasks)
and then fed whole Arrow batches; per-row work is limited to decoding. When the PCA
projection is known before the run (a manifest run reuses the backfill's), each batch is
projected right after inference, so the features are never read a second time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import Accumulator, SparkFiles, TaskContext
from pyspark.broadcast import Broadcast
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from emr_serverless_job.images import decode_batch, preprocess
from emr_serverless_job.model import Weights, onnx_featurizer, tensorflow_featurizer
from emr_serverless_job.projection import Projection

RESULT_TYPE = T.StructType(
    [
        T.StructField("features", T.ArrayType(T.FloatType(), containsNull=False)),
        T.StructField("pca_features", T.ArrayType(T.FloatType(), containsNull=False)),
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("error", T.StringType()),
    ]
)

Featurizer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FeaturizerSpec:
    """What a worker needs to build the model; small, hashable and picklable."""

    image_size: int
    weights: Weights
    batch_size: int
    # Name under which Spark distributed the weights file (SparkFiles), if any.
    weights_file: str | None = None
    runtime: str = "tensorflow"
    # Name under which Spark distributed the .onnx model (runtime onnx).
    model_file: str | None = None


@dataclass(frozen=True)
class Counters:
    """Accumulators that prove how often the expensive parts ran."""

    images: Accumulator
    models_built: Accumulator

    @classmethod
    def create(cls, spark: SparkSession) -> Counters:
        return cls(spark.sparkContext.accumulator(0), spark.sparkContext.accumulator(0))


_FEATURIZERS: dict[FeaturizerSpec, Featurizer] = {}


def distribute(spark: SparkSession, location: str) -> str:
    """Ship a model or weights file to every executor through Spark (EMR workers have no
    internet; s3:// works too). Returns the name workers look it up under (SparkFiles)."""
    spark.sparkContext.addFile(location)
    return os.path.basename(location)


def distribute_weights(spark: SparkSession, weights: Weights) -> str | None:
    """The weights file, when ``--weights`` names one; None for imagenet and random."""
    return distribute(spark, weights.location) if weights.kind == "file" else None


def _task_cpus() -> int:
    context = TaskContext.get()
    return max(1, context.cpus()) if context is not None else 1


def worker_featurizer(spec: FeaturizerSpec, counters: Counters) -> Featurizer:
    """This process's featurizer for ``spec``, built on first use only."""
    featurizer = _FEATURIZERS.get(spec)
    if featurizer is None:
        started = time.perf_counter()
        threads = _task_cpus()
        if spec.runtime == "onnx" and spec.model_file:
            featurizer = onnx_featurizer(SparkFiles.get(spec.model_file), threads=threads)
            source = spec.model_file
        else:
            weights_path = SparkFiles.get(spec.weights_file) if spec.weights_file else None
            featurizer = tensorflow_featurizer(
                spec.image_size, spec.weights, weights_path, threads=threads
            )
            source = spec.weights.describe()
        _FEATURIZERS[spec] = featurizer
        counters.models_built.add(1)
        _worker_event(
            "model_built",
            pid=os.getpid(),
            python=sys.executable,
            python_resolved=os.path.realpath(sys.executable),
            runtime=spec.runtime,
            threads=threads,
            image_size=spec.image_size,
            model=source,
            seconds=round(time.perf_counter() - started, 2),
        )
    return featurizer


def featurize_batch(
    contents: pd.Series,
    featurizer: Featurizer,
    image_size: int,
    batch_size: int,
    projection: Projection | None = None,
) -> pd.DataFrame:
    """One Arrow batch of image bytes to one row of results per input, in order."""
    decoded = decode_batch(contents.tolist(), image_size)
    features: list[np.ndarray | None] = [None] * len(contents)
    reduced: list[np.ndarray | None] = [None] * len(contents)
    inputs = preprocess(decoded.pixels)
    for start in range(0, len(inputs), batch_size):
        chunk = featurizer(inputs[start : start + batch_size])
        projected = projection.project(chunk) if projection is not None else None
        for offset, vector in enumerate(chunk):
            row = decoded.ok_rows[start + offset]
            features[row] = vector
            if projected is not None:
                reduced[row] = projected[offset]
    return pd.DataFrame(
        {
            "features": features,
            "pca_features": reduced,
            "width": pd.array(decoded.widths, dtype="Int32"),
            "height": pd.array(decoded.heights, dtype="Int32"),
            "error": decoded.errors,
        }
    )


def _worker_event(name: str, **fields: object) -> None:
    """A JSON line in the executor's stderr log (the driver's logger does not reach here).

    One ``write`` per line: Spark runs workers unbuffered (PYTHONUNBUFFERED), and ``print``
    writes the text and the newline separately, so two workers logging at once could glue
    their lines together. A single write of less than PIPE_BUF bytes stays whole.
    """
    sys.stderr.write(json.dumps({"event": name, **fields}, ensure_ascii=False) + "\n")


def _log_rejections(paths: pd.Series, errors: list[str | None]) -> None:
    """One line per rejected image in the executor's log, next to the error table."""
    for path, error in zip(paths, errors, strict=True):
        if error is not None:
            _worker_event("image_rejected", path=path, reason=error)


def make_udf(
    spec: FeaturizerSpec, counters: Counters, projection: Broadcast | None = None
) -> Callable[..., object]:
    """The iterator pandas UDF ``(path, content) -> struct<features, pca_features, width,
    height, error>``; ``pca_features`` is null unless a (broadcast) projection is given."""

    @F.pandas_udf(RESULT_TYPE)
    def featurize(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        featurizer = worker_featurizer(spec, counters)
        reduction = projection.value if projection is not None else None
        for paths, contents in batches:
            result = featurize_batch(
                contents, featurizer, spec.image_size, spec.batch_size, reduction
            )
            _log_rejections(paths, result["error"].tolist())
            counters.images.add(len(contents))
            yield result

    return featurize
