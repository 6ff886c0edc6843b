"""The function that turns image bytes into features on Spark's Python workers.

It runs under ``mapInArrow``: each Arrow batch of (path, length, content) comes back as one
Arrow batch of results, with the features written into the list column straight from the
model's output matrix (``vectors.py``) and the content hashed with OpenSSL here rather than
in the JVM. The model is built once per Python worker process (workers are reused across
tasks); per-row work is limited to decoding and hashing. When the PCA projection is known
before the run (a manifest run reuses the backfill's), each batch is projected right after
inference, so the features are never read a second time.
"""

from __future__ import annotations

import os
import sys
import time
import zipimport
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark import Accumulator, SparkFiles, TaskContext
from pyspark.broadcast import Broadcast
from pyspark.sql import SparkSession
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from emr_serverless_job.images import decode_batch, preprocess
from emr_serverless_job.inputs import content_digest
from emr_serverless_job.model import (
    Weights,
    images_per_call,
    onnx_featurizer,
    tensorflow_featurizer,
)
from emr_serverless_job.projection import Projection
from emr_serverless_job.vectors import VECTOR_TYPE, to_list_array
from fruits_contract.logs import log

# What the function reads: binaryFile's columns (``length`` is the file's size in bytes).
INPUT_COLUMNS = ("path", "length", "content")
RESULT_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField("sha256", T.StringType()),
        T.StructField("size_bytes", T.LongType()),
        T.StructField("features", VECTOR_TYPE),
        T.StructField("pca_features", VECTOR_TYPE),
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("error", T.StringType()),
    ]
)
RESULT_ARROW_SCHEMA = to_arrow_schema(RESULT_SCHEMA)

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


class _SettledZipImporter(zipimport.zipimporter):
    """A zip archive's importer that keeps the directory it read.

    Spark's Python worker calls ``importlib.invalidate_caches()`` before every task, and
    each zip importer then parses its archive's whole directory again in pure Python:
    pyspark.zip holds hundreds of files and has an importer per package imported from it,
    tens of milliseconds per task (BENCHMARKS-history.md). The archives on a worker's path
    (pyspark, py4j, the job's own ``--py-files``) do not change while it runs.
    """

    def invalidate_caches(self) -> None:
        return None


def settle_zip_imports() -> None:
    """Make this process's zip importers, present and future, keep their directories."""
    for path, finder in list(sys.path_importer_cache.items()):
        if type(finder) is zipimport.zipimporter:
            sys.path_importer_cache[path] = _SettledZipImporter(path)
    sys.path_hooks[:] = [
        _SettledZipImporter if hook is zipimport.zipimporter else hook for hook in sys.path_hooks
    ]


def worker_featurizer(spec: FeaturizerSpec, counters: Counters) -> Featurizer:
    """This process's featurizer for ``spec``, built on first use only (the first use
    also settles the worker's zip importers, for every task it runs after this one)."""
    featurizer = _FEATURIZERS.get(spec)
    if featurizer is None:
        settle_zip_imports()
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
        log(
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


@dataclass(frozen=True)
class FeaturizedBatch:
    """One batch's outcome: the vectors of its decodable images (in input order) and,
    for every input, its original size or the reason it has no vector."""

    features: np.ndarray  # (n_ok, d) float32
    pca_features: np.ndarray | None  # (n_ok, k) float32, when a projection was given
    ok_rows: list[int]  # input positions of the rows above
    widths: list[int | None]
    heights: list[int | None]
    errors: list[str | None]


def featurize_batch(
    contents: Sequence[bytes | None],
    featurizer: Featurizer,
    image_size: int,
    per_call: int,
    projection: Projection | None = None,
) -> FeaturizedBatch:
    """Decode a batch of image bytes and run the model over the decodable ones, ``per_call``
    at a time (the job's ``images_per_call``), each slice preprocessed just before its call."""
    decoded = decode_batch(contents, image_size)
    chunks = [
        featurizer(preprocess(decoded.pixels[start : start + per_call]))
        for start in range(0, len(decoded.pixels), per_call)
    ]
    features = np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)
    return FeaturizedBatch(
        features=features,
        pca_features=projection.project(features) if projection is not None else None,
        ok_rows=decoded.ok_rows,
        widths=decoded.widths,
        heights=decoded.heights,
        errors=decoded.errors,
    )


def result_batch(
    paths: pa.Array, sizes: pa.Array, contents: Sequence[bytes | None], out: FeaturizedBatch
) -> pa.RecordBatch:
    """The Arrow batch handed back to Spark, in ``RESULT_SCHEMA``: one row per input."""
    count = len(contents)
    digests = [None if data is None else content_digest(data) for data in contents]
    return pa.RecordBatch.from_arrays(
        [
            paths,
            pa.array(digests, pa.string()),
            sizes,
            to_list_array(out.features, out.ok_rows, count),
            to_list_array(out.pca_features, out.ok_rows, count),
            pa.array(out.widths, pa.int32()),
            pa.array(out.heights, pa.int32()),
            pa.array(out.errors, pa.string()),
        ],
        schema=RESULT_ARROW_SCHEMA,
    )


def _log_rejections(paths: Sequence[str], errors: list[str | None]) -> None:
    """One line per rejected image in the executor's log, next to the error table."""
    for path, error in zip(paths, errors, strict=True):
        if error is not None:
            log("image_rejected", path=path, reason=error)


def make_function(
    spec: FeaturizerSpec, counters: Counters, projection: Broadcast | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function ``INPUT_COLUMNS -> RESULT_SCHEMA``; ``pca_features`` is
    null unless a (broadcast) projection is given."""

    def featurize(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Runs on an executor, once per task: the model is this Python worker's (only its first
        task builds it), and each rejected image is logged there, beside its error row."""
        featurizer = worker_featurizer(spec, counters)
        reduction = projection.value if projection is not None else None
        per_call = images_per_call(spec.runtime, spec.image_size, spec.batch_size)
        for batch in batches:
            contents = batch.column("content").to_pylist()
            out = featurize_batch(contents, featurizer, spec.image_size, per_call, reduction)
            paths = batch.column("path")
            if any(error is not None for error in out.errors):
                _log_rejections(paths.to_pylist(), out.errors)
            counters.images.add(len(contents))
            yield result_batch(paths, batch.column("length"), contents, out)

    return featurize
