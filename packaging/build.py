"""Build everything a job run reads from ``s3://BUCKET/artifacts/`` into ``dist/``.

    python packaging/build.py [--weights imagenet|FILE] [--runtime onnx|tensorflow]
                              [--image-size 224] [--parity-images DIR] [--arch x86_64|arm64]
                              [--archive auto|docker|local|keep] [--dist dist]

- ``main.py`` (the entry point) and ``emr_serverless_job.zip`` (the package, reproducible:
  the same sources give the same bytes, so an unchanged package is never re-uploaded);
- ``mobilenet_v2_weights.h5``: Keras' ImageNet download (needs internet) or a given file;
- ``mobilenet_v2.onnx`` (runtime onnx, the default): the same model exported to ONNX at
  ``--image-size``, shipped only if ONNX Runtime matches Keras on real photos (export_onnx.py);
- ``pyspark_venv.tar.gz``: the job's pinned runtime requirements for ``--runtime`` (onnx: no
  TensorFlow; never pyspark, which EMR provides), packed by ``packaging/pack.py``: wheels for
  Amazon Linux 2023's glibc, ``bin/python`` linked to ``/usr/bin/python3.11`` (checked; the
  build fails otherwise). pack.py runs in ``packaging/Dockerfile`` where Docker runs, and on
  this machine otherwise (which needs ``/usr/bin/python3.11``: Debian 12 and AL2023 have it);
- ``artifacts.json``: sha256 and size of each file, the archive's packages and how it was built.

File names are the ones the StartJobRun request uses (``lambda_trigger/request.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emr_serverless_job.model import file_sha256  # noqa: E402 (the root is added just above)
from lambda_trigger.request import (  # noqa: E402
    ENTRY_POINT,
    JOB_PACKAGE,
    MODEL_FILE,
    VENV_ARCHIVE,
    WEIGHTS_FILE,
)

JOB_SOURCES = ROOT / "emr_serverless_job"
# What the archive installs, per runtime: read by this script and COPY'd by the Dockerfile
# (which installs requirements/job.txt and requirements/${RUNTIME}.txt).
ARCHIVE_REQUIREMENTS = {
    "onnx": ("requirements/job.txt", "requirements/onnx.txt"),
    "tensorflow": ("requirements/job.txt", "requirements/tensorflow.txt"),
}
DEFAULT_PARITY_IMAGES = ROOT.parent / "shared" / "data" / "fruits-sample"
PACKER_REQUIREMENTS = "requirements/packaging.txt"
DOCKERFILE = ROOT / "packaging" / "Dockerfile"
PACK = ROOT / "packaging" / "pack.py"
MANIFEST = "artifacts.json"
PLATFORMS = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# What keras.applications.MobileNetV2(weights="imagenet", include_top=False) downloads.
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGENET_URL = (
    f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{IMAGENET_FILE}"
)


def job_package(dest: Path) -> Path:
    """The package as a zip for ``--py-files``, byte-for-byte reproducible."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(JOB_SOURCES.glob("*.py")):
            info = zipfile.ZipInfo(f"emr_serverless_job/{source.name}", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes())
    return dest


def fetch_weights(spec: str, dest: Path) -> str:
    """Copy a weights file, or let Keras download ImageNet's (a build machine has internet)."""
    if spec == "imagenet":
        import keras

        source = Path(keras.utils.get_file(IMAGENET_FILE, IMAGENET_URL, cache_subdir="models"))
    else:
        source = Path(spec).expanduser().resolve()
        if not source.is_file():
            raise SystemExit(f"--weights: no file at {source}")
    shutil.copyfile(source, dest)
    return "imagenet (Keras download)" if spec == "imagenet" else str(source)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    return probe.returncode == 0


def load_script(name: str) -> object:
    """A sibling script as a module (packaging/ is not a package: it would shadow pip's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"fruits_packaging_{name}", PACK.with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def unpack_seconds(archive: Path) -> float:
    """How long unpacking takes, as every driver and executor does before the job starts."""
    import time

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run(["tar", "-xzf", str(archive), "-C", folder], check=True)
        return round(time.perf_counter() - started, 2)


def pack_arguments(runtime: str) -> list[str]:
    """What pack.py is told to install; the Dockerfile passes the same two files."""
    return ["--requirements", *ARCHIVE_REQUIREMENTS[runtime]]


def archive_with_docker(dist: Path, arch: str, runtime: str) -> dict[str, object]:
    """``docker build --output``: pack.py runs on Amazon Linux 2023; its archive lands in dist."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                "docker",
                "build",
                "--platform",
                PLATFORMS[arch],
                "--build-arg",
                f"RUNTIME={runtime}",
                "--file",
                str(DOCKERFILE),
                "--output",
                f"type=local,dest={out}",
                str(ROOT),
            ],
            check=True,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
        shutil.move(Path(out) / VENV_ARCHIVE, dist / VENV_ARCHIVE)
        report = json.loads((Path(out) / "pack.json").read_text())
    return {"builder": "docker", "platform": PLATFORMS[arch], **report}


def archive_locally(dist: Path, arch: str, runtime: str, work: Path) -> dict[str, object]:
    """pack.py on this machine, as the Dockerfile runs it; fails unless the links are right."""
    report_path = work / "pack.json"
    result = subprocess.run(
        [
            sys.executable,
            str(PACK),
            *pack_arguments(runtime),
            "--arch",
            arch,
            "--output",
            str(dist / VENV_ARCHIVE),
            "--work",
            str(work),
            "--report",
            str(report_path),
        ],
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise SystemExit(f"error: packing the {runtime} archive failed (see above)")
    os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.platform())
    return {
        "builder": "local",
        "platform": f"linux/{PLATFORMS[arch].split('/')[1]}",
        "os": os_name,
        **json.loads(report_path.read_text()),
    }


def export_model(
    dist: Path,
    image_size: int,
    parity_images: Path,
    precision: str = "int8",
    calibration_images: Path | None = None,
) -> dict[str, object]:
    """The .onnx next to the weights it came from; raises (no model shipped) on a mismatch."""
    from emr_serverless_job.model import Weights

    export_onnx = load_script("export_onnx")
    weights = Weights(kind="file", location=str(dist / WEIGHTS_FILE))
    try:
        result = export_onnx.export(
            weights,
            image_size,
            dist / MODEL_FILE,
            parity_images,
            precision=precision,
            calibration_images=calibration_images,
        )
    except export_onnx.ParityError as error:
        (dist / MODEL_FILE).unlink(missing_ok=True)
        raise SystemExit(f"error: {error}") from error
    return {
        "file": MODEL_FILE,
        "image_size": result.image_size,
        "weights_sha256": result.weights_sha256,
        "opset": result.opset,
        "parity_max_abs_diff": result.parity_max_abs_diff,
        "parity_images": result.parity_images,
        "precision": result.precision,
        "calibration_sha256": result.calibration_sha256,
        "calibration_images": result.calibration_images,
        "int8_min_cosine": result.int8_min_cosine,
        "int8_mean_cosine": result.int8_mean_cosine,
        "int8_seven_bit_convs": result.int8_seven_bit_convs,
    }


def build(
    dist: Path,
    weights: str,
    arch: str,
    archive: str,
    runtime: str = "onnx",
    image_size: int = 224,
    parity_images: Path = DEFAULT_PARITY_IMAGES,
    precision: str = "int8",
    calibration_images: Path | None = None,
) -> dict[str, object]:
    dist.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(JOB_SOURCES / "main.py", dist / ENTRY_POINT)
    job_package(dist / JOB_PACKAGE)
    weights_source = fetch_weights(weights, dist / WEIGHTS_FILE)
    model = (
        export_model(dist, image_size, parity_images, precision, calibration_images)
        if runtime == "onnx"
        else None
    )
    if model is None:
        (dist / MODEL_FILE).unlink(missing_ok=True)
    previous = dist / MANIFEST
    if archive == "keep":
        if not (dist / VENV_ARCHIVE).is_file() or not previous.is_file():
            raise SystemExit(f"--archive keep: no earlier {VENV_ARCHIVE} in {dist}")
        built = json.loads(previous.read_text())["archive"]
        if built.get("runtime") != runtime:
            raise SystemExit(f"--archive keep: the archive in {dist} is for {built.get('runtime')}")
    else:
        if archive == "docker" or (archive == "auto" and docker_available()):
            built = archive_with_docker(dist, arch, runtime)
        else:
            built = archive_locally(dist, arch, runtime, ROOT / "build" / "archive")
        built["runtime"] = runtime
        built["valid_on_emr"] = set(built["python_links"].values()) == {built["interpreter"]}
        built["unpack_seconds"] = unpack_seconds(dist / VENV_ARCHIVE)
    names = (ENTRY_POINT, JOB_PACKAGE, WEIGHTS_FILE, *([MODEL_FILE] if model else []), VENV_ARCHIVE)
    manifest = {
        "files": {
            name: {"sha256": file_sha256(dist / name), "bytes": (dist / name).stat().st_size}
            for name in names
        },
        "runtime": runtime,
        "archive": built,
        "weights": {"source": weights_source},
        "model": model,
        "python": platform.python_version(),
        "requirements": list(ARCHIVE_REQUIREMENTS[runtime]),
    }
    (dist / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the job's artifacts into dist/.")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or a weights file")
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="x86_64")
    parser.add_argument(
        "--runtime",
        choices=sorted(ARCHIVE_REQUIREMENTS),
        default="onnx",
        help="onnx (default): export the model, archive without TensorFlow; tensorflow: the "
        "fallback archive with TensorFlow",
    )
    parser.add_argument("--image-size", type=int, default=224, help="of the exported model")
    parser.add_argument(
        "--parity-images",
        type=Path,
        default=DEFAULT_PARITY_IMAGES,
        help="real photos the export is checked on (default ../shared/data/fruits-sample)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="int8",
        help="of the exported model (default int8: 1.4-1.6x the fp32 speed, gated on cosine to "
        "fp32; fp32 keeps features comparable with older runs: see README, The model's precision)",
    )
    parser.add_argument(
        "--calibration-images",
        type=Path,
        default=None,
        help="int8: a few hundred of your own photos that set the activation ranges "
        "(default: --parity-images)",
    )
    parser.add_argument(
        "--archive",
        choices=("auto", "docker", "local", "keep"),
        default="auto",
        help="auto: Docker where it runs, else pack.py on this machine (needs /usr/bin/python3.11)",
    )
    args = parser.parse_args(argv)
    manifest = build(
        args.dist.resolve(),
        args.weights,
        args.arch,
        args.archive,
        args.runtime,
        args.image_size,
        args.parity_images,
        args.precision,
        args.calibration_images,
    )
    mib = 2**20
    archive = manifest["archive"]
    for name, entry in manifest["files"].items():
        print(f"{args.dist / name}  {entry['bytes'] / mib:8.1f} MiB  sha256 {entry['sha256'][:16]}")
    print(
        f"venv {archive['bytes_before'] / mib:.0f} MiB -> {archive['bytes_after'] / mib:.0f} MiB "
        f"after slimming; archive {manifest['files'][VENV_ARCHIVE]['bytes'] / mib:.0f} MiB "
        f"({archive['builder']} build, {archive['platform']}, {manifest['runtime']}), "
        f"unpacks in {archive['unpack_seconds']} s; wheels for {archive['wheel_platform']}, "
        f"bin/python -> {archive['interpreter']}"
    )
    if manifest["model"]:
        model = manifest["model"]
        print(
            f"{MODEL_FILE}: {model['image_size']} px, opset {model['opset']}, ONNX Runtime vs "
            f"Keras max abs diff {model['parity_max_abs_diff']:.2g} on {model['parity_images']} "
            f"photos; {model['precision']}"
            + (
                f" (cosine to fp32 min {model['int8_min_cosine']:.4f})"
                if model["precision"] == "int8"
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
