"""Pack the job's Python environment into the archive EMR Serverless unpacks as ``./environment``.

The one packing script: ``packaging/Dockerfile`` runs it on Amazon Linux 2023 and
``packaging/build.py`` runs it on the build machine, so both pack the same way:

1. a venv made from ``--python`` (default ``/usr/bin/python3.11``, Amazon Linux 2023's
   python3.11, which the preflight proves is on the EMR Serverless image: docs/interpreter.md),
   so that ``bin/python`` is a link to that path;
2. the pinned requirements, as binary wheels for the target platform (``manylinux_2_34``:
   Amazon Linux 2023's glibc), whatever the build machine's own glibc;
3. slimmed (``slim.py``);
4. packed by venv-pack without ``--python-prefix``, which would rewrite ``/usr/bin/python3.11``
   into ``/usr/bin/python3.113.11`` (string replacement, jcrist/venv-pack#14);
5. checked: every ``bin/python*`` in the archive must resolve to exactly ``/usr/bin/python3.11``
   (``/usr/bin/python3`` is 3.9 on Amazon Linux 2023; ``/usr/local/bin/python3.11`` is not there)
   and ``pyvenv.cfg`` must name ``/usr/bin`` as home. Otherwise the archive is deleted and the
   build fails: on EMR it would fail every run with ``Cannot run program
   "./environment/bin/python": error=2``.

    python packaging/pack.py --requirements requirements/job.txt requirements/onnx.txt \\
        --output dist/pyspark_venv.tar.gz [--arch x86_64|arm64] [--python /usr/bin/python3.11] \\
        [--work build/archive] [--report slim.json]

Runs with an interpreter that has venv-pack and pip (requirements/packaging.txt).
"""

from __future__ import annotations

import argparse
import json
import posixpath
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slim import slim  # a sibling script, found through the line above

# The interpreter every bin/python* of the archive must link to, exactly. No AWS page found says
# the EMR Serverless 7.9/7.10 image has it (docs/interpreter.md, with what was searched): AWS
# documents "Python 3.9, 3.11" for EMR on EC2 7.1+ (ReleaseGuide emr-710-release), the EMR
# Serverless 7.9.0 page lists only Spark 3.5.5, Hive 3.1.3 and Tez 0.10.2, and aws-samples'
# custom_python_version README says "EMR Serverless 7.x uses Python 3.9", its Python 3.11
# recipe being a custom image that runs `dnf install -y python3.11`.
# So this is Amazon Linux 2023's python3.11 package path, and the preflight job run proves it is
# on the real application before the first backfill. /usr/bin/python3 is 3.9 there.
EMR_PYTHON = "/usr/bin/python3.11"
PYTHON_VERSION = "3.11"
GLIBC_MINOR = 34  # Amazon Linux 2023 has glibc 2.34: wheels for it and older glibcs run there
OLDEST_GLIBC_MINOR = 17  # manylinux2014
WHEEL_ARCH = {"x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}
LEGACY_MANYLINUX = {
    "x86_64": ("manylinux2014", "manylinux2010", "manylinux1"),
    "aarch64": ("manylinux2014",),
}
MAX_LINK_HOPS = 16


class PackError(RuntimeError):
    """The archive would not run on EMR; nothing is left at the output path."""


@dataclass(frozen=True)
class LinkCheck:
    """How each ``bin/python*`` of an archive resolves, and what is wrong with it."""

    resolved: dict[str, str]  # member name -> final target (absolute path, or a member)
    problems: list[str]


def wheel_platforms(arch: str) -> list[str]:
    """The pip platform tags a wheel may have to run on EMR's workers for ``arch``.

    pip does not widen ``--platform manylinux_2_34_x86_64`` to older glibcs by itself, so
    every tag from glibc 2.34 down to manylinux2014 is named.
    """
    try:
        machine = WHEEL_ARCH[arch]
    except KeyError:
        raise PackError(f"--arch {arch!r}: one of {', '.join(sorted(WHEEL_ARCH))}") from None
    tags = [
        f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, OLDEST_GLIBC_MINOR - 1, -1)
    ]
    return tags + [f"{legacy}_{machine}" for legacy in LEGACY_MANYLINUX[machine]]


def _resolve(members: dict[str, tarfile.TarInfo], name: str) -> str:
    """Follow links inside the archive; an absolute target outside it ends the walk."""
    current = name
    for _ in range(MAX_LINK_HOPS):
        member = members.get(current)
        if member is None or not member.issym():
            return current
        target = member.linkname
        if target.startswith("/"):
            return target
        current = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
    return f"{current} (link loop)"


WRONG_TARGETS = {
    "/usr/bin/python3": "on Amazon Linux 2023 (EMR 7.x) that is Python 3.9, which cannot import "
    "the archive's cp311 wheels",
    "/usr/bin/python": "on Amazon Linux 2023 (EMR 7.x) that is Python 3.9, or nothing",
}


def _why(target: str) -> str:
    """What a link to ``target`` does on an EMR Serverless worker, for the pack error."""
    if target in WRONG_TARGETS:
        return WRONG_TARGETS[target]
    if target.startswith("/"):
        return (
            f"{EMR_PYTHON} is the one path expected on an EMR Serverless worker "
            "(docs/interpreter.md); where another is missing, every run fails with 'Cannot run "
            'program "./environment/bin/python": error=2\''
        )
    if target.endswith("(link loop)"):
        return "the links go round in a loop"
    return "no such file in the archive"


def check_python_links(archive: Path, interpreter: str = EMR_PYTHON) -> LinkCheck:
    """Every ``bin/python*`` must end at ``interpreter``: EMR runs ``./environment/bin/python``."""
    with tarfile.open(archive) as packed:
        members = {posixpath.normpath(m.name): m for m in packed.getmembers()}
        config = packed.extractfile(members["pyvenv.cfg"]) if "pyvenv.cfg" in members else None
        pyvenv = config.read().decode() if config else ""
    pythons = sorted(
        name
        for name in members
        if posixpath.dirname(name) == "bin" and posixpath.basename(name).startswith("python")
    )
    resolved = {name: _resolve(members, name) for name in pythons}
    problems = []
    if "bin/python" not in resolved:
        problems.append("no bin/python in the archive")
    for name, target in resolved.items():
        if target in members:
            problems.append(f"{name} is a file in the archive, not a link to {interpreter}")
        elif target != interpreter:
            problems.append(f"{name} resolves to {target}, not {interpreter}: {_why(target)}")
    homes = [
        value.strip()
        for key, _, value in (line.partition("=") for line in pyvenv.splitlines())
        if key.strip() == "home"
    ]
    expected_home = posixpath.dirname(interpreter)
    if homes != [expected_home]:
        problems.append(f"pyvenv.cfg home is {homes or 'missing'}, not {expected_home}")
    return LinkCheck(resolved=resolved, problems=problems)


def make_venv(python: str, venv: Path) -> Path:
    """A venv whose ``bin/python`` links to ``python``; returns its site-packages."""
    if not Path(python).is_file():
        raise PackError(
            f"--python {python}: no such interpreter on this machine. The archive must link to "
            f"{EMR_PYTHON} (Amazon Linux 2023's python3.11): build on a machine that has it "
            "(Debian 12, Amazon Linux 2023) or with Docker (packaging/Dockerfile)"
        )
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob(f"lib/python{PYTHON_VERSION}/site-packages")
    return site


def install(site: Path, requirements: list[Path], platforms: list[str]) -> None:
    """The pinned requirements as wheels for EMR's platform, never built from source here."""
    files = [arg for path in requirements for arg in ("-r", str(path))]
    platform_args = [arg for tag in platforms for arg in ("--platform", tag)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-cache-dir",
            "--no-warn-conflicts",  # with --target, pip compares against its own environment
            "--only-binary=:all:",
            *platform_args,
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            "--abi",
            f"cp{PYTHON_VERSION.replace('.', '')}",
            "--target",
            str(site),
            *files,
        ],
        check=True,
    )


def pack(
    requirements: list[Path],
    output: Path,
    arch: str = "x86_64",
    python: str = EMR_PYTHON,
    work: Path | None = None,
) -> dict[str, object]:
    """Build, slim, pack and check; returns the slimming report and what was checked."""
    import venv_pack

    platforms = wheel_platforms(arch)
    work = work or output.parent / "pack-work"
    site = make_venv(python, work / "venv")
    install(site, requirements, platforms)
    report = slim(work / "venv")
    output.unlink(missing_ok=True)
    venv_pack.pack(prefix=str(work / "venv"), output=str(output), force=True)
    output.chmod(0o644)  # venv-pack writes through mkstemp (0600)
    checked = check_python_links(output)
    if checked.problems:
        output.unlink()
        raise PackError(
            "the archive would fail on EMR (./environment/bin/python must run "
            f"{EMR_PYTHON}): " + "; ".join(checked.problems)
        )
    return {
        **report,
        "interpreter": EMR_PYTHON,
        "python_links": checked.resolved,
        "wheel_platform": platforms[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", type=Path, nargs="+", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--arch", default="x86_64", choices=sorted(WHEEL_ARCH))
    parser.add_argument("--python", default=EMR_PYTHON, help="the interpreter the venv links to")
    parser.add_argument("--work", type=Path, help="scratch folder (default: next to --output)")
    parser.add_argument("--report", type=Path, help="write what was packed and checked as JSON")
    args = parser.parse_args(argv)
    try:
        result = pack(args.requirements, args.output, args.arch, args.python, args.work)
    except PackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    mib = 2**20
    print(
        f"packed {args.output}: venv {result['bytes_before'] / mib:.0f} -> "
        f"{result['bytes_after'] / mib:.0f} MiB, wheels for {result['wheel_platform']}, "
        f"bin/python -> {EMR_PYTHON}",
        file=sys.stderr,
    )
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
