"""The ONNX Runtime featurizer: same features as Keras, one session per worker, the image size
taken from the model, and a mismatched or unusable model refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emr_serverless_job import job
from emr_serverless_job.config import parse_args
from emr_serverless_job.featurize import featurize_batch
from emr_serverless_job.images import decode_batch, preprocess
from emr_serverless_job.model import (
    ModelError,
    Weights,
    images_per_call,
    onnx_featurizer,
    read_onnx_model,
)
from emr_serverless_job.reduce import ReductionMismatch
from fruits_build import export_onnx
from tests.conftest import REAL_SAMPLE, REAL_WEIGHTS, needs_real_data

SMALL = 96
KERAS_RANDOM = ["--weights", "random:0", "--image-size", str(SMALL)]


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """MobileNetV2 with random:0 weights, exported at 96 px (tests only)."""
    path = tmp_path_factory.mktemp("onnx") / "random0-96.onnx"
    export_onnx.convert(Weights(kind="random", seed=0), SMALL, path)
    return path


def features_by_path(output: Path, run_id: str) -> dict[str, np.ndarray]:
    table = pq.read_table(output / "features" / f"run_id={run_id}").to_pylist()
    return {row["path"]: np.asarray(row["features"], np.float32) for row in table}


def pca_by_path(output: Path, run_id: str) -> dict[str, np.ndarray]:
    table = pq.read_table(output / "features" / f"run_id={run_id}").to_pylist()
    return {row["path"]: np.asarray(row["pca_features"], np.float64) for row in table}


def test_export_metadata_names_the_weights_and_the_image_size(random_model):
    info = read_onnx_model(random_model)
    assert info.image_size == SMALL
    assert info.weights_source == "random:0" and info.is_random
    assert info.weights_sha256 is None  # random weights have no file to hash


def test_onnx_job_matches_the_keras_job_and_builds_one_session_per_worker(
    spark, image_folder, random_model, tmp_path
):
    folder, expected = image_folder
    common = ["--input", str(folder), "--batch-size", "8", "--pca-k", "2"]
    onnx = job.run(
        parse_args([*common, "--output", str(tmp_path / "onnx"), "--model", str(random_model)]),
        spark,
    )
    keras = job.run(
        parse_args([*common, "--output", str(tmp_path / "tf"), *KERAS_RANDOM]),
        spark,
    )
    assert onnx.runtime == "onnx" and keras.runtime == "tensorflow"
    assert onnx.image_size == SMALL  # from the model: no --image-size was given
    assert onnx.random_weights and any("RANDOM WEIGHTS" in w for w in onnx.warnings)
    assert onnx.features == keras.features == expected.images - expected.broken
    assert onnx.images_featurized == keras.images_featurized  # each image read once
    assert 1 <= onnx.models_built <= 2  # local[2]: at most one session per Python worker
    ours = features_by_path(tmp_path / "onnx", onnx.run_id)
    theirs = features_by_path(tmp_path / "tf", keras.run_id)
    assert ours.keys() == theirs.keys()
    worst = max(float(np.abs(ours[p] - theirs[p]).max()) for p in ours)
    assert worst <= 1e-4
    report = json.loads(
        (tmp_path / "onnx" / "reports" / f"run_id={onnx.run_id}" / "report.json").read_text()
    )
    assert report["model"] == str(random_model) and len(report["model_sha256"]) == 64


def assert_slicing_changes_no_feature(folder: Path, model: Path) -> None:
    """The job calls ONNX Runtime on slices of each Arrow batch (``images_per_call``): every
    photo must get the vector it gets in a call of its own batch as a whole."""
    photos = [path.read_bytes() for path in sorted(folder.rglob("*.jpg"))]
    contents = (photos * (64 // len(photos) + 1))[:64]
    featurizer = onnx_featurizer(model)
    per_call = images_per_call("onnx", SMALL, len(contents))
    assert 1 < per_call < len(contents)  # the batch is split
    sliced = featurize_batch(contents, featurizer, SMALL, per_call)
    whole = featurizer(preprocess(decode_batch(contents, SMALL).pixels))
    assert sliced.features.shape == whole.shape and len(whole) > per_call
    np.testing.assert_allclose(sliced.features, whole, rtol=0, atol=1e-5)


def test_features_do_not_depend_on_how_many_photos_share_a_model_call(image_folder, random_model):
    assert_slicing_changes_no_feature(image_folder[0], random_model)


def test_an_image_size_that_contradicts_the_model_stops_before_any_work(
    spark, image_folder, random_model, tmp_path
):
    folder, _ = image_folder
    flags = ["--output", str(tmp_path / "o"), "--model", str(random_model), "--image-size", "224"]
    config = parse_args(["--input", str(folder), *flags])
    with pytest.raises(ModelError, match=r"--image-size 224 does not match the model.*96 px"):
        job.run(config, spark)
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_not_a_feature_model_is_refused(spark, image_folder, tmp_path):
    folder, _ = image_folder
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"this is not a protobuf")
    config = parse_args(
        ["--input", str(folder), "--output", str(tmp_path / "o"), "--model", str(bogus)]
    )
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        job.run(config, spark)
    assert not (tmp_path / "o").exists()


def conv_weight_ranges(path: Path) -> list[int]:
    """The largest |q| of each quantized convolution's int8 weights in a QDQ model."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [
        int(np.abs(initializers[node.input[0]].astype(np.int16)).max())
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers
        and initializers[node.input[0]].dtype == np.int8
        and initializers[node.input[0]].ndim == 4
    ]


def test_seven_bit_weights_go_where_the_conv_input_can_be_negative():
    """image -> conv a -> relu -> conv b -> add(a, b) -> conv c: a and c see signed inputs."""
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["image", "wa"], ["a"]),
        helper.make_node("Clip", ["a"], ["a6"]),
        helper.make_node("Conv", ["a6", "wb"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Conv", ["sum", "wc"], ["c"]),
        helper.make_node("Relu", ["c"], ["c1"]),
        helper.make_node("Conv", ["c1", "wd"], ["d"]),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    assert export_onnx.signed_input_convs(graph) == ["wa", "wc"]


def test_int8_export_is_gated_records_its_calibration_and_never_meets_an_fp32_pca(
    spark, image_folder, random_model, tmp_path
):
    """The gate's threshold is a parameter here: random-init features say nothing about
    quality. The real gate runs on the real weights in every build of the deployed default
    (the ``onnx_dist`` fixture), whose model the real-data separation test then checks."""
    folder, _ = image_folder
    int8 = tmp_path / "int8.onnx"
    exported = export_onnx.export(
        Weights(kind="random", seed=0), SMALL, int8, folder, precision="int8", int8_min_cosine=-1
    )
    info = read_onnx_model(int8)
    assert (info.precision, info.image_size, info.weights_source) == ("int8", SMALL, "random:0")
    assert_slicing_changes_no_feature(folder, int8)  # the deployed precision sliced too
    assert info.calibration_sha256 == exported.calibration_sha256
    assert exported.calibration_sha256 == export_onnx.calibration_set(folder, SMALL)[1]
    assert exported.calibration_images == len(export_onnx.calibration_set(folder, SMALL)[0])
    # 7-bit weights exactly where a convolution's input is signed (MobileNetV2: the image,
    # the 16 block inputs, the last 1x1 conv), 8-bit everywhere else.
    largest = conv_weight_ranges(int8)
    assert exported.int8_seven_bit_convs == 18
    assert sum(1 for q in largest if q <= 64) == 18
    assert all(q == 127 for q in largest if q > 64) and len(largest) == 52
    batch = export_onnx.parity_batch(folder, SMALL)
    with pytest.raises(export_onnx.ParityError, match=r"cosine .* the minimum is 1.01"):
        export_onnx.check_int8(int8, random_model, batch, minimum=1.01)

    output = tmp_path / "out"
    job.run(
        parse_args(["--input", str(folder), "--output", str(output), "--model", str(random_model)]),
        spark,
    )
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": str(next(folder.rglob("*.jpg")))}) + "\n")
    config = ["--manifest", str(manifest), "--output", str(output), "--run-id", "int8"]
    with pytest.raises(ReductionMismatch, match=r"fitted on fp32 features; .* int8"):
        job.run(parse_args([*config, "--model", str(int8)]), spark)
    assert not (output / "features" / "run_id=int8").exists()


@needs_real_data()
def test_parity_check_fails_the_export_saying_by_how_much(random_model):
    """A model that is not the one Keras builds from these weights must not ship.

    (Random-init features are about 1e-12, so only real weights make this check mean anything.)
    """
    batch = export_onnx.parity_batch(REAL_SAMPLE, SMALL)
    real = Weights(kind="file", location=str(REAL_WEIGHTS))
    with pytest.raises(export_onnx.ParityError, match=r"differs from Keras by .* tolerance is"):
        export_onnx.check_parity(random_model, real, batch)


@needs_real_data()
def test_both_runtimes_agree_on_the_real_sample(spark, tmp_path):
    """Features within 1e-4, and the same PCA model projects them alike."""
    model = tmp_path / "mobilenet_v2.onnx"
    weights = Weights(kind="file", location=str(REAL_WEIGHTS))
    exported = export_onnx.export(weights, 224, model, REAL_SAMPLE)
    assert exported.parity_max_abs_diff <= 1e-4

    output = tmp_path / "out"
    source = ["--input", str(REAL_SAMPLE), "--output", str(output), "--pca-k", "16"]
    keras = job.run(
        parse_args([*source, "--runtime", "tensorflow", "--weights", str(REAL_WEIGHTS)]),
        spark,
    )
    manifest = tmp_path / "all.jsonl"
    paths = sorted(features_by_path(output, keras.run_id))
    manifest.write_text("".join(json.dumps({"uri": p}) + "\n" for p in paths))
    onnx = job.run(
        parse_args(["--manifest", str(manifest), "--output", str(output), "--model", str(model)]),
        spark,
    )
    # The PCA model fitted on TensorFlow features is accepted: same weights, by sha256.
    assert onnx.pca["status"].startswith("loaded version") and onnx.pca["k"] == 16

    ours, theirs = features_by_path(output, onnx.run_id), features_by_path(output, keras.run_id)
    assert ours.keys() == theirs.keys() and len(ours) == 100
    assert max(float(np.abs(ours[p] - theirs[p]).max()) for p in ours) <= 1e-4
    projected, reference = pca_by_path(output, onnx.run_id), pca_by_path(output, keras.run_id)
    scale = max(float(np.abs(v).max()) for v in reference.values())
    worst = max(float(np.abs(projected[p] - reference[p]).max()) for p in projected)
    assert worst <= 1e-3 * scale, (worst, scale)


def test_calibration_photos_are_spread_over_every_label():
    """The first 500 in path order calibrated int8 on the labels that sort first."""
    paths = [Path(f"{label}/{i}.jpg") for label in ("Apple", "Kiwi", "Pear") for i in range(400)]
    chosen = export_onnx.evenly(paths, 300)
    assert len(chosen) == 300 and len(set(chosen)) == 300
    assert {p.parent.name: sum(c.parent == p.parent for c in chosen) for p in paths} == {
        "Apple": 100,
        "Kiwi": 100,
        "Pear": 100,
    }
    assert export_onnx.evenly(paths[:10], 300) == paths[:10]
