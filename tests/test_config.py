"""Flags: defaults, and a bad flag stops with a message naming it, before any side effect."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emr_serverless_job.config import ConfigError, build_parser, parse_args
from emr_serverless_job.model import Weights

KERAS = ["--runtime", "tensorflow"]  # the featurizer named, as tests of other flags need

FLAGS = (
    "--input",
    "--manifest",
    "--output",
    "--runtime",
    "--model",
    "--weights",
    "--image-size",
    "--pca-variance",
    "--pca-k",
    "--pca-model",
    "--run-id",
    "--batch-size",
    "--max-file-bytes",
)


def test_defaults(tmp_path):
    config = parse_args(["--input", str(tmp_path), "--output", str(tmp_path / "out"), *KERAS])
    assert config.is_backfill
    assert config.image_size == 224
    assert config.pca_variance == 0.95 and config.pca_k is None
    assert config.pca_model == f"{tmp_path}/out/pca_model"
    assert config.weights == Weights(kind="imagenet")
    assert config.run_id is None
    assert config.batch_size == 64
    assert config.runtime == "tensorflow" and config.model is None


def test_a_run_told_nothing_of_its_model_uses_the_deployed_one_or_says_how_to_build_it(
    tmp_path, monkeypatch
):
    """It silently ran TensorFlow with a Keras download of ImageNet weights (needs internet),
    while production runs the ONNX int8 model."""
    from emr_serverless_job import config as job_config
    from fruits_contract import MODEL_FILE

    plain = ["--input", str(tmp_path), "--output", str(tmp_path / "out")]
    monkeypatch.setattr(job_config, "LOCAL_MODEL", tmp_path / "dist" / MODEL_FILE)
    with pytest.raises(
        ConfigError, match=r"no --model given and no model built at .*\./dev package"
    ):
        parse_args(plain)
    built = tmp_path / "dist" / MODEL_FILE
    built.parent.mkdir()
    built.write_bytes(b"onnx")
    config = parse_args(plain)
    assert (config.runtime, config.model) == ("onnx", str(built))
    # An erase run has no model to choose, and other flags' errors still come first.
    assert parse_args(["--erase", str(built), "--output", "o"]).erase == str(built)
    with pytest.raises(ConfigError, match="--input: no folder"):
        parse_args(["--input", str(tmp_path / "nope"), "--output", "o"])


def test_a_model_makes_onnx_the_runtime_and_the_model_the_image_size(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    config = parse_args(["--input", str(tmp_path), "--output", "o", "--model", str(model)])
    assert config.runtime == "onnx" and config.model == str(model)
    assert config.image_size is None  # read from the model when the run starts
    remote = parse_args(["--input", "s3://b/raw", "--output", "o", "--model", "s3://b/m.onnx"])
    assert remote.model == "s3://b/m.onnx"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runtime", "onnx"], "--runtime onnx: needs --model"),
        (["--runtime", "tensorflow", "--model", "s3://b/m.onnx"], "--model: only used with"),
        (["--model", "/no/such/model.onnx"], "--model: no file at /no/such/model.onnx"),
    ],
)
def test_runtime_and_model_flags_are_checked(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(["--input", str(tmp_path), "--output", "o", *argv])


def test_s3_locations_are_kept_as_uris(tmp_path):
    config = parse_args(
        [
            "--manifest",
            "s3://b/manifests/x.jsonl",
            "--output",
            "s3://b/features/",
            "--weights",
            "s3://b/artifacts/w.h5",
        ]
    )
    assert not config.is_backfill
    assert config.output == "s3://b/features"
    assert config.pca_model == "s3://b/features/pca_model"
    assert config.weights == Weights(kind="file", location="s3://b/artifacts/w.h5")


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--image-size", "100"], "--image-size"),
        (["--weights", "random:abc"], "--weights"),
        (["--weights", "weights.bin"], "--weights"),
        (["--weights", "/nonexistent/w.h5"], "--weights"),
        (["--pca-variance", "1.5"], "--pca-variance"),
        (["--pca-k", "0"], "--pca-k"),
        (["--pca-k", "2000"], "--pca-k"),
        (["--run-id", "Bad Id"], "--run-id"),
        (["--batch-size", "0"], "--batch-size"),
        (["--max-file-bytes", "0"], "--max-file-bytes"),
    ],
)
def test_bad_flags_name_themselves(tmp_path, extra, flag):
    with pytest.raises(ConfigError, match=flag):
        parse_args(["--input", str(tmp_path), "--output", str(tmp_path / "o"), *extra])


def test_missing_local_input_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--input: no folder"):
        parse_args(["--input", str(tmp_path / "nope"), "--output", str(tmp_path)])
    with pytest.raises(ConfigError, match="--manifest: no file"):
        parse_args(["--manifest", str(tmp_path / "m.jsonl"), "--output", str(tmp_path)])


@pytest.mark.parametrize(
    "argv",
    [
        ["--output", "o"],  # neither --input nor --manifest
        ["--input", "a", "--manifest", "b", "--output", "o"],
        ["--input", "a", "--output", "o", "--pca-k", "3", "--pca-variance", "0.9"],
    ],
)
def test_contradictory_flags_are_rejected(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_help_explains_every_flag():
    text = build_parser().format_help()
    for flag in FLAGS:
        assert flag in text


def test_cli_config_error_exits_2_before_writing(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "emr_serverless_job",
            "--input",
            str(tmp_path),
            "--output",
            str(out),
            "--image-size",
            "99",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--image-size" in result.stderr
    assert not out.exists()
