"""Shared fixtures: one local[2] SparkSession for the whole test session, generated images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruits_demo.image_sets import Expected, write_awkward_inputs, write_image_set

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
REAL_WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_no_top.h5"
REAL_SAMPLE = SHARED / "data" / "fruits-sample"
PER_CLASS = 4


def needs_real_data() -> pytest.MarkDecorator:
    missing = [str(p) for p in (REAL_WEIGHTS, REAL_SAMPLE) if not p.exists()]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"real weights/sample absent ({', '.join(missing)}); see ../shared READMEs",
    )


def build_dist(out: Path, runtime: str) -> Path:
    """``./dev package`` as a user runs it on this machine: real weights, the local archive."""
    missing = [str(p) for p in (REAL_WEIGHTS, REAL_SAMPLE) if not p.exists()]
    if missing:
        pytest.skip(f"real weights/sample absent ({', '.join(missing)}); see ../shared READMEs")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fruits_build.build",
            "--dist",
            str(out),
            "--weights",
            str(REAL_WEIGHTS),
            "--runtime",
            runtime,
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
    return out


@pytest.fixture(scope="session")
def onnx_dist(tmp_path_factory) -> Path:
    """The deployed default's artifacts (onnx), built once per test session."""
    return build_dist(tmp_path_factory.mktemp("dist-onnx"), "onnx")


@pytest.fixture(scope="session")
def spark():
    from emr_serverless_job.main import local_builder

    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        local_builder("local[2]", "3g")
        .appName("fruits-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> tuple[Path, Expected]:
    """Six labelled classes plus the awkward files real buckets contain."""
    folder = tmp_path_factory.mktemp("images")
    written = write_image_set(folder, PER_CLASS)
    awkward = write_awkward_inputs(folder)
    return folder, Expected(images=written + awkward.images, broken=awkward.broken)


# --- AWS on loopback ------------------------------------------------------------------------
# powertools reads these when lambda_trigger.handler is imported; X-Ray has no daemon here.
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "fruits-trigger")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "FruitsFeatures")


@pytest.fixture(scope="session")
def moto_server():
    """One moto server on 127.0.0.1 for the session; boto3 finds it through AWS_ENDPOINT_URL."""
    from tests.loopback import CREDENTIALS, MotoServer

    names = [*CREDENTIALS, "AWS_ENDPOINT_URL", "AWS_PROFILE"]
    saved = {name: os.environ.get(name) for name in names}
    server = MotoServer()
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    os.environ.pop("AWS_PROFILE", None)
    yield server
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def stack(moto_server, monkeypatch):
    """A fresh server state with the template's resources, and the Lambdas' environment set."""
    from lambda_trigger import handler, watcher
    from tests.loopback import deploy

    moto_server.reset()
    deployed = deploy()
    for name, value in {**deployed.watcher_environment, **deployed.environment}.items():
        monkeypatch.setenv(name, value)  # the trigger's and the watcher's settings
    cached = (handler.current_settings, handler.clients, watcher.current_settings, watcher.clients)
    for function in cached:
        function.cache_clear()
    yield deployed
    for function in cached:
        function.cache_clear()
