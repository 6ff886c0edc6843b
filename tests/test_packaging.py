"""packaging/: the archive EMR unpacks, built here from the same requirements as the Dockerfile,
runs the job with nothing but its own Python; the upload transfers only what changed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emr_serverless_job.model import file_sha256
from lambda_trigger.request import ENTRY_POINT, JOB_PACKAGE, MODEL_FILE, VENV_ARCHIVE, WEIGHTS_FILE
from tests.conftest import REAL_SAMPLE, REAL_WEIGHTS, ROOT, needs_real_data

PACKAGING = ROOT / "packaging"


def load(name: str) -> object:
    """packaging/ holds scripts, not a package (a package named `packaging` would shadow pip's)."""
    spec = importlib.util.spec_from_file_location(
        f"fruits_packaging_{name}", PACKAGING / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = load("build")
upload = load("upload")


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[re.sub(r"\[.*\]", "", name).lower()] = version
    return found


# --- what the Dockerfile builds is what the tests ran ----------------------------------------


def test_dockerfile_builds_on_amazon_linux_2023_with_python_311_and_the_tested_pins():
    dockerfile = (PACKAGING / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+) AS build$", dockerfile, re.M)
    assert base == "public.ecr.aws/amazonlinux/amazonlinux:2023"
    assert "dnf install -y python3.11 " in dockerfile
    assert "python3.11 -m venv /opt/venv" in dockerfile
    assert sys.version_info[:2] == (3, 11)  # the tests run the same Python minor
    # The archive installs exactly the build script's requirement files, COPY'd from the repo.
    (copied,) = re.findall(
        r"^COPY (requirements/\S+(?: requirements/\S+)*) requirements/$", dockerfile, re.M
    )
    wanted = {p for files in build.ARCHIVE_REQUIREMENTS.values() for p in files}
    assert set(copied.split()) == {*wanted, build.PACKER_REQUIREMENTS}
    assert "ARG RUNTIME=onnx" in dockerfile
    installed = re.findall(r"-r (requirements/\S+)", dockerfile)
    assert installed == [
        "requirements/job.txt",
        "requirements/${RUNTIME}.txt",
        build.PACKER_REQUIREMENTS,
    ]
    for runtime, files in build.ARCHIVE_REQUIREMENTS.items():
        assert files == ("requirements/job.txt", f"requirements/{runtime}.txt")
    assert f"--python-prefix {build.EMR_PYTHON_PREFIX}" in dockerfile
    assert f"--output /out/{VENV_ARCHIVE}" in dockerfile
    assert "packaging/slim.py /opt/venv" in dockerfile  # the same slimming as the local build


def test_archive_requirements_are_the_versions_installed_here_and_never_pyspark():
    files = {p for group in build.ARCHIVE_REQUIREMENTS.values() for p in group}
    assert "requirements/tensorflow.txt" not in build.ARCHIVE_REQUIREMENTS["onnx"]
    for path in (*sorted(files), build.PACKER_REQUIREMENTS):
        for name, version in pins(ROOT / path).items():
            assert metadata.version(name) == version, f"{path}: {name}"
            assert name != "pyspark"
    pyproject = (ROOT / "pyproject.toml").read_text()
    for path in files:
        assert f'file = ["{path}"]' in pyproject  # the tests' extras read the same files


def test_job_package_is_reproducible_and_complete(tmp_path):
    first = build.job_package(tmp_path / "a.zip")
    second = build.job_package(tmp_path / "b.zip")
    assert file_sha256(first) == file_sha256(second)
    import zipfile

    names = set(zipfile.ZipFile(first).namelist())
    sources = {f"emr_serverless_job/{p.name}" for p in (ROOT / "emr_serverless_job").glob("*.py")}
    assert names == sources


def test_slimming_removes_tests_caches_headers_and_installers(tmp_path):
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    keep = [site / "pkg" / "core.py", site / "absl" / "testing" / "parameterized.py"]
    drop = [
        site / "pkg" / "tests" / "test_core.py",
        site / "pkg" / "__pycache__" / "core.cpython-311.pyc",
        site / "pkg" / "include" / "api.h",
        site / "pkg" / "lib.a",
        site / "pip" / "__init__.py",
        site / "distutils-precedence.pth",
        venv / "bin" / "pip",
    ]
    for path in [*keep, *drop]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (venv / "bin" / "python").symlink_to(sys.executable)
    slim = load("slim")
    result = slim.slim(venv)
    assert all(p.exists() for p in keep) and (venv / "bin" / "python").exists()
    assert not any(p.exists() for p in drop)
    assert result["bytes_after"] < result["bytes_before"]


# --- the proof: the job runs on the archive's Python alone -----------------------------------


@pytest.fixture(scope="module", params=["onnx", "tensorflow"])
def dist(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"dist-{request.param}")
    result = subprocess.run(
        [
            sys.executable,
            str(PACKAGING / "build.py"),
            "--dist",
            str(out),
            "--weights",
            str(REAL_WEIGHTS),
            "--runtime",
            request.param,
            "--parity-images",
            str(REAL_SAMPLE),
            "--archive",
            "local",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "only valid on EMR if this machine matches Amazon Linux 2023" in result.stderr
    return out


@needs_real_data()
def test_manifest_lists_every_artifact_with_its_checksum_and_the_tested_versions(dist):
    manifest = json.loads((dist / build.MANIFEST).read_text())
    runtime = manifest["runtime"]
    model = {MODEL_FILE} if runtime == "onnx" else set()
    assert set(manifest["files"]) == {ENTRY_POINT, JOB_PACKAGE, WEIGHTS_FILE, VENV_ARCHIVE, *model}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_sha256(dist / name)
        assert entry["bytes"] == (dist / name).stat().st_size
    archive = manifest["archive"]
    assert archive["builder"] == "local" and archive["valid_on_emr"] is False
    assert archive["bytes_after"] < 0.85 * archive["bytes_before"]
    assert archive["runtime"] == runtime and archive["unpack_seconds"] > 0
    packages = archive["packages"]
    for path in build.ARCHIVE_REQUIREMENTS[runtime]:
        for name, version in pins(ROOT / path).items():
            assert packages[name] == version
    assert not {"pyspark", "pip", "setuptools", "venv-pack"} & set(packages)
    if runtime == "onnx":
        assert not {"tensorflow", "tensorflow-cpu", "keras"} & set(packages)
        exported = manifest["model"]
        assert exported["image_size"] == 224 and exported["opset"] == 17
        assert exported["parity_max_abs_diff"] <= 1e-4 and exported["parity_images"] >= 16
        assert exported["weights_sha256"] == file_sha256(dist / WEIGHTS_FILE)


@needs_real_data()
def test_the_job_runs_with_only_the_archives_python(dist, tmp_path):
    """As EMR lays it out: the archive unpacked as ./environment, every Python process using it,
    the model (onnx) or the weights (tensorflow) from dist/."""
    runtime = json.loads((dist / build.MANIFEST).read_text())["runtime"]
    featurizer = (
        ["--model", str(dist / MODEL_FILE)]
        if runtime == "onnx"
        else ["--runtime", "tensorflow", "--weights", str(dist / WEIGHTS_FILE)]
    )
    run = tmp_path / "run"
    with tarfile.open(dist / VENV_ARCHIVE) as archive:
        archive.extractall(run / "environment", filter="fully_trusted")
    images = run / "images"
    chosen = []
    for folder in sorted(p for p in REAL_SAMPLE.iterdir() if p.is_dir())[:2]:
        for photo in sorted(folder.glob("*.jpg"))[:3]:
            (images / folder.name).mkdir(parents=True, exist_ok=True)
            (images / folder.name / photo.name).write_bytes(photo.read_bytes())
            chosen.append(images / folder.name / photo.name)
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    env = {  # nothing of the test environment: no venv on PATH, no PYTHONPATH
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "SPARK_HOME": str(spark_home),
        "PYSPARK_PYTHON": "./environment/bin/python",
        "PYSPARK_DRIVER_PYTHON": "./environment/bin/python",
    }
    if "JAVA_HOME" in os.environ:
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    result = subprocess.run(
        [
            str(spark_home / "bin" / "spark-submit"),
            "--master",
            "local[2]",
            "--py-files",
            str(dist / JOB_PACKAGE),
            "--conf",
            f"spark.archives={dist / VENV_ARCHIVE}#environment",
            str(dist / ENTRY_POINT),
            "--input",
            "images",
            "--output",
            "out",
            *featurizer,
            "--pca-k",
            "2",
        ],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{len(chosen)} featurized, 0 errors" in result.stdout
    built = [  # a line may follow Spark's console progress bar, which ends without a newline
        json.loads(line[line.index('{"event"') :])
        for line in result.stderr.splitlines()
        if '"model_built"' in line
    ]
    assert built, "no worker logged model_built"
    assert {event["python"] for event in built} == {str(run / "environment" / "bin" / "python")}
    assert {event["runtime"] for event in built} == {runtime}

    # Same features as Keras in this (test) environment computes for the same images and
    # weights: for onnx, this also checks the exported model against its source.
    from emr_serverless_job.images import decode_batch, preprocess
    from emr_serverless_job.model import Weights, tensorflow_featurizer

    featurize = tensorflow_featurizer(224, Weights(kind="file", location=str(REAL_WEIGHTS)))
    decoded = decode_batch([p.read_bytes() for p in chosen], 224)
    expected = featurize(preprocess(decoded.pixels))
    rows = pq.read_table(run / "out" / "features").to_pylist()
    by_name = {Path(row["path"]).name + Path(row["path"]).parent.name: row for row in rows}
    got = np.array([by_name[p.name + p.parent.name]["features"] for p in chosen], np.float32)
    assert np.abs(got - expected).max() <= 1e-4


# --- upload -----------------------------------------------------------------------------------


def small_dist(folder: Path, weights: bytes = b"weights") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / ENTRY_POINT).write_text("print('entry')\n")
    build.job_package(folder / JOB_PACKAGE)
    (folder / WEIGHTS_FILE).write_bytes(weights)
    (folder / VENV_ARCHIVE).write_bytes(b"archive")
    files = {
        name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
        for name in (ENTRY_POINT, JOB_PACKAGE, WEIGHTS_FILE, VENV_ARCHIVE)
    }
    (folder / build.MANIFEST).write_text(json.dumps({"files": files}))
    return folder


def test_upload_puts_dist_under_artifacts_and_then_transfers_nothing(stack, tmp_path, capsys):
    folder = small_dist(tmp_path / "dist")
    target = f"s3://{stack.bucket}/artifacts"
    assert upload.main(["--artifacts", target, "--dist", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "5 uploaded, 0 unchanged" in out
    assert f"WEIGHTS_URI={target}/{WEIGHTS_FILE}" in out
    s3 = stack.client("s3")
    for name in (ENTRY_POINT, JOB_PACKAGE, WEIGHTS_FILE, VENV_ARCHIVE, build.MANIFEST):
        body = s3.get_object(Bucket=stack.bucket, Key=f"artifacts/{name}")["Body"].read()
        assert body == (folder / name).read_bytes()
        head = s3.head_object(Bucket=stack.bucket, Key=f"artifacts/{name}")
        assert head["Metadata"]["sha256"] == file_sha256(folder / name)

    assert upload.main(["--artifacts", target, "--dist", str(folder)]) == 0
    assert "0 uploaded, 5 unchanged" in capsys.readouterr().out

    small_dist(folder, weights=b"new weights")
    assert upload.main(["--artifacts", target, "--dist", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "2 uploaded, 3 unchanged" in out  # the weights and the manifest that lists them
    assert f"uploaded   {target}/{WEIGHTS_FILE}" in out


def test_upload_refuses_a_dist_without_a_manifest(tmp_path, capsys):
    assert upload.main(["--artifacts", "s3://b/artifacts", "--dist", str(tmp_path)]) == 2
    assert "run packaging/build.py first" in capsys.readouterr().err
