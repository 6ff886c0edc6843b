"""The current features: for each photo, its newest row projected by the current PCA model.

Every backfill fits a new PCA space and the batches after it project into that space, so the
``features`` table holds rows of several spaces (``pca_model`` names the run that fitted each
row's space) and, after a new backfill, several rows of one photo. Comparing PCA features of
two spaces is meaningless and counting a photo twice is wrong; read through this instead:

    from emr_serverless_job.current import current_features
    rows = current_features(spark, "s3://BUCKET/output")   # path, label, ..., pca_features

The current model is the one saved at ``OUTPUT/pca_model`` (the last backfill's), unless
``model`` names another fitting run.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from emr_serverless_job import reduce
from emr_serverless_job.config import PCA_MODEL_DIRNAME
from emr_serverless_job.job import FEATURES_COLUMNS, FEATURES_TABLE, FEATURIZED_AT_COLUMN


class NoCurrentModel(LookupError):
    """No backfill has saved a PCA model under this output yet."""


def current_model(spark: SparkSession, output: str) -> str:
    """The run id that fitted the PCA model saved under ``output``."""
    info = reduce.saved_info(spark, f"{output.rstrip('/')}/{PCA_MODEL_DIRNAME}")
    if info is None:
        raise NoCurrentModel(f"no PCA model under {output}: run a backfill first")
    return info.fitted_by_run


def current_features(spark: SparkSession, output: str, model: str | None = None) -> DataFrame:
    """One row per photo: the newest of its rows projected by ``model`` (default: the current)."""
    model = model or current_model(spark, output)
    rows = (
        spark.read.option("mergeSchema", "true")  # tables written before pca_model existed
        .parquet(f"{output.rstrip('/')}/{FEATURES_TABLE}")
        .filter(F.col(reduce.PCA_MODEL_COLUMN) == model)
    )
    newest = Window.partitionBy("path").orderBy(
        F.col(FEATURIZED_AT_COLUMN).desc(), F.col("run_id").desc()
    )
    return (
        rows.withColumn("_rank", F.row_number().over(newest))
        .filter(F.col("_rank") == 1)
        .select(*FEATURES_COLUMNS, "run_id")
    )
