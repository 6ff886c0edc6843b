"""The current features: one row per photo, its newest raw features in the current PCA space.

Every backfill fits a new PCA model version and the batches after it project into that
version, so the ``features`` table holds rows of several spaces (``pca_model`` names the
version that projected each row) and, after a new backfill, several rows of one photo. Comparing
PCA features of two spaces is meaningless and counting a photo twice is wrong; read through
this instead:

    from fruits_readers.current import current_features
    rows = current_features(spark, "s3://BUCKET/output")   # path, label, ..., pca_features

Each photo's newest row (``featurized_at``, then ``run_id``) among those whose raw features
the current version can project (same weights, image size and precision: ``reduce.key_of``; a
row of a run that had no model yet, by its run report) is kept and projected with the current
version, so a photo featurized only before a refit keeps its place and every row is in one
space. A row of a merged partition (``compact.py``) counts as its own run's
(``origin_run_id``), and a merge's sources are skipped once its file is live. A photo erased
at or after its newest row was featurized is left out (``erase.tombstones``): its rows go at
the next erase run, and no reader sees them meanwhile.
"""

from __future__ import annotations

import json

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from emr_serverless_job import compact, erase, hadoopfs, reduce
from fruits_contract import (
    FEATURES_COLUMNS,
    FEATURES_TABLE,
    FEATURIZED_AT_COLUMN,
    PATH_COLUMN,
    PCA_MODEL_COLUMN,
    PCA_MODEL_FOLDER,
    report_path,
)


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
    table = f"{output.rstrip('/')}/{FEATURES_TABLE}"
    # mergeSchema: tables older than pca_model. A merged partition's rows keep their run.
    rows = compact.readable(spark, table, spark.read.option("mergeSchema", "true").parquet(table))
    versions, runs = projectable(spark, output, rows, reduction.info)
    newest = Window.partitionBy("path").orderBy(
        F.col(FEATURIZED_AT_COLUMN).desc(), F.col("run_id").desc()
    )
    model_column = F.col(PCA_MODEL_COLUMN)
    chosen = (
        rows.filter(
            model_column.isin(versions) | (model_column.isNull() & F.col("run_id").isin(runs))
        )
        .withColumn("_rank", F.row_number().over(newest))
        .filter(F.col("_rank") == 1)
        .drop("_rank")
    )
    chosen = _without_erased(spark, output, chosen).select(*FEATURES_COLUMNS, "run_id")
    # Every row is projected again, those of the current version too: a model saved before
    # versions named its space by its run, which a refit of the same prefix reused.
    reprojected = reduce.apply(spark, reduction, chosen.drop("pca_features", PCA_MODEL_COLUMN))
    return reprojected.select(*FEATURES_COLUMNS, "run_id")


def projectable(
    spark: SparkSession, output: str, rows: DataFrame, current: reduce.ReductionInfo
) -> tuple[list[str], list[str]]:
    """(versions, runs without a version) whose rows hold raw features ``current`` can project.

    A version is one when its metadata names the same features; a run that had no PCA model
    to apply (the batches before the first backfill, or during it) when its report does. An
    unreadable version or report (pruned, half copied) is not one.
    """
    named = rows.select(PCA_MODEL_COLUMN, "run_id").distinct().collect()
    versions = sorted({r[0] for r in named if r[0] is not None})
    unversioned = sorted({r[1] for r in named if r[0] is None})
    uri = _model_uri(output)
    wanted = reduce.key_of(current)
    compatible = [v for v in versions if _version_key(spark, uri, v) == wanted]
    runs = [run for run in unversioned if _report_key(spark, output, run) == wanted]
    return compatible, runs


def _version_key(spark: SparkSession, uri: str, version: str) -> tuple[int, str, str] | None:
    try:
        other = reduce.read(spark, uri, version)
    except Exception:  # a mismatch, or a file gone (py4j's FileNotFoundException)
        return None
    return reduce.key_of(other.info) if other is not None else None


def _report_key(spark: SparkSession, output: str, run_id: str) -> tuple[int, str, str] | None:
    report = f"{output.rstrip('/')}/{report_path(run_id)}"
    try:
        return reduce.record_key(json.loads(hadoopfs.read_bytes(spark, report)).get("featurizer"))
    except Exception:  # no report, or one that cannot be read
        return None


def _without_erased(spark: SparkSession, output: str, rows: DataFrame) -> DataFrame:
    """Hides photos erased at or after their row was featurized, until an erase run removes the
    rows. Given each photo's newest row, so an erased photo leaves the view rather than
    falling back to an older row; one featurized again after its erasure stays."""
    stones = erase.tombstones(spark, output)
    if stones is None:
        return rows
    hidden = rows.join(F.broadcast(stones), on=PATH_COLUMN, how="left").filter(
        F.col(erase.ERASED_AT_COLUMN).isNull()
        | (F.col(FEATURIZED_AT_COLUMN) > F.col(erase.ERASED_AT_COLUMN))
    )
    return hidden.drop(erase.ERASED_AT_COLUMN)


def _model_uri(output: str) -> str:
    return f"{output.rstrip('/')}/{PCA_MODEL_FOLDER}"
