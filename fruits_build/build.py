"""Build everything a job run reads from ``s3://BUCKET/artifacts/`` into ``dist/``.

    python -m fruits_build.build [--weights imagenet|FILE|random:SEED] [--runtime onnx|tensorflow]
                              [--image-size 224] [--photos DIR] [--calibration DIR]
                              [--arch x86_64|arm64] [--archive auto|docker|local|keep] [--dist dist]

- ``main.py`` (the entry point) and ``emr_serverless_job.zip`` (the package, reproducible:
  the same sources give the same bytes, so an unchanged package is never re-uploaded);
- ``mobilenet_v2_weights.h5``: Keras' ImageNet download (needs internet), a given file, or
  ``random:SEED`` weights (offline demos and tests only: said loudly here and in every run);
- ``mobilenet_v2.onnx`` (runtime onnx, the default): the same model exported to ONNX at
  ``--image-size``, shipped only if ONNX Runtime matches Keras on ``--photos`` (default: photos
  generated here, ``emr_serverless_job.fruit_blobs``) and, for int8, if its features stay close to
  fp32 there; int8 is calibrated on ``--calibration`` (your own photos), else on ``--photos``
  when given, else on generated photos, with a warning in the output and ``artifacts.json``;
- ``pyspark_venv.tar.gz``: the job's pinned runtime requirements for ``--runtime`` (onnx: no
  TensorFlow; never pyspark, which EMR provides), packed by ``fruits_build/pack.py``: wheels for
  Amazon Linux 2023's glibc, and the CPython 3.11 that ``fruits_build/cpython.py`` builds as
  ``bin/python3.11`` (checked: every link inside, every ELF file loadable on Amazon Linux 2023;
  the build fails otherwise). pack.py runs in ``fruits_build/Dockerfile`` where Docker runs, and
  on this machine otherwise (a glibc Linux with gcc and the -dev headers cpython.py names);
- ``artifacts.json``: sha256 and size of each file, the archive's packages and how it was built.

File names are the contract's (``fruits_contract``), which the StartJobRun request uses.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emr_serverless_job.fruit_blobs import CLASSES, fruit_image
from emr_serverless_job.model import (
    RANDOM_PREFIX,
    Weights,
    build_keras_model,
    file_sha256,
)
from fruits_build import pack
from fruits_contract import (
    ARTIFACTS_MANIFEST,
    ENTRY_POINT,
    IMAGE_SIZES,
    JOB_PACKAGE,
    MODEL_FILE,
    VENV_ARCHIVE,
    WEIGHTS_FILE,
    logs,
)
from fruits_contract import cli as convention

ROOT = Path(__file__).resolve().parent.parent

# The packages the job zip holds: the job, and the contract it shares with the Lambdas (one
# copy of each, at the zip's root, so --py-files puts both on every process's path).
JOB_PACKAGES = (ROOT / "emr_serverless_job", ROOT / "fruits_contract")
JOB_SOURCES = JOB_PACKAGES[0]
# What the archive installs, per runtime: read by this script and COPY'd by the Dockerfile
# (which installs requirements/job.txt and requirements/${RUNTIME}.txt).
ARCHIVE_REQUIREMENTS = {
    "onnx": ("requirements/job.txt", "requirements/onnx.txt"),
    "tensorflow": ("requirements/job.txt", "requirements/tensorflow.txt"),
}
# Without --photos, the export is checked on photos generated here: 6 classes x 6 = 36, of which
# the parity check uses 32 (export_onnx.PARITY_BATCH). Without --calibration or --photos, int8
# is calibrated on 6 x 16 = 96 other generated photos (indices from 1000 on).
GENERATED_PARITY_PER_CLASS = 6
GENERATED_CALIBRATION_PER_CLASS = 16
GENERATED_CALIBRATION_FIRST_INDEX = 1000
# A sample of your own photos for --calibration: about one in ten numbered photos of every label
# (the export uses at most 500, spread evenly in path order: export_onnx.CALIBRATION_LIMIT).
CALIBRATION_SYNC = (
    'aws s3 sync s3://BUCKET/raw/ calibration/ --exclude "*" --include "*0.jpg" '
    '--include "*0.jpeg" --include "*0.png"'
)
PACKER_REQUIREMENTS = "requirements/build.txt"
DOCKERFILE = ROOT / "fruits_build" / "Dockerfile"
PLATFORMS = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# What keras.applications.MobileNetV2(weights="imagenet", include_top=False) downloads.
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGENET_URL = (
    f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{IMAGENET_FILE}"
)


def job_package(dest: Path) -> Path:
    """The job's packages as a zip for ``--py-files``, byte-for-byte reproducible."""
    sources = sorted(source for package in JOB_PACKAGES for source in package.glob("*.py"))
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sources:
            info = zipfile.ZipInfo(f"{source.parent.name}/{source.name}", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes())
    return dest


def fetch_weights(spec: str, dest: Path) -> tuple[str, Weights]:
    """The weights file at ``dest``: Keras' ImageNet download (a build machine with internet),
    a copy of a given file, or ``random:SEED`` weights written there (offline demos, tests).
    Returns how it was got and the weights the ONNX export is made from: the file, except for
    random weights, which the model is stamped with so that every run says so."""
    if spec.startswith(RANDOM_PREFIX):
        import keras

        try:
            weights = Weights.parse(spec)
        except ValueError as error:
            raise SystemExit(f"error: --weights {error}") from None
        # Legacy HDF5 (the ImageNet file's format), which MobileNetV2(weights=FILE) loads; the
        # weights do not depend on the input size.
        keras.saving.save_model(build_keras_model(96, weights), dest)
        return f"{weights.describe()} (random weights: tests and offline demos only)", weights
    if spec == "imagenet":
        import keras

        try:
            source = Path(keras.utils.get_file(IMAGENET_FILE, IMAGENET_URL, cache_subdir="models"))
        except Exception as error:  # no internet: say where weights can come from
            raise SystemExit(
                f"error: --weights imagenet: Keras could not download {IMAGENET_URL} ({error}). "
                "Build on a machine with internet (Keras caches it in ~/.keras/models), or give "
                "the file: --weights FILE.h5"
            ) from None
    else:
        source = Path(spec).expanduser().resolve()
        if not source.is_file():
            raise SystemExit(f"error: --weights: no file at {source}")
    shutil.copyfile(source, dest)
    described = "imagenet (Keras download)" if spec == "imagenet" else str(source)
    return described, Weights(kind="file", location=str(dest))


@dataclass
class Photos:
    """The photos the export is checked on and int8 is calibrated on, and where they came from."""

    parity: Path
    parity_source: str
    calibration: Path | None = None
    calibration_source: str | None = None
    generated_calibration: bool = False
    warnings: list[str] = field(default_factory=list)


def generate_photos(folder: Path, per_class: int, first_index: int = 0) -> int:
    """``folder/<label>/<i>.jpg``: fruit-like blobs on white (emr_serverless_job.fruit_blobs)."""
    for label in CLASSES:
        target = folder / label
        target.mkdir(parents=True, exist_ok=True)
        for index in range(first_index, first_index + per_class):
            fruit_image(label, index).save(target / f"{index}.jpg", quality=90)
    return per_class * len(CLASSES)


def choose_photos(
    photos: Path | None, calibration: Path | None, precision: str, scratch: Path
) -> Photos:
    """``--photos`` or generated ones for parity; for int8, ``--calibration``, else ``--photos``,
    else generated ones (which the build warns about)."""
    for flag, folder in (("--photos", photos), ("--calibration", calibration)):
        if folder is not None and not folder.is_dir():
            raise SystemExit(f"error: {flag}: no folder at {folder}")
    if photos is not None:
        chosen = Photos(parity=photos, parity_source=f"given: {photos}")
    else:
        count = generate_photos(scratch / "parity", GENERATED_PARITY_PER_CLASS)
        chosen = Photos(
            parity=scratch / "parity",
            parity_source=f"generated: {count} photos (emr_serverless_job.fruit_blobs)",
        )
    if precision != "int8":
        return chosen
    if calibration is not None:
        chosen.calibration, chosen.calibration_source = calibration, f"given: {calibration}"
    elif photos is not None:
        chosen.calibration, chosen.calibration_source = photos, f"--photos: {photos}"
    else:
        generate_photos(
            scratch / "calibration",
            GENERATED_CALIBRATION_PER_CLASS,
            GENERATED_CALIBRATION_FIRST_INDEX,
        )
        chosen.calibration = scratch / "calibration"
        chosen.calibration_source = "generated (emr_serverless_job.fruit_blobs)"
        chosen.generated_calibration = True
    return chosen


def calibration_warning(count: int) -> str:
    return (
        f"INT8 CALIBRATED ON GENERATED IMAGES: {count} synthetic fruit blobs on white, not your "
        "photos. Its activation ranges come from them, so real photos may be clipped; rebuild "
        "with --calibration DIR, a few hundred of your own photos (e.g. "
        f"{CALIBRATION_SYNC}), or with --precision fp32"
    )


def loud(message: str) -> None:
    """A warning, in capitals where a reader must not miss it (artifacts.json keeps it too)."""
    convention.say(message, logs.WARNING)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    return probe.returncode == 0


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
            "-m",
            "fruits_build.pack",
            *pack_arguments(runtime),
            "--arch",
            arch,
            "--archive",
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
    weights: Weights | None = None,
) -> dict[str, object]:
    """The .onnx next to the weights it came from; raises (no model shipped) on a mismatch."""
    from fruits_build import export_onnx  # TensorFlow and onnx: only when a model is built

    weights = weights or Weights(kind="file", location=str(dist / WEIGHTS_FILE))
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


def onnx_photos(
    runtime: str,
    parity_images: Path | None,
    calibration_images: Path | None,
    precision: str,
    scratch: Path,
) -> Photos | None:
    """An onnx build's photos; int8 calibrated on generated ones is said loudly, up front."""
    photos = (
        choose_photos(parity_images, calibration_images, precision, scratch)
        if runtime == "onnx"
        else None
    )
    if photos and photos.generated_calibration:
        loud(calibration_warning(GENERATED_CALIBRATION_PER_CLASS * len(CLASSES)))
    return photos


def job_files(dist: Path) -> None:
    """The entry point and the job's zip, which every runtime ships."""
    shutil.copyfile(JOB_SOURCES / "main.py", dist / ENTRY_POINT)
    job_package(dist / JOB_PACKAGE)


def random_weights_warnings(weights: Weights) -> list[str]:
    """Random weights are said loudly now and kept in artifacts.json: features from them mean
    nothing."""
    if not weights.is_random:
        return []
    warning = (
        f"RANDOM WEIGHTS ({weights.describe()}): the features mean nothing; "
        "for tests and offline demos only, never a deployment"
    )
    loud(warning)
    return [warning]


def onnx_model(
    dist: Path, image_size: int, precision: str, photos: Photos | None, weights: Weights
) -> dict[str, object] | None:
    """The exported model's record (None without photos: a tensorflow build exports none);
    random weights are exported as themselves, so the model is stamped with them."""
    if not photos:
        return None
    return export_model(
        dist,
        image_size,
        photos.parity,
        precision,
        photos.calibration,
        weights if weights.is_random else None,
    )


def record_photos(model: dict[str, object], photos: Photos) -> list[str]:
    """The model's record names the photos it was checked and calibrated on; generated
    calibration photos earn a warning in artifacts.json."""
    model["parity_source"] = photos.parity_source
    model["calibration_source"] = photos.calibration_source
    if photos.generated_calibration:
        return [calibration_warning(model["calibration_images"])]
    return []


def kept_archive(dist: Path, runtime: str) -> dict[str, object]:
    """``--archive keep``: the archive an earlier build left in dist, if it is for ``runtime``."""
    previous = dist / ARTIFACTS_MANIFEST
    if not (dist / VENV_ARCHIVE).is_file() or not previous.is_file():
        raise SystemExit(f"--archive keep: no earlier {VENV_ARCHIVE} in {dist}")
    built = json.loads(previous.read_text())["archive"]
    if built.get("runtime") != runtime:
        raise SystemExit(f"--archive keep: the archive in {dist} is for {built.get('runtime')}")
    return built


def new_archive(dist: Path, arch: str, runtime: str, archive: str) -> dict[str, object]:
    """The archive packed by Docker (asked, or auto where it runs) or here, then checked for
    Amazon Linux 2023 and timed unpacking, as the manifest reports it."""
    if archive == "docker" or (archive == "auto" and docker_available()):
        built = archive_with_docker(dist, arch, runtime)
    else:
        built = archive_locally(dist, arch, runtime, ROOT / "build" / "archive")
    built["runtime"] = runtime
    checked = pack.check_archive(dist / VENV_ARCHIVE, arch)
    built["valid_on_emr"] = not checked.problems
    built["unpack_seconds"] = unpack_seconds(dist / VENV_ARCHIVE)
    return built


def artifacts_manifest(
    dist: Path,
    runtime: str,
    built: dict[str, object],
    weights_source: str,
    weights: Weights,
    model: dict[str, object] | None,
    warnings: list[str],
) -> dict[str, object]:
    """``artifacts.json``: each file's sha256 and size, and how the archive, weights and model
    were made, so the upload and every run can check what they were given."""
    names = (ENTRY_POINT, JOB_PACKAGE, WEIGHTS_FILE, *([MODEL_FILE] if model else []), VENV_ARCHIVE)
    return {
        "files": {
            name: {"sha256": file_sha256(dist / name), "bytes": (dist / name).stat().st_size}
            for name in names
        },
        "runtime": runtime,
        "archive": built,
        "weights": {"source": weights_source, "random": weights.is_random},
        "model": model,
        "warnings": warnings,
        "python": platform.python_version(),
        "requirements": list(ARCHIVE_REQUIREMENTS[runtime]),
    }


def build(
    dist: Path,
    weights: str,
    arch: str,
    archive: str,
    runtime: str = "onnx",
    image_size: int = 224,
    parity_images: Path | None = None,
    precision: str = "int8",
    calibration_images: Path | None = None,
) -> dict[str, object]:
    """Every artifact into ``dist``, and the manifest that lists them (also returned)."""
    dist.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        photos = onnx_photos(runtime, parity_images, calibration_images, precision, Path(scratch))
        job_files(dist)
        weights_source, export_weights = fetch_weights(weights, dist / WEIGHTS_FILE)
        warnings += random_weights_warnings(export_weights)
        model = onnx_model(dist, image_size, precision, photos, export_weights)
    if model is not None and photos is not None:
        warnings += record_photos(model, photos)
    if model is None:
        (dist / MODEL_FILE).unlink(missing_ok=True)
    if archive == "keep":
        built = kept_archive(dist, runtime)
    else:
        built = new_archive(dist, arch, runtime, archive)
    manifest = artifacts_manifest(
        dist, runtime, built, weights_source, export_weights, model, warnings
    )
    (dist / ARTIFACTS_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def flag_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the flags, found before dist/ is touched (build() checks the same
    again, for its other callers, but only once it has begun writing)."""
    from fruits_build import export_onnx  # light to import: TensorFlow loads only to export

    problems = export_onnx.weights_problems("--weights", args.weights)
    for flag, folder in (("--photos", args.photos), ("--calibration", args.calibration)):
        if folder is not None and not folder.is_dir():
            problems.append(convention.flag_error(flag, folder, "no such folder"))
    if args.image_size not in IMAGE_SIZES:
        sizes = ", ".join(map(str, IMAGE_SIZES))
        problems.append(
            convention.flag_error("--image-size", args.image_size, f"not one of {sizes}")
        )
    return problems


def add_artifact_flags(parser: argparse.ArgumentParser) -> None:
    """Where the artifacts go, the weights they come from, and the machine they run on."""
    parser.add_argument(
        "--dist",
        type=Path,
        default=ROOT / "dist",
        help="the artifacts folder written (replaced file by file); ./dev upload reads it",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (Keras downloads it: needs internet), a weights .h5 file, or "
        "random:SEED (offline demos and tests only)",
    )
    parser.add_argument(
        "--arch",
        choices=sorted(PLATFORMS),
        default="x86_64",
        help="CPU of the EMR Serverless application (the stack's Architecture)",
    )
    parser.add_argument(
        "--runtime",
        choices=sorted(ARCHIVE_REQUIREMENTS),
        default="onnx",
        help="onnx: export the model, archive without TensorFlow; tensorflow: the "
        "fallback archive with TensorFlow",
    )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The exported model's size and precision, and the photos it is checked and calibrated on."""
    parser.add_argument(
        "--image-size", type=int, default=224, help="input size of the exported model, px"
    )
    parser.add_argument(
        "--photos",
        "--parity-images",
        dest="photos",
        type=Path,
        default=None,
        help="photos the export is checked on, e.g. a sample of yours (default: photos "
        "generated here)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="int8",
        help="of the exported model (int8: 1.4-1.6x the fp32 speed, gated on cosine to "
        "fp32; fp32 keeps features comparable with older runs: see docs/artifacts.md, "
        "The model's precision)",
    )
    parser.add_argument(
        "--calibration",
        "--calibration-images",
        dest="calibration",
        type=Path,
        default=None,
        help="int8: a few hundred of your own photos that set the activation ranges, e.g. "
        f"synced from raw/: {CALIBRATION_SYNC} (default: --photos; without it, generated "
        "photos, with a warning)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line, its flags in the order --help lists them."""
    parser = convention.parser(
        "python -m fruits_build.build",
        "Build the job's artifacts into dist/ (./dev package runs this).",
        "the build failed: no weights download, the export's parity or int8 check, the "
        "archive's packing or check",
    )
    add_artifact_flags(parser)
    add_model_flags(parser)
    parser.add_argument(
        "--archive",
        choices=("auto", "docker", "local", "keep"),
        default="auto",
        help="auto: Docker where it runs, else pack.py here (builds CPython 3.11 once; needs gcc)",
    )
    return parser


def archive_line(manifest: dict[str, Any]) -> str:
    """What the archive weighs, how it was built and what it runs, in one line."""
    mib = 2**20
    archive = manifest["archive"]
    return (
        f"venv {archive['bytes_before'] / mib:.0f} MiB -> {archive['bytes_after'] / mib:.0f} MiB "
        f"after slimming; archive {manifest['files'][VENV_ARCHIVE]['bytes'] / mib:.0f} MiB "
        f"({archive['builder']} build, {archive['platform']}, {manifest['runtime']}), "
        f"unpacks in {archive['unpack_seconds']} s; wheels for {archive['wheel_platform']}, "
        f"bin/python -> {archive['interpreter']}"
    )


def model_line(model: dict[str, Any]) -> str:
    """How closely the exported model matches Keras, and what int8 was calibrated on."""
    return (
        f"{MODEL_FILE}: {model['image_size']} px, opset {model['opset']}, ONNX Runtime vs "
        f"Keras max abs diff {model['parity_max_abs_diff']:.2g} on {model['parity_images']} "
        f"photos ({model['parity_source']}); {model['precision']}"
        + (
            f" calibrated on {model['calibration_images']} photos "
            f"({model['calibration_source']}), cosine to fp32 min "
            f"{model['int8_min_cosine']:.4f}"
            if model["precision"] == "int8"
            else ""
        )
    )


def report(dist: Path, manifest: dict[str, Any]) -> None:
    """Each file built, the archive and the model on stdout; the warnings again, last."""
    mib = 2**20
    for name, entry in manifest["files"].items():
        print(f"{dist / name}  {entry['bytes'] / mib:8.1f} MiB  sha256 {entry['sha256'][:16]}")
    print(archive_line(manifest))
    if manifest["model"]:
        print(model_line(manifest["model"]))
    for warning in manifest["warnings"]:
        loud(warning)


def main(argv: list[str] | None = None) -> int:
    """Refuse bad flags before dist/ is touched, then build and report."""
    args = build_parser().parse_args(argv)
    problems = flag_problems(args)
    if problems:
        return convention.refuse("; ".join(problems))
    manifest = build(
        args.dist.resolve(),
        args.weights,
        args.arch,
        args.archive,
        args.runtime,
        args.image_size,
        args.photos,
        args.precision,
        args.calibration,
    )
    report(args.dist, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
