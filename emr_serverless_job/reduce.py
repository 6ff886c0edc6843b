"""PCA over the 1280-d features on Spark: fitted once on a backfill, saved, reused.

The moments come from the Python workers, the projection (``projection.py``) is plain data
stored as ``projection.npz`` and applied with one NumPy product per Arrow batch, in the
same pass that featurizes when the model is known before the run starts (manifest runs).

A manifest run must project an image exactly as the backfill would have, so the fitted
reduction is saved with a metadata file naming what it was fitted on (image size,
weights, precision), and loading checks that the current run matches.

Every fit is a new version, saved once and never rewritten, and a pointer names the current
one (``save``): runs and readers in flight during a refit see one whole version.

    pca_model/current.json                      {"version": "v20261202T140000Z-1a2b3c4d", ...}
    pca_model/versions/<version>/projection.npz mean, scale, components
    pca_model/versions/<version>/featurizer.json k, spectrum, what it was fitted on, sha256
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

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
from fruits_contract import PCA_MODEL_COLUMN, PCA_POINTER_FILE, PCA_VERSIONS_FOLDER

METADATA_FILE = "featurizer.json"
PROJECTION_FILE = "projection.npz"
# Under the model folder: PCA_POINTER_FILE ({"version": ..., "fitted_by_run": ...}, written
# last) and PCA_VERSIONS_FOLDER (versions/<id>/{projection.npz,featurizer.json}, never
# rewritten), the contract's: the emulator copies the pointer, then the version it names.
MIN_ROWS_TO_FIT = 2
# Rows per NumPy product when computing moments: large enough for BLAS to run at speed,
# small enough (4096 x 1280 float64 = 40 MiB) to stay out of the executor's way.
MOMENTS_BLOCK_ROWS = 4096
MOMENTS_SCHEMA = "moments binary"
# Partial moments (one per core, each a d x d float64 matrix: 12.5 MiB at 1,280 features) the
# driver merges itself; more are merged on the workers first. 16 admits the deployed request's
# 12 cores (three 4-vCPU executors) with room: the driver then holds the pieces twice while it
# collects them (the JVM's copy and Python's), about 400 MiB, and spark.driver.maxResultSize
# (1g by default) would refuse a collect of about 75.
MAX_PIECES_MERGED_ON_DRIVER = 16


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
    version: str = ""  # the fit's own id (new_version); older models: the run that fitted them
    projection_sha256: str = ""  # of projection.npz: loading checks the two belong together


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
    version: str,
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
        version=version,
    )
    return Reduction(projection=projection, info=info)


def feature_moments(spark: SparkSession, features: DataFrame) -> Moments:
    """Mean and scatter of the ``features`` column, computed on the Python workers.

    Each of at most one partition per core computes its rows' moments with one NumPy
    product per block. The driver merges up to ``MAX_PIECES_MERGED_ON_DRIVER`` such pieces
    itself; beyond that about sqrt(cores) tasks merge them first, so the driver receives a few
    (d x d) matrices, never one per core of a wide cluster. That round is a Spark job of its
    own (0.8 s of a 5,000-photo backfill on 2 cores: BENCHMARKS.md), only paid where it
    bounds the driver's memory. It follows a shuffle, which keeps one Python worker per task:
    a pipelined ``rdd.treeReduce`` started a second one per task next to the first (peak
    memory of a 5,000-image run: 3.8 GiB against 2.6 to 3.2 GiB).
    """
    cores = spark.sparkContext.defaultParallelism
    pieces = (
        features.select("features").coalesce(cores).mapInArrow(_partition_moments, MOMENTS_SCHEMA)
    )
    if cores > MAX_PIECES_MERGED_ON_DRIVER:
        pieces = pieces.repartition(math.isqrt(cores - 1) + 1).mapInArrow(
            _merge_moments, MOMENTS_SCHEMA
        )
    total = _merged(_pieces_in(_collected(pieces)))
    if total is None:
        raise ValueError("no feature vectors to fit a PCA model on")
    return total


def _collected(pieces: DataFrame) -> list[pa.RecordBatch]:
    """The pieces, brought to the driver as Arrow batches. ``collect()`` pickles each (d x d)
    matrix in the JVM (Pyrolite turns a 13 MB binary into a latin-1 string) and unpickles it
    here: 0.8-1.2 s against 0.4-0.5 s for two 1280-d pieces on 2 cores (BENCHMARKS.md, "The
    moments' collect"). ``_collect_as_arrow`` is private: it is PySpark 3.5's own path under
    ``toPandas`` (it needs neither pandas nor the Arrow setting), so docs/spark-internals.md
    lists it with the test that fails if an upgrade changes it. Empty partitions send no
    batch; no pieces at all come back as none."""
    return pieces._collect_as_arrow()


def _pieces_in(batches: Iterable[pa.RecordBatch]) -> Iterator[Moments]:
    """The moments in batches of ``MOMENTS_SCHEMA``, on a worker or on the driver."""
    for batch in batches:
        for data in batch.column(0).to_pylist():
            yield Moments.from_bytes(data)


def _partition_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """First round: one partition's moments (nothing for an empty partition)."""
    total = _merged(Moments.of(block) for block in _row_blocks(batches))
    if total is not None:
        yield _moments_batch(total)


def _merge_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Second round: the first round's pieces that landed in this partition, as one."""
    total = _merged(_pieces_in(batches))
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


def new_version(now: datetime) -> str:
    """A fit's own id: its UTC time (ids sort as fits were made) and 8 random hex digits, so
    two fits of the same prefix, even in the same second, never share a name."""
    return f"v{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def version_uri(uri: str, version: str) -> str:
    return f"{uri}/{PCA_VERSIONS_FOLDER}/{version}"


def save(spark: SparkSession, reduction: Reduction, uri: str) -> None:
    """Save a new version and point ``uri/current.json`` at it (``save_version``, then
    ``point_to``)."""
    save_version(spark, reduction, uri)
    point_to(spark, reduction, uri)


def save_version(spark: SparkSession, reduction: Reduction, uri: str) -> None:
    """Save ``reduction`` under ``uri/versions/<id>/``, never overwriting a version.

    A backfill saves its version before it writes its rows, so that the current view can
    read the rows' metadata (and re-project them) from the moment they appear, and points to
    it once they are written (``point_to``).
    """
    info = reduction.info
    if not info.version:
        raise ValueError("a reduction is saved under its version: fit it with a version id")
    folder = version_uri(uri, info.version)
    if hadoopfs.exists(spark, f"{folder}/{METADATA_FILE}"):
        raise FileExistsError(f"PCA model version {info.version} is already saved at {folder}")
    data = reduction.projection.to_bytes()
    info = replace(info, projection_sha256=hashlib.sha256(data).hexdigest())
    hadoopfs.write_bytes(spark, f"{folder}/{PROJECTION_FILE}", data)
    hadoopfs.write_bytes(spark, f"{folder}/{METADATA_FILE}", _json(asdict(info)))


def point_to(spark: SparkSession, reduction: Reduction, uri: str) -> None:
    """Make a saved version the current one, in one replacement of the pointer
    (``hadoopfs.publish``): a run loading the model meanwhile reads the pointer once and gets
    the old version whole or the new one whole, never a projection of one and the metadata
    of another, nor nothing because a save was between its delete and its write."""
    info = reduction.info
    pointer = {"version": info.version, "fitted_by_run": info.fitted_by_run}
    hadoopfs.publish(spark, f"{uri}/{PCA_POINTER_FILE}", _json(pointer))


def current_version(spark: SparkSession, uri: str) -> str | None:
    """The version the pointer names, or a model saved before versions existed (its id is the
    run that fitted it, as its rows' ``pca_model`` say), or None before the first backfill."""
    pointer_uri = f"{uri}/{PCA_POINTER_FILE}"
    if hadoopfs.exists(spark, pointer_uri):
        return str(json.loads(hadoopfs.read_bytes(spark, pointer_uri))["version"])
    legacy = f"{uri}/{METADATA_FILE}"
    if hadoopfs.exists(spark, legacy):
        return str(json.loads(hadoopfs.read_bytes(spark, legacy))["fitted_by_run"])
    return None


def read(spark: SparkSession, uri: str, version: str | None = None) -> Reduction | None:
    """Version ``version`` of the model at ``uri`` (default: the current one, the pointer read
    once), checked whole; None when no backfill has saved one there yet."""
    version = version or current_version(spark, uri)
    if version is None:
        return None
    folder = version_uri(uri, version)
    if hadoopfs.exists(spark, f"{folder}/{METADATA_FILE}"):
        info = _info(spark, f"{folder}/{METADATA_FILE}", version)
        data = hadoopfs.read_bytes(spark, f"{folder}/{PROJECTION_FILE}")
        return _checked(Reduction(Projection.from_bytes(data), info), data, folder)
    legacy = f"{uri}/{METADATA_FILE}"
    if hadoopfs.exists(spark, legacy):
        info = _info(spark, legacy, version="")
        if info.version == version:
            projection_uri = f"{uri}/{PROJECTION_FILE}"
            if hadoopfs.exists(spark, projection_uri):
                data = hadoopfs.read_bytes(spark, projection_uri)
                return _checked(Reduction(Projection.from_bytes(data), info), data, uri)
            return _checked(Reduction(_spark_ml_projection(uri), info), None, uri)
    raise ReductionMismatch(f"no PCA model version {version} at {uri}")


def _info(spark: SparkSession, metadata_uri: str, version: str) -> ReductionInfo:
    info = ReductionInfo(**json.loads(hadoopfs.read_bytes(spark, metadata_uri)))
    # A model saved before versions existed is named by the run that fitted it.
    return replace(info, version=info.version or version or info.fitted_by_run)


def _checked(reduction: Reduction, data: bytes | None, where: str) -> Reduction:
    """Refuse a projection and metadata that do not belong together (a hand copy, a partial
    write of an older layout): the rows would get vectors of another length than ``k``."""
    info, projection = reduction.info, reduction.projection
    if data is not None and info.projection_sha256:
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.projection_sha256:
            raise ReductionMismatch(
                f"{where}/{PROJECTION_FILE} (sha256 {digest[:12]}) is not the projection "
                f"{METADATA_FILE} describes (sha256 {info.projection_sha256[:12]})"
            )
    if projection.k != info.k:
        raise ReductionMismatch(
            f"{where}/{PROJECTION_FILE} has {projection.k} components but {METADATA_FILE} "
            f"says k={info.k}: they are not from the same fit"
        )
    return reduction


def load(
    spark: SparkSession, uri: str, *, image_size: int, weights: str, precision: str
) -> Reduction | None:
    """The current reduction at ``uri``, checked against this run's features; None when no
    backfill has saved one there yet."""
    reduction = read(spark, uri)
    if reduction is None:
        return None
    info = reduction.info
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
    return reduction


def features_key(image_size: object, weights: object, precision: object) -> tuple[int, str, str]:
    """What made a set of raw features: the model (weights), image size and precision."""
    return int(str(image_size)), str(weights), str(precision)


def featurizer_record(image_size: int, weights: str, precision: str) -> dict[str, object]:
    """The run report's ``featurizer``: what made its rows' raw features (``record_key``)."""
    return {"image_size": image_size, "weights": weights, "precision": precision}


def record_key(record: dict[str, object] | None) -> tuple[int, str, str] | None:
    """The ``features_key`` of a run report's ``featurizer``; None when it has none (a report
    from before it was recorded)."""
    if not record:
        return None
    return features_key(record["image_size"], record["weights"], record["precision"])


def key_of(info: ReductionInfo) -> tuple[int, str, str]:
    return features_key(info.image_size, info.weights, info.precision)


def same_features(a: ReductionInfo, b: ReductionInfo) -> bool:
    """Whether rows projected by ``a`` hold raw features ``b`` can project."""
    return key_of(a) == key_of(b)


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2).encode()


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
        """Runs on an executor, once per task: the projection comes from the broadcast (one copy
        per executor), and each batch leaves with its own columns plus ``pca_features``."""
        projection: Projection = shipped.value
        for batch in batches:
            count = batch.num_rows
            projected = projection.project(to_matrix(batch.column("features")))
            columns = [*batch.columns, to_list_array(projected, range(count), count)]
            # A timestamp arrives in the session's time zone and leaves declared in UTC: the
            # same instants, relabelled so the batch matches the declared schema.
            typed = [c.cast(f.type) for c, f in zip(columns, arrow_schema, strict=True)]
            yield pa.RecordBatch.from_arrays(typed, schema=arrow_schema)

    return in_space(features.mapInArrow(project, schema), reduction)


def in_space(features: DataFrame, reduction: Reduction | None) -> DataFrame:
    """Add the id of the model version that projected ``pca_features`` (``pca_model``; null
    when there was no model and ``pca_features`` are null too).

    Two fits make two PCA spaces; rows of one must never be compared with rows of the
    other, so every row names its space (``fruits_readers.current`` re-projects older ones).
    """
    model = F.lit(reduction.info.version if reduction is not None else None)
    return features.withColumn(PCA_MODEL_COLUMN, model.cast("string"))
