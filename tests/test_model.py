"""The featurizer: batching logic without Spark, and the real Keras model with random weights."""

from __future__ import annotations

import hashlib
import importlib
import io
import sys
import zipfile
import zipimport

import numpy as np
import pyarrow as pa
import pytest

from emr_serverless_job.featurize import (
    RESULT_ARROW_SCHEMA,
    featurize_batch,
    result_batch,
    settle_zip_imports,
)
from emr_serverless_job.fruit_blobs import fruit_image
from emr_serverless_job.model import FEATURE_DIM, Weights, images_per_call, tensorflow_featurizer
from emr_serverless_job.projection import Projection

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
    result = featurize_batch(contents, mean_colour, SIZE, per_call=2)
    assert calls == [2, 1]
    assert [error is None for error in result.errors] == [True, False, True, False, True]
    assert result.ok_rows == [0, 2, 4] and result.features.shape == (3, FEATURE_DIM)
    yellow, red = result.features[0], result.features[1]
    assert yellow[1] > red[1], "banana row got the banana's features, not its neighbour's"
    assert result.widths[:3] == [100, None, 100]
    assert result.pca_features is None, "no projection given: nothing projected"

    first_two = Projection(np.zeros(FEATURE_DIM), np.ones(FEATURE_DIM), np.eye(FEATURE_DIM)[:, :2])
    projected = featurize_batch(contents, mean_colour, SIZE, 2, first_two)
    np.testing.assert_allclose(projected.pca_features, result.features[:, :2], rtol=1e-6)

    paths = pa.array([f"file:/in/{row}.jpg" for row in range(len(contents))])
    sizes = pa.array([len(data) for data in contents], pa.int64())
    batch = result_batch(paths, sizes, contents, projected)
    assert batch.schema == RESULT_ARROW_SCHEMA
    rows = batch.to_pylist()
    assert [row["features"] is None for row in rows] == [False, True, False, True, False]
    np.testing.assert_array_equal(rows[4]["features"], result.features[2])
    np.testing.assert_allclose(rows[2]["pca_features"], result.features[1][:2], rtol=1e-6)
    assert rows[1]["pca_features"] is None and rows[1]["error"] == "empty file (0 bytes)"
    assert rows[3]["sha256"] == hashlib.sha256(b"junk").hexdigest()
    assert [row["size_bytes"] for row in rows] == [len(data) for data in contents]
    assert rows[0]["width"] == 100 and rows[3]["width"] is None


def test_onnx_runtime_gets_a_pixel_budget_per_call_and_tensorflow_the_whole_batch():
    assert images_per_call("onnx", 224, 64) == 10
    assert images_per_call("onnx", 128, 64) == 32
    assert images_per_call("onnx", 128, 16) == 16  # never more than an Arrow batch holds
    assert images_per_call("onnx", 1024, 64) == 1  # never none
    assert images_per_call("tensorflow", 224, 64) == 64


def test_a_batch_of_only_broken_images_still_has_a_row_each():
    def never(batch: np.ndarray) -> np.ndarray:
        raise AssertionError("the model must not run on an empty batch")

    contents = [b"", b"junk"]
    result = featurize_batch(contents, never, SIZE, per_call=2)
    batch = result_batch(pa.array(["a.jpg", "b.jpg"]), pa.array([0, 4]), contents, result)
    assert batch.num_rows == 2 and batch.column("features").null_count == 2
    assert all(row["error"] for row in batch.to_pylist())


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


def test_settled_zip_importers_do_not_reread_their_archives(tmp_path, monkeypatch):
    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("settled_probe.py", "VALUE = 1\n")
    monkeypatch.syspath_prepend(str(archive))
    monkeypatch.setattr(sys, "path_hooks", list(sys.path_hooks))
    monkeypatch.setattr(sys, "path_importer_cache", dict(sys.path_importer_cache))
    monkeypatch.delitem(sys.modules, "settled_probe", raising=False)
    assert importlib.import_module("settled_probe").VALUE == 1
    settle_zip_imports()
    assert type(sys.path_importer_cache[str(archive)]).__name__ == "_SettledZipImporter"

    def reread(path: str) -> dict:
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(zipimport, "_read_directory", reread)
    importlib.invalidate_caches()  # what Spark's worker does before every task
    monkeypatch.delitem(sys.modules, "settled_probe")
    assert importlib.import_module("settled_probe").VALUE == 1, "the archive still imports"
