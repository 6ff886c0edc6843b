"""StandardScaler + PCA over the 1280-d features, fitted once on a backfill and reused.

A manifest run must project an image exactly as the backfill would have, so the
fitted model is saved with a small metadata file naming what it was fitted on
(image size, weights), and loading checks that the current run matches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from emr_serverless_job import hadoopfs
from emr_serverless_job.model import FEATURE_DIM

VECTOR_COL = "_features_vector"
SCALED_COL = "_features_scaled"
PCA_COL = "_features_pca"
METADATA_FILE = "featurizer.json"
MIN_ROWS_TO_FIT = 2


class ReductionMismatch(ValueError):
    """The saved PCA model was fitted on features this run does not produce."""


@dataclass(frozen=True)
class ReductionInfo:
    """What a fitted reduction is, for the run report and for checks when reloading it."""

    k: int
    explained_variance: float
    component_variance: list[float]
    image_size: int
    weights: str
    fitted_by_run: str
    fitted_rows: int


@dataclass(frozen=True)
class Reduction:
    model: PipelineModel
    info: ReductionInfo


def choose_k(component_variance: Sequence[float], target: float) -> int:
    """Fewest leading components whose explained-variance ratios reach ``target``.

    When even all components fall short (rounding, or fewer components than asked),
    all of them are kept.
    """
    if not component_variance:
        raise ValueError("no components to choose from")
    total = 0.0
    for index, share in enumerate(component_variance, start=1):
        total += share
        if total >= target - 1e-12:
            return index
    return len(component_variance)


def _vectors(features: DataFrame) -> DataFrame:
    return features.select(array_to_vector("features").alias(VECTOR_COL))


def fit(
    features: DataFrame,
    *,
    k: int | None,
    variance: float,
    image_size: int,
    weights: str,
    run_id: str,
    rows: int,
) -> Reduction:
    """Fit scaler + PCA on a (cached) frame with a ``features`` array column.

    With no ``k``, PCA is first fitted with every component to read the variance
    spectrum, then refitted with the chosen k, so that the saved model is a plain
    Spark ML PCA whose output has exactly k columns.
    """
    vectors = _vectors(features)
    scaler = StandardScaler(
        inputCol=VECTOR_COL, outputCol=SCALED_COL, withMean=True, withStd=True
    ).fit(vectors)
    scaled = scaler.transform(vectors).select(SCALED_COL)
    spectrum_k = FEATURE_DIM if k is None else k
    pca = PCA(k=spectrum_k, inputCol=SCALED_COL, outputCol=PCA_COL).fit(scaled)
    spectrum = [float(v) for v in pca.explainedVariance.toArray()]
    chosen = choose_k(spectrum, variance) if k is None else k
    if chosen != spectrum_k:
        pca = PCA(k=chosen, inputCol=SCALED_COL, outputCol=PCA_COL).fit(scaled)
    info = ReductionInfo(
        k=chosen,
        explained_variance=float(sum(spectrum[:chosen])),
        component_variance=spectrum,
        image_size=image_size,
        weights=weights,
        fitted_by_run=run_id,
        fitted_rows=rows,
    )
    return Reduction(model=PipelineModel(stages=[scaler, pca]), info=info)


def save(spark: SparkSession, reduction: Reduction, uri: str) -> None:
    reduction.model.write().overwrite().save(uri)
    hadoopfs.write_bytes(
        spark, f"{uri}/{METADATA_FILE}", json.dumps(asdict(reduction.info), indent=2).encode()
    )


def load(spark: SparkSession, uri: str, *, image_size: int, weights: str) -> Reduction | None:
    """The saved reduction at ``uri``, or None when no backfill has saved one there yet."""
    metadata_uri = f"{uri}/{METADATA_FILE}"
    if not hadoopfs.exists(spark, metadata_uri):
        return None
    info = ReductionInfo(**json.loads(hadoopfs.read_bytes(spark, metadata_uri)))
    if info.image_size != image_size:
        raise ReductionMismatch(
            f"the PCA model at {uri} was fitted on {info.image_size} px features; "
            f"this run uses --image-size {image_size}"
        )
    if info.weights != weights:
        raise ReductionMismatch(
            f"the PCA model at {uri} was fitted on features from weights {info.weights}; "
            f"this run uses {weights}"
        )
    return Reduction(model=PipelineModel.load(uri), info=info)


def apply(reduction: Reduction, features: DataFrame) -> DataFrame:
    """Add ``pca_features`` (float32 array of length k) to a frame with ``features``."""
    with_vectors = features.withColumn(VECTOR_COL, array_to_vector("features"))
    projected = reduction.model.transform(with_vectors)
    return projected.withColumn("pca_features", vector_to_array(PCA_COL, dtype="float32")).drop(
        VECTOR_COL, SCALED_COL, PCA_COL
    )


def without_reduction(features: DataFrame) -> DataFrame:
    """The same columns as ``apply`` with null PCA features, for runs with no model yet."""
    return features.withColumn("pca_features", F.lit(None).cast("array<float>"))
