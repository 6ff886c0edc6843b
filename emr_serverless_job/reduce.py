"""PCA over the 1280-d features on Spark: fitted once on a backfill, saved, reused.

The moments come from the Python workers, the projection (``projection.py``) is plain data
stored as ``projection.npz`` and applied with one NumPy product per Arrow batch, in the
same pass that featurizes when the model is known before the run starts (manifest runs).

A manifest run must project an image exactly as the backfill would have, so the fitted
reduction is saved with a metadata file naming what it was fitted on (image size,
weights, precision), and loading checks that the current run matches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from emr_serverless_job import hadoopfs
from emr_serverless_job.model import FP32
from emr_serverless_job.moments import Moments
from emr_serverless_job.projection import Projection, fit_projection
from emr_serverless_job.vectors import VECTOR_TYPE, to_list_array, to_matrix

METADATA_FILE = "featurizer.json"
PROJECTION_FILE = "projection.npz"
MIN_ROWS_TO_FIT = 2
PCA_MODEL_COLUMN = "pca_model"  # in the features table: the run that fitted the projection
# Rows per NumPy product when computing moments: large enough for BLAS to run at speed,
# small enough (4096 x 1280 float64 = 40 MiB) to stay out of the executor's way.
MOMENTS_BLOCK_ROWS = 4096
MOMENTS_SCHEMA = "moments binary"


class ReductionMismatch(ValueError):
    """The saved PCA model was fitted on features this run does not produce."""


@dataclass(frozen=True)
class ReductionInfo:
    """What a fitted reduction is, for the run report and for checks when reloading it.

    Models saved before ``scaling`` and ``precision`` were recorded were standardized
    and fitted on fp32 features, hence the defaults.
    """

    k: int
    explained_variance: float
    component_variance: list[float]
    image_size: int
    weights: str
    fitted_by_run: str
    fitted_rows: int
    scaling: str = "standard"
    precision: str = FP32


@dataclass(frozen=True)
class Reduction:
    projection: Projection
    info: ReductionInfo


def fit(
    spark: SparkSession,
    features: DataFrame,
    *,
    k: int | None,
    variance: float,
    scaling: str,
    image_size: int,
    weights: str,
    precision: str,
    run_id: str,
    rows: int,
) -> Reduction:
    """Fit PCA on a (cached) frame with a ``features`` array column.

    The moments come from one pass on the Python workers (``feature_moments``); the
    (d x d) matrix is decomposed on the driver.
    """
    projection, spectrum = fit_projection(
        feature_moments(spark, features), scaling=scaling, k=k, variance=variance
    )
    info = ReductionInfo(
        k=projection.k,
        explained_variance=float(spectrum[: projection.k].sum()),
        component_variance=[float(v) for v in spectrum],
        image_size=image_size,
        weights=weights,
        fitted_by_run=run_id,
        fitted_rows=rows,
        scaling=scaling,
        precision=precision,
    )
    return Reduction(projection=projection, info=info)


def feature_moments(spark: SparkSession, features: DataFrame) -> Moments:
    """Mean and scatter of the ``features`` column, in two rounds on the Python workers.

    Each of at most one partition per core computes its rows' moments with one NumPy
    product per block; about sqrt(partitions) tasks then merge those, so the driver
    receives a few (d x d) matrices, never one per partition. The shuffle in between
    keeps one Python worker per task: a pipelined ``rdd.treeReduce`` started a second
    one per task next to the first (peak memory of a 5,000-image run: 3.8 GiB against
    2.6 to 3.2 GiB).
    """
    cores = spark.sparkContext.defaultParallelism
    partial = (
        features.select("features").coalesce(cores).mapInArrow(_partition_moments, MOMENTS_SCHEMA)
    )
    merged = partial.repartition(math.isqrt(cores - 1) + 1).mapInArrow(
        _merge_moments, MOMENTS_SCHEMA
    )
    total = _merged(Moments.from_bytes(row["moments"]) for row in merged.collect())
    if total is None:
        raise ValueError("no feature vectors to fit a PCA model on")
    return total


def _partition_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """First round: one partition's moments (nothing for an empty partition)."""
    total = _merged(Moments.of(block) for block in _row_blocks(batches))
    if total is not None:
        yield _moments_batch(total)


def _merge_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Second round: the first round's pieces that landed in this partition, as one."""
    pieces = (Moments.from_bytes(data) for batch in batches for data in batch.column(0).to_pylist())
    total = _merged(pieces)
    if total is not None:
        yield _moments_batch(total)


def _merged(pieces: Iterable[Moments]) -> Moments | None:
    total: Moments | None = None
    for piece in pieces:
        total = piece if total is None else total.merge(piece)
    return total


def _row_blocks(batches: Iterator[pa.RecordBatch]) -> Iterator[np.ndarray]:
    """The feature rows of Arrow batches, regrouped into blocks large enough for BLAS."""
    block: list[np.ndarray] = []
    held = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        block.append(to_matrix(batch.column(0)))
        held += batch.num_rows
        if held >= MOMENTS_BLOCK_ROWS:
            yield np.concatenate(block)
            block, held = [], 0
    if block:
        yield np.concatenate(block)


def _moments_batch(moments: Moments) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([moments.to_bytes()], pa.binary())], ["moments"])


def save(spark: SparkSession, reduction: Reduction, uri: str) -> None:
    """Replace whatever was saved at ``uri`` (a Spark ML pipeline from older runs too)."""
    hadoopfs.delete(spark, uri)
    hadoopfs.write_bytes(spark, f"{uri}/{PROJECTION_FILE}", reduction.projection.to_bytes())
    hadoopfs.write_bytes(
        spark, f"{uri}/{METADATA_FILE}", json.dumps(asdict(reduction.info), indent=2).encode()
    )


def saved_info(spark: SparkSession, uri: str) -> ReductionInfo | None:
    """What the reduction saved at ``uri`` is, or None when no backfill has saved one there."""
    metadata_uri = f"{uri}/{METADATA_FILE}"
    if not hadoopfs.exists(spark, metadata_uri):
        return None
    return ReductionInfo(**json.loads(hadoopfs.read_bytes(spark, metadata_uri)))


def load(
    spark: SparkSession, uri: str, *, image_size: int, weights: str, precision: str
) -> Reduction | None:
    """The saved reduction at ``uri``, or None when no backfill has saved one there yet."""
    info = saved_info(spark, uri)
    if info is None:
        return None
    if info.image_size != image_size:
        raise ReductionMismatch(
            f"the PCA model at {uri} was fitted on {info.image_size} px features; "
            f"this run uses --image-size {image_size}"
        )
    if info.precision != precision:
        raise ReductionMismatch(
            f"the PCA model at {uri} was fitted on {info.precision} features; this run's "
            f"model computes {precision} features (use a model of the same precision, or "
            "run a backfill to fit a new PCA model)"
        )
    if info.weights != weights:
        raise ReductionMismatch(
            f"the PCA model at {uri} was fitted on features from weights {info.weights}; "
            f"this run uses {weights}"
        )
    projection_uri = f"{uri}/{PROJECTION_FILE}"
    if hadoopfs.exists(spark, projection_uri):
        projection = Projection.from_bytes(hadoopfs.read_bytes(spark, projection_uri))
    else:
        projection = _spark_ml_projection(uri)
    return Reduction(projection=projection, info=info)


def _spark_ml_projection(uri: str) -> Projection:
    """A model saved before the projection was stored plainly: a Spark ML pipeline of a
    StandardScalerModel and a PCAModel. Read once, it projects exactly as it did."""
    from pyspark.ml import PipelineModel

    scaler, pca = PipelineModel.load(uri).stages
    std = scaler.std.toArray()
    scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
    mean = scaler.mean.toArray() if scaler.getWithMean() else np.zeros_like(std)
    return Projection(mean, scale, pca.pc.toArray())


def apply(spark: SparkSession, reduction: Reduction, features: DataFrame) -> DataFrame:
    """Project ``features`` into ``pca_features`` on the workers, and name the space.

    A ``mapInArrow`` function, like the featurizing pass: each Arrow batch's vectors become
    one matrix, one NumPy product and one list column (``vectors.py``), where a pandas UDF
    would turn every projected cell into a Python list of Python floats. The projection
    travels once per executor as a broadcast.
    """
    shipped = spark.sparkContext.broadcast(reduction.projection)
    schema = T.StructType([*features.schema.fields, T.StructField("pca_features", VECTOR_TYPE)])
    arrow_schema = to_arrow_schema(schema)

    def project(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        projection: Projection = shipped.value
        for batch in batches:
            count = batch.num_rows
            projected = projection.project(to_matrix(batch.column("features")))
            columns = [*batch.columns, to_list_array(projected, range(count), count)]
            yield pa.RecordBatch.from_arrays(columns, schema=arrow_schema)

    return in_space(features.mapInArrow(project, schema), reduction)


def in_space(features: DataFrame, reduction: Reduction | None) -> DataFrame:
    """Add the id of the model that projected ``pca_features`` (``pca_model``: the run that
    fitted it; null when there was no model and ``pca_features`` are null too).

    Two backfills fit two PCA spaces; rows of one must never be compared with rows of the
    other, so every row names its space.
    """
    model = F.lit(reduction.info.fitted_by_run if reduction is not None else None)
    return features.withColumn(PCA_MODEL_COLUMN, model.cast("string"))
