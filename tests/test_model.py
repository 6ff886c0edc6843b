"""The featurizer: batching logic without Spark, and the real Keras model with random weights."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from emr_serverless_job.featurize import featurize_batch
from emr_serverless_job.model import FEATURE_DIM, Weights, tensorflow_featurizer
from emr_serverless_job.projection import Projection
from emr_serverless_job.synthetic import fruit_image

SIZE = 96


def jpeg(label: str, index: int) -> bytes:
    buffer = io.BytesIO()
    fruit_image(label, index).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_weights_specs():
    assert Weights.parse("random:7") == Weights(kind="random", seed=7)
    assert Weights.parse("imagenet").kind == "imagenet"
    assert Weights.parse("s3://b/w.h5").location == "s3://b/w.h5"
    assert Weights.parse("random:7").describe() == "random:7"
    for bad in ("", "random:", "random:-1", "weights.onnx"):
        with pytest.raises(ValueError):
            Weights.parse(bad)


def test_rows_keep_their_order_across_model_chunks():
    """Broken rows interleaved with good ones, more good rows than one model call takes."""
    calls: list[int] = []

    def mean_colour(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.repeat(batch.mean(axis=(1, 2)), FEATURE_DIM // 3 + 1, axis=1)[:, :FEATURE_DIM]

    contents = [jpeg("Banana", 0), b"", jpeg("Cherry 3", 0), b"junk", jpeg("Kiwi", 0)]
    result = featurize_batch(pd.Series(contents), mean_colour, SIZE, batch_size=2)
    assert calls == [2, 1]
    assert result["error"].isna().tolist() == [True, False, True, False, True]
    assert result["features"][1] is None and result["features"][3] is None
    yellow, red = result["features"][0], result["features"][2]
    assert yellow[1] > red[1], "banana row got the banana's features, not its neighbour's"
    assert result["width"].tolist()[:3] == [100, pd.NA, 100]
    assert result["pca_features"].isna().all(), "no projection given: nothing projected"

    first_two = Projection(np.zeros(FEATURE_DIM), np.ones(FEATURE_DIM), np.eye(FEATURE_DIM)[:, :2])
    projected = featurize_batch(pd.Series(contents), mean_colour, SIZE, 2, first_two)
    assert projected["pca_features"][1] is None and projected["pca_features"][3] is None
    for row in (0, 2, 4):
        np.testing.assert_allclose(projected["pca_features"][row], result["features"][row][:2])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def random_featurizer():
    return tensorflow_featurizer(SIZE, Weights(kind="random", seed=0), threads=2)


def test_keras_featurizer_shape_and_determinism(random_featurizer):
    batch = np.random.default_rng(0).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    first = random_featurizer(batch)
    assert first.shape == (3, FEATURE_DIM) and first.dtype == np.float32
    # Random-init activations shrink through the depth (~1e-12), so compare without scale.
    again = tensorflow_featurizer(SIZE, Weights(kind="random", seed=0), threads=2)(batch)
    np.testing.assert_allclose(first, again, rtol=1e-4, atol=0)
    other = tensorflow_featurizer(SIZE, Weights(kind="random", seed=1), threads=2)(batch)
    assert cosine(first[0], other[0]) < 0.9, "the seed must matter"
    assert random_featurizer(batch[:0]).shape == (0, FEATURE_DIM)
