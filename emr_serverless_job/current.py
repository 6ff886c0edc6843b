"""The current features: one row per photo, its newest raw features in the current PCA space.

Every backfill fits a new PCA model version and the batches after it project into that
version, so the ``features`` table holds rows of several spaces (``pca_model`` names the
version that projected each row) and, after a new backfill, several rows of one photo. Comparing
PCA features of two spaces is meaningless and counting a photo twice is wrong; read through
this instead:

    from emr_serverless_job.current import current_features
    rows = current_features(spark, "s3://BUCKET/output")   # path, label, ..., pca_features

Each photo's newest row (``featurized_at``, then ``run_id``) among those whose raw features
the current version can project (same weights, image size and precision: ``reduce.same_features``)
is kept; a row projected by another version is re-projected with the current one, so a photo
featurized only before a refit keeps its place and every row is in one space. A photo erased
at or after its newest row was featurized is left out (``erase.tombstones``): its rows go at
the next erase run, and no reader sees them meanwhile.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from emr_serverless_job import erase, reduce
from emr_serverless_job.config import PCA_MODEL_DIRNAME
from emr_serverless_job.job import FEATURES_COLUMNS, FEATURES_TABLE, FEATURIZED_AT_COLUMN


class NoCurrentModel(LookupError):
    """No backfill has saved a PCA model under this output yet."""


def current_model(spark: SparkSession, output: str) -> str:
    """The id of the PCA model version the pointer under ``output`` names."""
    version = reduce.current_version(spark, _model_uri(output))
    if version is None:
        raise NoCurrentModel(f"no PCA model under {output}: run a backfill first")
    return version


def current_features(spark: SparkSession, output: str, model: str | None = None) -> DataFrame:
    """One row per photo, projected by version ``model`` (default: the current one)."""
    uri = _model_uri(output)
    reduction = reduce.read(spark, uri, model or current_model(spark, output))
    assert reduction is not None  # a version id was given or found
    version = reduction.info.version
    rows = spark.read.option("mergeSchema", "true").parquet(  # tables older than pca_model
        f"{output.rstrip('/')}/{FEATURES_TABLE}"
    )
    projectable = compatible_versions(spark, uri, rows, reduction.info)
    newest = Window.partitionBy("path").orderBy(
        F.col(FEATURIZED_AT_COLUMN).desc(), F.col("run_id").desc()
    )
    chosen = (
        rows.filter(F.col(reduce.PCA_MODEL_COLUMN).isin(projectable))
        .withColumn("_rank", F.row_number().over(newest))
        .filter(F.col("_rank") == 1)
        .drop("_rank")
    )
    chosen = _without_erased(spark, output, chosen)
    columns = [*FEATURES_COLUMNS, "run_id"]
    in_space = chosen.filter(F.col(reduce.PCA_MODEL_COLUMN) == version).select(*columns)
    older = chosen.filter(F.col(reduce.PCA_MODEL_COLUMN) != version).select(*columns)
    reprojected = reduce.apply(
        spark, reduction, older.drop("pca_features", reduce.PCA_MODEL_COLUMN)
    )
    return in_space.unionByName(reprojected.select(*columns))


def compatible_versions(
    spark: SparkSession, uri: str, rows: DataFrame, current: reduce.ReductionInfo
) -> list[str]:
    """The versions named in ``rows`` whose raw features ``current`` can project. A row with no
    version (written before any model existed) or of an unreadable version is not one."""
    named = [
        row[0]
        for row in rows.select(reduce.PCA_MODEL_COLUMN).distinct().collect()
        if row[0] is not None
    ]
    compatible = []
    for name in named:
        try:
            other = reduce.read(spark, uri, name)
        except reduce.ReductionMismatch:
            continue
        if other is not None and reduce.same_features(other.info, current):
            compatible.append(name)
    return compatible


def _without_erased(spark: SparkSession, output: str, rows: DataFrame) -> DataFrame:
    stones = erase.tombstones(spark, output)
    if stones is None:
        return rows
    hidden = rows.join(F.broadcast(stones), on=erase.PATH_COLUMN, how="left").filter(
        F.col(erase.ERASED_AT_COLUMN).isNull()
        | (F.col(FEATURIZED_AT_COLUMN) > F.col(erase.ERASED_AT_COLUMN))
    )
    return hidden.drop(erase.ERASED_AT_COLUMN)


def _model_uri(output: str) -> str:
    return f"{output.rstrip('/')}/{PCA_MODEL_DIRNAME}"
