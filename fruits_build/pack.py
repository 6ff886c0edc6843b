"""Pack the job's Python environment into the archive EMR Serverless unpacks as ``./environment``.

The one packing script: ``fruits_build/Dockerfile`` runs it on Amazon Linux 2023 and
``fruits_build/build.py`` runs it on the build machine, so both pack the same way:

1. CPython 3.11 built by ``cpython.py`` (or ``--python-home``) copied in: ``bin/python3.11``
   is a file of the archive and finds its standard library beside it, wherever the archive is
   unpacked. The EMR Serverless 7.x image has Python 3.9 and no documented 3.11
   (docs/interpreter.md), so the archive needs no Python of the image's;
2. the pinned requirements, as binary wheels for the target platform (``manylinux_2_34``:
   Amazon Linux 2023's glibc), whatever the build machine's own glibc;
3. slimmed (``slim.py``), then written as a reproducible tar.gz (sorted, owner root, fixed
   times), links kept as links;
4. checked (``check_archive``): ``bin/python`` and every ``bin/python*`` must resolve, inside
   the archive, to its interpreter, no link may leave the archive, the standard library must
   be beside the interpreter, and every ELF file must be built for ``--arch`` and need only
   libraries and symbol versions that the archive or Amazon Linux 2023 has (``elf.py``).
   Otherwise the archive is deleted and the build fails: on EMR it would fail every run with
   ``Cannot run program "./environment/bin/python": error=2`` or at its first import.

    python -m fruits_build.pack --requirements requirements/job.txt requirements/onnx.txt \\
        --archive dist/pyspark_venv.tar.gz [--arch x86_64|arm64] [--python-home DIR] \\
        [--work build/archive] [--report slim.json]

Runs with an interpreter that has pip; the archive holds neither pip nor this script.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import posixpath
import shutil
import struct
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from fruits_build import cpython, elf
from fruits_build.slim import slim
from fruits_contract import cli as convention

PYTHON_VERSION = cpython.SERIES
INTERPRETER = f"bin/python{PYTHON_VERSION}"  # the archive's own, a file
LANDMARK = f"lib/python{PYTHON_VERSION}/os.py"  # how the interpreter finds its home
PYTHON_LINKS = {"bin/python": f"python{PYTHON_VERSION}", "bin/python3": f"python{PYTHON_VERSION}"}
GLIBC_MINOR = 34  # Amazon Linux 2023 has glibc 2.34: wheels for it and older glibcs run there
OLDEST_GLIBC_MINOR = 17  # manylinux2014
WHEEL_ARCH = {"x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}
LEGACY_MANYLINUX = {
    "x86_64": ("manylinux2014", "manylinux2010", "manylinux1"),
    "aarch64": ("manylinux2014",),
}
MAX_LINK_HOPS = 16
ARCHIVE_MTIME = 0  # every member's time, so the same inputs give the same bytes
SHOWN_PROBLEMS = 12


class PackError(RuntimeError):
    """The archive would not run on EMR; nothing is left at the output path."""


@dataclass(frozen=True)
class ArchiveCheck:
    """How each ``bin/python*`` of an archive resolves, and what is wrong with the archive."""

    resolved: dict[str, str]  # member name -> final target (a member, or an outside path)
    problems: list[str]
    machines: dict[str, int] = field(default_factory=dict)  # ELF files per CPU


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
    "/usr/bin/python3.11": "the EMR Serverless 7.x image documents Python 3.9 only "
    "(docs/interpreter.md)",
}


def _why(target: str) -> str:
    """What a link to ``target`` does on an EMR Serverless worker, for the pack error."""
    if target in WRONG_TARGETS:
        return WRONG_TARGETS[target]
    if target.startswith("/"):
        return (
            "a path outside the archive, which an EMR Serverless worker need not have; where it "
            'is missing every run fails with \'Cannot run program "./environment/bin/python": '
            "error=2'"
        )
    if target.endswith("(link loop)"):
        return "the links go round in a loop"
    return "no such file in the archive"


def _elf_problems(
    packed: tarfile.TarFile, members: dict[str, tarfile.TarInfo], machine: str | None
) -> tuple[dict[str, int], list[str]]:
    """Each ELF file's CPU and what it needs from the system, against Amazon Linux 2023."""
    files = {}
    unreadable: list[str] = []
    for name, member in members.items():
        if member.isfile() and member.size >= 64:
            data = packed.extractfile(member).read()
            if elf.is_elf(data):
                try:
                    files[name] = elf.read(data)
                except (elf.NotElf, struct.error, ValueError) as error:
                    unreadable.append(f"{name} is an ELF file that cannot be checked: {error}")
    carried = {posixpath.basename(name) for name in files}
    machines: dict[str, int] = {}
    problems = unreadable
    for name, needs in sorted(files.items()):
        machines[needs.machine] = machines.get(needs.machine, 0) + 1
        if machine and needs.machine != machine:
            problems.append(f"{name} is built for {needs.machine}, not {machine}")
        problems += [f"{name} {problem}" for problem in elf.system_problems(needs, carried)]
    return machines, problems


def check_archive(archive: Path, arch: str | None = "x86_64") -> ArchiveCheck:
    """Would ``./environment/bin/python`` start and load every compiled file on an EMR worker
    of ``arch`` (None: any one CPU, named in ``machines``), given only Amazon Linux 2023 and
    the archive? Read from the archive itself."""
    machine = WHEEL_ARCH.get(arch, arch) if arch else None
    with tarfile.open(archive) as packed:
        members = {posixpath.normpath(m.name): m for m in packed.getmembers()}
        members.pop(".", None)
        machines, elf_problems = _elf_problems(packed, members, machine)
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
        if target != INTERPRETER:
            problems.append(
                f"{name} resolves to {target}, not the archive's {INTERPRETER}: {_why(target)}"
            )
    interpreter = members.get(INTERPRETER)
    if interpreter is None or not interpreter.isfile():
        problems.append(f"no interpreter {INTERPRETER} (a file) in the archive")
    if LANDMARK not in members:
        problems.append(f"no {LANDMARK}: the interpreter would not find its standard library")
    for name, member in sorted(members.items()):
        if member.issym() and name not in resolved:
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            if member.linkname.startswith("/") or target.startswith(".."):
                problems.append(f"{name} links outside the archive, to {member.linkname}")
    if len(elf_problems) > SHOWN_PROBLEMS:
        hidden = len(elf_problems) - SHOWN_PROBLEMS
        elf_problems = [*elf_problems[:SHOWN_PROBLEMS], f"and {hidden} more"]
    return ArchiveCheck(resolved=resolved, problems=problems + elf_problems, machines=machines)


def carry_interpreter(home: Path, environment: Path) -> Path:
    """The built CPython copied in as the environment's own; returns its site-packages."""
    if not (home / INTERPRETER).is_file() or not (home / LANDMARK).is_file():
        raise PackError(f"--python-home {home}: no {INTERPRETER} and {LANDMARK} there")
    if environment.exists():
        shutil.rmtree(environment)
    shutil.copytree(home, environment, symlinks=True)
    for link, target in PYTHON_LINKS.items():
        (environment / link).unlink(missing_ok=True)
        (environment / link).symlink_to(target)
    site = environment / "lib" / f"python{PYTHON_VERSION}" / "site-packages"
    site.mkdir(exist_ok=True)
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


def _normalised(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mtime = ARCHIVE_MTIME
    return member


def write_archive(environment: Path, output: Path) -> None:
    """A tar.gz of the folder's contents, byte-for-byte the same for the same files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as packed:
        for root, folders, files in os.walk(environment):
            folders.sort()
            for name in sorted(folders + files):
                path = Path(root) / name
                arcname = path.relative_to(environment).as_posix()
                info = _normalised(packed.gettarinfo(str(path), arcname))
                if info.isfile():
                    with path.open("rb") as body:
                        packed.addfile(info, body)
                else:
                    packed.addfile(info)
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        output.open("wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=ARCHIVE_MTIME, compresslevel=6
        ) as compressed,
    ):
        compressed.write(buffer.getvalue())
    output.chmod(0o644)


def pack(
    requirements: list[Path],
    output: Path,
    arch: str = "x86_64",
    python_home: Path | None = None,
    work: Path | None = None,
) -> dict[str, object]:
    """Build, slim, pack and check; returns the slimming report and what was checked."""
    platforms = wheel_platforms(arch)
    work = work or output.parent / "pack-work"
    if python_home is None:
        try:
            python_home = cpython.build()
        except cpython.BuildError as error:
            raise PackError(f"building CPython: {error}") from None
    environment = work / "environment"
    site = carry_interpreter(python_home, environment)
    install(site, requirements, platforms)
    report = slim(environment)
    output.unlink(missing_ok=True)
    write_archive(environment, output)
    checked = check_archive(output, arch)
    if checked.problems:
        output.unlink()
        raise PackError(
            "the archive would fail on EMR (./environment/bin/python must run the archive's "
            f"{INTERPRETER} and load every library): " + "; ".join(checked.problems)
        )
    return {
        **report,
        "interpreter": INTERPRETER,
        "python_version": cpython.VERSION,
        "python_source": [cpython.UPSTREAM.url, cpython.DEBIAN.url],
        "python_links": checked.resolved,
        "elf_files": checked.machines,
        "wheel_platform": platforms[0],
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line the Dockerfile and ``build.archive_locally`` type (tests parse theirs)."""
    parser = convention.parser(
        "python -m fruits_build.pack",
        __doc__.splitlines()[0] + " Prints what went in on one line.",
        failed="the archive could not be packed, or would not run on EMR (a failed check "
        "leaves no archive)",
    )
    parser.add_argument(
        "--requirements",
        type=Path,
        nargs="+",
        required=True,
        help="the requirement files installed into the archive (requirements/job.txt and the "
        "runtime's)",
    )
    parser.add_argument(
        "--archive", type=Path, required=True, help="the .tar.gz written (replaced whole)"
    )
    parser.add_argument(
        "--arch",
        default="x86_64",
        choices=sorted(WHEEL_ARCH),
        help="the CPU of the EMR application the archive runs on",
    )
    parser.add_argument(
        "--python-home",
        type=Path,
        help="a built CPython 3.11 to carry (default: build it with fruits_build/cpython.py)",
    )
    parser.add_argument("--work", type=Path, help="scratch folder (default: next to --archive)")
    parser.add_argument(
        "--report", type=Path, help="write what was packed and checked as JSON (default: none)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = [
        convention.flag_error("--requirements", path, "no such file")
        for path in args.requirements
        if not path.is_file()
    ]
    if args.python_home is not None and not args.python_home.is_dir():
        problems.append(convention.flag_error("--python-home", args.python_home, "no such folder"))
    if problems:
        return convention.refuse("; ".join(problems))
    try:
        result = pack(args.requirements, args.archive, args.arch, args.python_home, args.work)
    except PackError as error:
        print(f"error: {error}", file=sys.stderr)
        return convention.EXIT_FAILED
    mib = 2**20
    print(
        f"packed {args.archive}: environment {result['bytes_before'] / mib:.0f} -> "
        f"{result['bytes_after'] / mib:.0f} MiB, wheels for {result['wheel_platform']}, "
        f"bin/python -> the archive's {INTERPRETER} (CPython {cpython.VERSION})"
    )
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2))
    return convention.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
