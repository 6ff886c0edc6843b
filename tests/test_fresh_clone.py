"""docs/deploy.md "First deployment", step 3, on a fresh clone: the packaging command builds the
archive and the model with nothing beside the checkout (no ../shared), on this project's .venv."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from emr_serverless_job.model import read_onnx_model
from fruits_build import build, pack
from fruits_contract import ARTIFACTS_MANIFEST, JOB_PACKAGE, MODEL_FILE, VENV_ARCHIVE, logs
from tests.conftest import ROOT

SMALL = 96  # px: the cheapest export the checks accept; the archive is the same at any size


def readme_packaging_command() -> list[str]:
    """The ``./dev package ...`` of docs/deploy.md "First deployment", step 3 "The artifacts"
    (the README's summary of that step links there)."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    section = guide.split("\n## First deployment\n", 1)[1].split("\n## ", 1)[0]
    (step,) = re.findall(r"^3\. \*\*The artifacts\.\*\*.*?(?=^\d\. )", section, re.M | re.S)
    (command,) = re.findall(r"^\s*(\./dev package[^`\n]*)$", step, re.M)
    return shlex.split(command)


def fresh_clone(dest: Path) -> Path:
    """The repository's tracked files as they are now, with no ../shared beside them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_readme_packaging_command_builds_archive_and_model_on_a_fresh_clone(tmp_path):
    command = readme_packaging_command()
    assert command[:2] == ["./dev", "package"]
    assert "--weights" in command and "--calibration" in command
    clone = fresh_clone(tmp_path / "checkout" / "fruits-features")
    assert not (clone.parent / "shared").exists()
    assert not (clone / "dist").exists()
    # Offline equivalent: ImageNet's file is a Keras download (no internet here) unless cached.
    cached = Path.home() / ".keras" / "models" / build.IMAGENET_FILE
    weights = command[command.index("--weights") + 1]
    if weights == "imagenet" and not cached.is_file():
        command[command.index("--weights") + 1] = "random:0"
    # Its calibration folder is synced from the bucket (AWS credentials): without it, the build
    # falls back to generated photos, which is what this checks.
    at = command.index("--calibration")
    del command[at : at + 2]
    command += ["--image-size", str(SMALL), "--archive", "local"]
    env = {**os.environ, "VENV": str(ROOT / ".venv")}  # the project's venv, already set up
    result = subprocess.run(
        command, cwd=clone, env=env, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])

    dist = clone / "dist"
    manifest = json.loads((dist / ARTIFACTS_MANIFEST).read_text())
    assert pack.check_archive(dist / VENV_ARCHIVE).problems == []
    assert manifest["archive"]["valid_on_emr"] is True
    model = manifest["model"]
    info = read_onnx_model(dist / MODEL_FILE)
    assert (info.precision, info.image_size) == ("int8", SMALL) == (model["precision"], SMALL)
    assert model["parity_images"] == 32 and model["parity_source"].startswith("generated: 36")
    # int8 from generated photos, said in the build output and in artifacts.json, with the count
    count = build.GENERATED_CALIBRATION_PER_CLASS * len(build.CLASSES)
    assert model["calibration_images"] == count == 96
    assert model["calibration_source"].startswith("generated")
    said = f"INT8 CALIBRATED ON GENERATED IMAGES: {count} synthetic"
    assert any(w.startswith(said) for w in manifest["warnings"])
    warned = [line for line in logs.parse(result.stderr) if line["level"] == logs.WARNING]
    assert any(line["message"].startswith(said) for line in warned)
    if manifest["weights"]["random"]:
        assert info.is_random and "RANDOM WEIGHTS" in result.stderr
    assert "shared" not in json.dumps(manifest)

    # The archive runs the model with its own Python, laid out as EMR unpacks it.
    with tarfile.open(dist / VENV_ARCHIVE) as archive:
        archive.extractall(tmp_path / "run" / "environment", filter="fully_trusted")
    probe = (
        "import sys, numpy as np; from PIL import Image; "
        "from emr_serverless_job.images import decode_batch, preprocess; "
        "from emr_serverless_job.model import onnx_featurizer; "
        f"pixels = decode_batch([open(sys.argv[1], 'rb').read()], {SMALL}).pixels; "
        "features = onnx_featurizer(sys.argv[2])(preprocess(pixels)); "
        "print(sys.version_info[:2], features.shape, bool(np.isfinite(features).all()))"
    )
    photo = tmp_path / "kiwi.jpg"
    build.fruit_image("Kiwi", 7).save(photo)
    ran = subprocess.run(
        ["./environment/bin/python", "-c", probe, str(photo), str(dist / MODEL_FILE)],
        cwd=tmp_path / "run",
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(dist / JOB_PACKAGE)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.split() == ["(3,", "11)", "(1,", "1280)", "True"]
    assert sys.version_info[:2] == (3, 11)
