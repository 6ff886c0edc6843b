"""fruits_build/: the archive EMR unpacks, built here from the same requirements as the Dockerfile,
runs the job with nothing but its own Python; the upload transfers only what changed."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emr_serverless_job.model import file_sha256, read_onnx_model
from fruits_build import build, pack, slim, upload
from fruits_build import elf as elf_module
from fruits_contract import (
    ARTIFACTS_MANIFEST,
    ENTRY_POINT,
    JOB_PACKAGE,
    MODEL_FILE,
    VENV_ARCHIVE,
    WEIGHTS_FILE,
    logs,
)
from tests.conftest import REAL_SAMPLE, REAL_WEIGHTS, ROOT, build_dist, needs_real_data


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[re.sub(r"\[.*\]", "", name).lower()] = version
    return found


# --- one packing script, in Docker and here -------------------------------------------------

PACK_MODULE = "fruits_build.pack"  # as the Dockerfile and build.archive_locally run it


def dockerfile_pack_command(runtime: str) -> list[str]:
    """The pack.py command fruits_build/Dockerfile runs, with its build argument filled in."""
    dockerfile = (build.DOCKERFILE).read_text().replace("\\\n", " ")
    (run,) = [
        line for line in dockerfile.splitlines() if line.startswith("RUN ") and PACK_MODULE in line
    ]
    command = shlex.split(run.split("&&")[-1].replace("${RUNTIME}", runtime))
    return command[command.index(PACK_MODULE) + 1 :]


def replay_dockerfile_copies(workdir: Path) -> None:
    """The build stage's COPY steps (``COPY src... dest``, relative to WORKDIR), into workdir;
    ``COPY --from=`` only exports the result."""
    dockerfile = build.DOCKERFILE.read_text()
    for line in re.findall(r"^COPY (?!--)(.+)$", dockerfile, re.M):
        *sources, dest = line.split()
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():  # Docker copies a folder's contents, not the folder itself
                shutil.copytree(origin, workdir / dest, dirs_exist_ok=True)
                continue
            target = workdir / dest / (origin.name if dest.endswith("/") else "")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)


@pytest.mark.parametrize("runtime", sorted(build.ARCHIVE_REQUIREMENTS))
def test_docker_and_the_local_build_run_pack_py_with_the_same_requirements(runtime):
    command = dockerfile_pack_command(runtime)
    given = build.pack_arguments(runtime)
    assert command[: len(given)] == given
    typed = pack.build_parser().parse_args(
        [arg.replace("$(uname -m)", "x86_64") for arg in command]
    )  # a flag pack.py no longer has stops the image build: argparse exits 2 here
    assert typed.archive == Path("/out/pyspark_venv.tar.gz")
    assert "--python-home" not in command  # the image builds its CPython as the local build does
    dockerfile = (build.DOCKERFILE).read_text()
    assert "FROM public.ecr.aws/amazonlinux/amazonlinux:2023 AS build" in dockerfile
    copied = re.findall(r"^COPY (requirements/.*) requirements/$", dockerfile, re.M)[0].split()
    assert set(copied) == {*build.ARCHIVE_REQUIREMENTS[runtime], build.PACKER_REQUIREMENTS} | {
        p for files in build.ARCHIVE_REQUIREMENTS.values() for p in files
    }
    assert sys.version_info[:2] == (3, 11)  # the tests run EMR's Python minor


def test_the_dockerfiles_pack_step_runs_on_what_its_copy_steps_bring(tmp_path):
    """In the image only the COPY'd files exist, beside a plain Python 3.11 with no checkout on
    its path: the pack module must import there (a sibling it needs but the Dockerfile does not
    copy fails here, as it would fail the image build)."""
    system_python = Path("/usr/bin/python3.11")
    if not system_python.exists():
        pytest.skip("no /usr/bin/python3.11 (the interpreter the image's packer venv is made from)")
    replay_dockerfile_copies(tmp_path)
    result = subprocess.run(
        [str(system_python), "-m", PACK_MODULE, "--help"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--requirements" in result.stdout


def test_wheels_are_chosen_for_amazon_linux_2023s_glibc_and_older():
    tags = pack.wheel_platforms("x86_64")
    assert tags[0] == "manylinux_2_34_x86_64" and "manylinux_2_28_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and not any("2_35" in t for t in tags)
    assert pack.wheel_platforms("arm64")[0] == "manylinux_2_34_aarch64"
    with pytest.raises(pack.PackError, match="--arch 'sparc'"):
        pack.wheel_platforms("sparc")


def tar_with(path: Path, links: dict[str, str], files: dict[str, bytes]) -> Path:
    """An archive laid out like a packed venv: symlinks and files at the given names."""
    with tarfile.open(path, "w:gz") as archive:
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def elf(machine: int, sections: int = 1) -> bytes:
    """A 64-bit little-endian shared object built for ``machine`` (e_machine) that needs
    nothing: its header and ``sections`` empty (SHT_NULL) section headers right after it."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + (3).to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(4)
    header += bytes(16) + (64 if sections else 0).to_bytes(8, "little")  # e_entry, e_phoff, e_shoff
    header += bytes(10) + (64).to_bytes(2, "little") + sections.to_bytes(2, "little") + bytes(2)
    return header + bytes(64 * sections)


X86_64, AARCH64 = 62, 183
GOOD_LINKS = {"bin/python": "python3.11", "bin/python3": "python3.11"}
HOME = {"bin/python3.11": elf(X86_64), "lib/python3.11/os.py": b"# stdlib\n"}
DEBIAN_PYTHON = Path("/usr/bin/python3.11")  # Debian 12's: needs hypot@GLIBC_2.35
DEBIAN_BZ2 = Path("/usr/lib/python3.11/lib-dynload/_bz2.cpython-311-x86_64-linux-gnu.so")


@pytest.mark.parametrize(
    ("links", "files", "problem"),
    [
        (GOOD_LINKS, HOME, None),
        (
            {**GOOD_LINKS, "bin/python3.11": "/usr/bin/python3.113.11"},
            {"lib/python3.11/os.py": b""},
            "bin/python resolves to /usr/bin/python3.113.11, not the archive's bin/python3.11",
        ),
        (
            {**GOOD_LINKS, "bin/python3.11": "/usr/bin/python3.11"},
            {"lib/python3.11/os.py": b""},
            "bin/python resolves to /usr/bin/python3.11, not the archive's bin/python3.11: the "
            "EMR Serverless 7.x image documents Python 3.9 only",
        ),
        (
            {**GOOD_LINKS, "bin/python3.11": "/usr/bin/python3"},
            {"lib/python3.11/os.py": b""},
            "bin/python resolves to /usr/bin/python3, not the archive's bin/python3.11: on Amazon "
            "Linux 2023 (EMR 7.x) that is Python 3.9",
        ),
        (
            {**GOOD_LINKS, "bin/python3.11": "/usr/local/bin/python3.11"},
            {"lib/python3.11/os.py": b""},
            "bin/python resolves to /usr/local/bin/python3.11, not the archive's bin/python3.11: "
            "a path outside the archive",
        ),
        ({"bin/python3": "python3.11"}, HOME, "no bin/python in the archive"),
        ({"bin/python": "python"}, HOME, "link loop"),
        (GOOD_LINKS, {"bin/python3.11": elf(X86_64)}, "no lib/python3.11/os.py"),
        (
            {**GOOD_LINKS, "lib/libz.so.1": "/usr/lib/x86_64-linux-gnu/libz.so.1"},
            HOME,
            "lib/libz.so.1 links outside the archive",
        ),
        (GOOD_LINKS, {**HOME, "lib/x.so": elf(AARCH64)}, "lib/x.so is built for aarch64"),
    ],
    ids=[
        "good",
        "venv-pack-python-prefix",
        "usr-bin-python3.11",
        "usr-bin-python3",
        "usr-local-bin",
        "no-python",
        "loop",
        "no-stdlib",
        "link-out",
        "other-cpu",
    ],
)
def test_archive_check(tmp_path, links, files, problem):
    checked = pack.check_archive(tar_with(tmp_path / "a.tar.gz", links, files))
    if problem is None:
        assert checked.problems == []
        assert set(checked.resolved.values()) == {"bin/python3.11"}
    else:
        assert any(problem in p for p in checked.problems), checked.problems


@pytest.mark.skipif(
    not (DEBIAN_PYTHON.is_file() and DEBIAN_BZ2.is_file()), reason="no Debian 12 python3.11 here"
)
def test_archive_check_refuses_a_binary_amazon_linux_2023_cannot_load(tmp_path):
    """Real ELF files of this machine's Debian 12: its python3.11 needs glibc 2.35 (AL2023 has
    2.34), its _bz2 module Debian's soname libbz2.so.1.0 (Amazon Linux's is libbz2.so.1)."""
    files = {
        "bin/python3.11": DEBIAN_PYTHON.read_bytes(),
        "lib/python3.11/os.py": b"",
        "lib/python3.11/lib-dynload/_bz2.so": DEBIAN_BZ2.read_bytes(),
    }
    problems = pack.check_archive(tar_with(tmp_path / "d.tar.gz", GOOD_LINKS, files)).problems
    assert "bin/python3.11 needs GLIBC_2.35 from libm.so.6; Amazon Linux 2023 has GLIBC 2.34" in (
        problems
    )
    assert any(
        "_bz2.so needs libbz2.so.1.0, which Amazon Linux 2023 does not" in p for p in problems
    )


def test_an_elf_file_that_cannot_be_read_fails_the_check_instead_of_passing(tmp_path):
    """A file stripped of its section headers, or cut short, would need nothing by this
    reader's account: it is refused, not waved through."""
    stripped = {**HOME, "lib/a.so": elf(X86_64, sections=0), "lib/b.so": elf(X86_64)[:70]}
    problems = pack.check_archive(tar_with(tmp_path / "s.tar.gz", GOOD_LINKS, stripped)).problems
    assert any(
        "lib/a.so is an ELF file that cannot be checked: no section headers" in p for p in problems
    ), problems
    assert any("lib/b.so is an ELF file that cannot be checked" in p for p in problems), problems


def test_a_version_name_the_check_cannot_compare_is_a_problem():
    odd = elf_module.ElfNeeds("x86_64", ("libc.so.6",), {"libc.so.6": frozenset({"GLIBC_PRIVATE"})})
    assert elf_module.system_problems(odd, set()) == [
        "needs GLIBC_PRIVATE from libc.so.6, a version nobody checked"
    ]
    xz = elf_module.ElfNeeds(
        "x86_64", ("liblzma.so.5",), {"liblzma.so.5": frozenset({"XZ_5.1.2alpha"})}
    )
    assert elf_module.system_problems(xz, set()) == []


def test_libraries_the_archive_carries_are_its_own_not_the_systems(tmp_path):
    """A wheel's bundled library (auditwheel's ``numpy.libs/``) is found through its rpath:
    needing it is fine; needing the same name from nowhere is not."""
    compiled = ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / "numpy.libs"
    libraries = sorted(compiled.glob("libscipy_openblas*.so")) if compiled.is_dir() else []
    if not libraries:
        pytest.skip("no numpy.libs in this venv")
    openblas = libraries[0]
    (gfortran,) = compiled.glob("libgfortran*")
    (quadmath,) = compiled.glob("libquadmath*")
    alone = {**HOME, f"lib/numpy.libs/{openblas.name}": openblas.read_bytes()}
    problems = pack.check_archive(tar_with(tmp_path / "a.tar.gz", GOOD_LINKS, alone)).problems
    assert any(
        f"needs {gfortran.name}, which Amazon Linux 2023 does not have" in p for p in problems
    )
    carried = {
        **alone,
        f"lib/numpy.libs/{gfortran.name}": gfortran.read_bytes(),
        f"lib/numpy.libs/{quadmath.name}": quadmath.read_bytes(),
    }
    assert pack.check_archive(tar_with(tmp_path / "b.tar.gz", GOOD_LINKS, carried)).problems == []


def test_pack_refuses_an_interpreter_that_is_a_link_out_and_leaves_no_archive(
    tmp_path, monkeypatch
):
    """The false green of issue 20: an archive whose python is the machine's /usr/bin/python3
    (3.11 on Debian, 3.9 on Amazon Linux 2023) passed the e2e here. pack.py packs such a home
    for real (copy, slimming, tar; no wheels, to stay cheap) and refuses it."""
    monkeypatch.setattr(pack, "install", lambda site, requirements, platforms: None)
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (home / "lib" / "python3.11").mkdir(parents=True)
    (home / "lib" / "python3.11" / "os.py").write_text("")
    (home / "bin" / "python3.11").symlink_to(sys.executable)
    output = tmp_path / "dist" / "pyspark_venv.tar.gz"
    with pytest.raises(pack.PackError) as refused:
        pack.pack([], output, python_home=home, work=tmp_path / "work")
    message = str(refused.value)
    assert f"bin/python resolves to {sys.executable}, not the archive's bin/python3.11" in message
    assert not output.exists()


def test_the_archive_is_written_the_same_way_twice(tmp_path):
    environment = tmp_path / "environment"
    (environment / "bin").mkdir(parents=True)
    (environment / "bin" / "python3.11").write_bytes(elf(X86_64))
    (environment / "bin" / "python").symlink_to("python3.11")
    pack.write_archive(environment, tmp_path / "a.tar.gz")
    os.utime(environment / "bin" / "python3.11", (1, 1))
    pack.write_archive(environment, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as packed:
        link = packed.getmember("bin/python")
        assert link.issym() and link.linkname == "python3.11" and link.uid == 0


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
    sources = {
        f"{package}/{p.name}"
        for package in ("emr_serverless_job", "fruits_contract")  # the contract it shares
        for p in (ROOT / package).glob("*.py")
    }
    assert names == sources


# The project's packages that never run on EMR, and the modules that moved out of the job's.
OFF_EMR_PACKAGES = (
    "fruits_readers",
    "fruits_demo",
    "fruits_build",
    "lambda_trigger",
    "emr_emulator",
)
MOVED_OUT = ("current.py", "inventory.py", "report.py", "demo.py", "synthetic.py")


def test_the_job_zip_holds_only_what_runs_on_emr(tmp_path):
    """The zip is the driver's and the workers' code and the contract: no reader tool, no demo
    and no build tool, and no module in it imports one (on EMR the zip is all the project's code
    there is, so such an import would fail the run)."""
    import ast
    import zipfile

    archive = zipfile.ZipFile(build.job_package(tmp_path / JOB_PACKAGE))
    names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"emr_serverless_job", "fruits_contract"}
    readers_and_demo = {
        p.name
        for package in ("fruits_readers", "fruits_demo")
        for p in (ROOT / package).glob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert readers_and_demo  # the packages this test keeps out are where it looks
    shipped = {Path(name).name for name in names}
    assert not shipped & (readers_and_demo | set(MOVED_OUT))
    imported = set()
    for name in names:
        for node in ast.walk(ast.parse(archive.read(name))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert not imported & set(OFF_EMR_PACKAGES)


def test_the_job_finds_its_contract_in_the_zip_alone(tmp_path):
    """On EMR the job's code is the --py-files zip and nothing else: the entry point's first
    import is the contract, and every name a shipped module takes from it must be in the zip's
    copy. Checked with the zip alone on the path (no site-packages, no checkout)."""
    package = build.job_package(tmp_path / JOB_PACKAGE)
    probe = (
        "import ast, sys, zipfile; sys.path.insert(0, sys.argv[1]);"  # -S: no site-packages
        "import fruits_contract, emr_serverless_job.main as main;"
        "assert fruits_contract.__file__.startswith(sys.argv[1]), fruits_contract.__file__;"
        "assert main.__file__.startswith(sys.argv[1]), main.__file__;"
        "assert main.is_preflight(['--preflight', 's3://b/raw/']);"
        "archive = zipfile.ZipFile(sys.argv[1]);"
        "missing = [f'{name}: {alias.name}' for name in archive.namelist()"
        " for node in ast.walk(ast.parse(archive.read(name)))"
        " if isinstance(node, ast.ImportFrom) and node.module == 'fruits_contract'"
        " for alias in node.names if not hasattr(fruits_contract, alias.name)];"
        "print(main.JVM_OPTIONS, missing)"
    )
    ran = subprocess.run(
        [sys.executable, "-S", "-B", "-c", probe, str(package)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.split(maxsplit=1) == ["-XX:TieredStopAtLevel=1", "[]\n"]


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
    result = slim.slim(venv)
    assert all(p.exists() for p in keep) and (venv / "bin" / "python").exists()
    assert not any(p.exists() for p in drop)
    assert result["bytes_after"] < result["bytes_before"]


# --- the proof: the job runs on the archive's Python alone -----------------------------------


@pytest.fixture(scope="module")
def tensorflow_dist(tmp_path_factory):
    return build_dist(tmp_path_factory.mktemp("dist-tensorflow"), "tensorflow")


@pytest.fixture(params=["onnx", "tensorflow"])
def dist(request):
    return request.getfixturevalue(f"{request.param}_dist")  # onnx: shared with test_deploy_path


@needs_real_data()
def test_manifest_lists_every_artifact_with_its_checksum_and_the_tested_versions(dist):
    manifest = json.loads((dist / ARTIFACTS_MANIFEST).read_text())
    runtime = manifest["runtime"]
    model = {MODEL_FILE} if runtime == "onnx" else set()
    assert set(manifest["files"]) == {ENTRY_POINT, JOB_PACKAGE, WEIGHTS_FILE, VENV_ARCHIVE, *model}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_sha256(dist / name)
        assert entry["bytes"] == (dist / name).stat().st_size
    archive = manifest["archive"]
    assert archive["builder"] == "local" and archive["valid_on_emr"] is True
    assert set(archive["python_links"].values()) == {"bin/python3.11"}
    assert archive["interpreter"] == "bin/python3.11" and archive["python_version"] == "3.11.2"
    assert archive["wheel_platform"] == "manylinux_2_34_x86_64"
    checked = pack.check_archive(dist / VENV_ARCHIVE)
    assert checked.problems == [] and checked.machines["x86_64"] > 100
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
        # The deployed default: int8, through the gate, calibrated on the parity photos.
        assert exported["precision"] == "int8" and exported["int8_seven_bit_convs"] == 18
        assert exported["int8_min_cosine"] >= 0.98 and exported["calibration_images"] == 100
        assert read_onnx_model(dist / MODEL_FILE).precision == "int8"


@needs_real_data()
def test_the_tensorflow_archive_runs_the_job_with_only_its_python(tensorflow_dist, tmp_path):
    """The fallback archive, laid out as EMR does: unpacked as ./environment, every Python
    process using it, the weights from dist/. (The default onnx archive runs the Lambda's and
    the backfill's very requests through emr_emulator in test_deploy_path.py.)"""
    dist, runtime = tensorflow_dist, "tensorflow"
    featurizer = ["--runtime", "tensorflow", "--weights", str(dist / WEIGHTS_FILE)]
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
    # (a line may follow Spark's console progress bar, which ends without a newline)
    built = [line for line in logs.parse(result.stderr) if line["message"] == "model_built"]
    assert built, "no worker logged model_built"
    assert {event["python"] for event in built} == {str(run / "environment" / "bin" / "python")}
    assert {event["runtime"] for event in built} == {runtime}

    # Same features as Keras in this (test) environment computes for the same images and
    # weights.
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


NUMPY_SO = "lib/python3.11/site-packages/numpy/_core/_multiarray_umath.cpython-311.so"


def small_archive(path: Path, links: dict[str, str] = GOOD_LINKS, machine: int = X86_64) -> Path:
    """An archive as pack.py leaves it, in small: the links, the interpreter, one compiled file.
    The same content gives the same bytes (gzip's timestamp fixed), as an unchanged build."""
    interpreter = {"bin/python3.11": elf(machine)} if "bin/python3.11" not in links else {}
    files = {**HOME, **interpreter, NUMPY_SO: elf(machine)}
    tar_with(path, links, {k: v for k, v in files.items() if k not in links})
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), mtime=0))
    return path


def write_manifest(folder: Path) -> None:
    """artifacts.json as build.py writes it for what is in ``folder`` now."""
    names = (ENTRY_POINT, JOB_PACKAGE, WEIGHTS_FILE, VENV_ARCHIVE)
    files = {
        name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
        for name in names
    }
    checked = {"valid_on_emr": True, "python_links": {"bin/python": "bin/python3.11"}}
    (folder / ARTIFACTS_MANIFEST).write_text(json.dumps({"files": files, "archive": checked}))


def small_dist(folder: Path, weights: bytes = b"weights", machine: int = X86_64) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / ENTRY_POINT).write_text("print('entry')\n")
    build.job_package(folder / JOB_PACKAGE)
    (folder / WEIGHTS_FILE).write_bytes(weights)
    small_archive(folder / VENV_ARCHIVE, machine=machine)
    write_manifest(folder)
    return folder


def test_upload_puts_dist_under_artifacts_and_then_transfers_nothing(stack, tmp_path, capsys):
    folder = small_dist(tmp_path / "dist")
    target = f"s3://{stack.bucket}/artifacts"
    assert upload.main(["--artifacts", target, "--dist", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "5 uploaded, 0 unchanged" in captured.out
    assert f"WEIGHTS_URI={target}/{WEIGHTS_FILE}" in captured.out
    assert "not checked against the application's Architecture" in captured.err  # no --stack
    s3 = stack.client("s3")
    for name in (ENTRY_POINT, JOB_PACKAGE, WEIGHTS_FILE, VENV_ARCHIVE, ARTIFACTS_MANIFEST):
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


@pytest.fixture
def no_s3(monkeypatch):
    """Fails the test on any S3 client: a refusal must come before anything is sent."""
    import boto3

    real = boto3.session.Session.client

    def client(self, service, *args, **kwargs):
        assert service != "s3", "upload made an S3 client before refusing"
        return real(self, service, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", client)


@pytest.mark.parametrize("target", ["/usr/bin/python3", "/usr/local/bin/python3.11"])
def test_upload_reads_the_archive_and_refuses_a_rewritten_python_link(
    stack, tmp_path, capsys, no_s3, target
):
    """The link rewritten by hand after the build, artifacts.json updated to match and still
    saying ``valid_on_emr: true``: upload opens the archive and refuses it, sending nothing."""
    folder = small_dist(tmp_path / "dist")
    small_archive(folder / VENV_ARCHIVE, {**GOOD_LINKS, "bin/python3.11": target})
    write_manifest(folder)
    assert json.loads((folder / ARTIFACTS_MANIFEST).read_text())["archive"]["valid_on_emr"] is True
    artifacts = f"s3://{stack.bucket}/artifacts"
    assert upload.main(["--artifacts", artifacts, "--dist", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"bin/python resolves to {target}, not the archive's bin/python3.11" in err
    assert "nothing uploaded" in err
    assert stack.client("s3").list_objects_v2(Bucket=stack.bucket)["KeyCount"] == 0


def test_upload_refuses_a_file_changed_since_the_manifest_listed_it(tmp_path, capsys, no_s3):
    folder = small_dist(tmp_path / "dist")
    (folder / WEIGHTS_FILE).write_bytes(b"weights swapped after the build")
    assert upload.main(["--artifacts", "s3://bucket/artifacts", "--dist", str(folder)]) == 2
    assert f"{WEIGHTS_FILE} changed since artifacts.json listed it" in capsys.readouterr().err


def test_the_archive_architecture_is_read_from_its_compiled_files(tmp_path):
    arm = small_archive(tmp_path / "arm.tar.gz", machine=AARCH64)
    assert pack.check_archive(arm, None).machines == {"aarch64": 2}
    assert pack.check_archive(small_archive(tmp_path / "x.tar.gz"), None).machines == {"x86_64": 2}
    mixed = tar_with(
        tmp_path / "mixed.tar.gz", GOOD_LINKS, {**HOME, "a.so": elf(X86_64), "b.so": elf(183)}
    )
    machines = {"X86_64": 2, "ARM64": 1}
    assert pack.check_archive(mixed, None).machines == {"x86_64": 2, "aarch64": 1}
    assert "mixes compiled files for ARM64, X86_64" in upload.archive_architecture_problem(
        machines, "X86_64"
    )
    assert upload.archive_architecture_problem({"X86_64": 3}, None) is None  # nothing to match
    assert upload.archive_architecture_problem({}, "ARM64") is None  # pure Python runs anywhere


def fake_stack(name: str, outputs: dict[str, str]) -> None:
    """A CloudFormation stack on the moto server with the outputs upload.py reads."""
    import boto3

    body = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(body))


def run_upload(*args: str) -> subprocess.CompletedProcess:
    """fruits_build/upload.py as ./dev upload runs it, against the moto server."""
    return subprocess.run(
        [sys.executable, "-m", "fruits_build.upload", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_upload_to_a_graviton_stack_refuses_the_default_x86_64_archive(stack, tmp_path):
    """What a user deploying Architecture=ARM64 meets first: ./dev package (x86_64 by
    default), then ./dev upload --stack. Refused, naming the fix, with nothing sent; the
    arm64 archive then goes up."""
    folder = small_dist(tmp_path / "dist")
    artifacts = f"s3://{stack.bucket}/artifacts"
    fake_stack("fruits", {"ArtifactsUri": artifacts, "Architecture": "ARM64"})
    refused = run_upload("--stack", "fruits", "--dist", str(folder))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "is built for X86_64 but the application's Architecture is ARM64" in refused.stderr
    assert "./dev package --arch arm64" in refused.stderr
    assert stack.client("s3").list_objects_v2(Bucket=stack.bucket)["KeyCount"] == 0

    small_dist(folder, machine=AARCH64)
    accepted = run_upload("--stack", "fruits", "--dist", str(folder))
    assert accepted.returncode == 0, accepted.stderr
    assert "5 uploaded, 0 unchanged" in accepted.stdout
    assert "warning" not in accepted.stderr
    # --architecture cannot overrule the stack, and a stack without the output is refused.
    overruled = run_upload("--stack", "fruits", "--architecture", "X86_64", "--dist", str(folder))
    assert overruled.returncode == 2 and "application is ARM64" in overruled.stderr
    fake_stack("older", {"ArtifactsUri": artifacts})
    older = run_upload("--stack", "older", "--dist", str(folder))
    assert older.returncode == 2 and "no Architecture output" in older.stderr


def test_upload_refuses_a_stack_that_cannot_be_read_naming_the_flag(stack, tmp_path, no_s3):
    """GIVEN a stack name that does not exist WHEN uploading THEN exit 2 naming --stack, nothing
    sent (it used to end in botocore's traceback, exit 1)."""
    folder = small_dist(tmp_path / "dist")
    refused = run_upload("--stack", "no-such-stack", "--dist", str(folder))
    assert refused.returncode == 2, refused.stderr
    assert "configuration error: --stack no-such-stack:" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert stack.client("s3").list_objects_v2(Bucket=stack.bucket)["KeyCount"] == 0


def test_upload_takes_the_flag_then_the_environment_then_the_stack(stack, tmp_path, capsys):
    """The operator commands' one precedence (fruits_ops.resolver), for the artifacts prefix:
    the flag; else a variable, refused where it contradicts --stack's output (a stale shell
    would upload to another stage); else the stack's. The Architecture comes from the stack,
    and each origin is said."""
    folder = small_dist(tmp_path / "dist")
    base = f"s3://{stack.bucket}"
    fake_stack("fruits", {"ArtifactsUri": f"{base}/from-stack", "Architecture": "X86_64"})
    argv = ["--stack", "fruits", "--dist", str(folder)]
    stale = {"ARTIFACTS_URI": f"{base}/from-env"}
    assert upload.main([*argv, "--artifacts", f"{base}/from-flag"], env=stale) == 0
    captured = capsys.readouterr()
    assert f"ARTIFACTS_URI={base}/from-flag" in captured.out
    assert "  ARCHITECTURE=X86_64  (stack fruits output Architecture)" in captured.err
    assert upload.main(argv, env=stale) == 2
    assert f"$ARTIFACTS_URI={base}/from-env but stack fruits output ArtifactsUri is " in (
        capsys.readouterr().err
    )
    assert upload.main(argv, env={"ARTIFACTS_URI": f"{base}/from-stack"}) == 0
    assert f"  ARTIFACTS_URI={base}/from-stack  ($ARTIFACTS_URI)" in capsys.readouterr().err
    assert upload.main(argv, env={}) == 0
    assert f"ARTIFACTS_URI={base}/from-stack" in capsys.readouterr().out


def test_upload_refuses_a_dist_without_a_manifest(tmp_path, capsys):
    assert upload.main(["--artifacts", "s3://b/artifacts", "--dist", str(tmp_path)]) == 2
    assert "no artifacts.json; run ./dev package first" in capsys.readouterr().err


# --- the photos the export is checked and calibrated on, without ../shared -----------------


def test_photos_for_parity_and_calibration_come_from_the_user_or_are_generated(tmp_path):
    mine, theirs = tmp_path / "mine", tmp_path / "calibration"
    mine.mkdir()
    theirs.mkdir()
    given = build.choose_photos(mine, theirs, "int8", tmp_path / "a")
    assert (given.parity, given.calibration, given.generated_calibration) == (mine, theirs, False)
    # --photos alone calibrates on them too: they are the user's, not generated.
    photos_only = build.choose_photos(mine, None, "int8", tmp_path / "b")
    assert photos_only.calibration == mine and photos_only.calibration_source == f"--photos: {mine}"
    generated = build.choose_photos(None, None, "int8", tmp_path / "c")
    parity = sorted(generated.parity.rglob("*.jpg"))
    calibration = sorted(generated.calibration.rglob("*.jpg"))
    assert (len(parity), len(calibration), generated.generated_calibration) == (36, 96, True)
    assert not {p.relative_to(generated.parity) for p in parity} & {
        p.relative_to(generated.calibration) for p in calibration
    }  # calibrated on other photos than those it is checked on
    fp32 = build.choose_photos(None, None, "fp32", tmp_path / "d")
    assert fp32.calibration is None and not fp32.generated_calibration
    with pytest.raises(SystemExit, match="--calibration: no folder at"):
        build.choose_photos(None, tmp_path / "absent", "int8", tmp_path / "e")
    assert "96 synthetic" in build.calibration_warning(96)
    assert "aws s3 sync s3://BUCKET/raw/" in build.calibration_warning(96)
