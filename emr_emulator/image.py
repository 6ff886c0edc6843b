"""The EMR Serverless 7.x image's interpreters, so that a run that leans on one fails here too.

This machine has its own Pythons (Debian 12's ``/usr/bin/python3`` is 3.11), so a venv archive
whose ``bin/python`` links to a path outside the archive would run here and not there. The
emulator therefore follows ``PYSPARK_PYTHON``/``PYSPARK_DRIVER_PYTHON`` itself, through the
links inside the unpacked archive, and answers for the first path that leaves it as the image
would: ``IMAGE_PYTHONS`` are the interpreters the image is documented to have
(aws-samples/emr-serverless-samples, ``examples/pyspark/custom_python_version``: "EMR
Serverless 7.x uses Python 3.9"; its Python 3.11 recipe is a custom image that installs it),
and any other path is missing, which Spark reports as ``error=2``.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_PYTHONS = {"/usr/bin/python3": "3.9", "/usr/bin/python3.9": "3.9"}
ARCHIVE_PYTHON_VERSION = "3.11"  # what the archive's packages are built for (cp311)
MAX_LINK_HOPS = 16
PYTHON_VARIABLES = ("PYSPARK_DRIVER_PYTHON", "PYSPARK_PYTHON")


def _first_outside(cwd: Path, program: str) -> tuple[str, Path | None]:
    """Follow ``program`` from ``cwd`` through links while they stay under ``cwd``; returns
    the first absolute path outside (the image's to answer for), or the file reached."""
    path = Path(program) if program.startswith("/") else cwd / program
    root = cwd.resolve()
    for _ in range(MAX_LINK_HOPS):
        if not str(path.absolute()).startswith(str(root) + os.sep):
            return str(path), None
        if not path.is_symlink():
            return str(path), path
        target = os.readlink(path)
        path = Path(target) if target.startswith("/") else path.parent / target
        path = Path(os.path.normpath(path))
    return program, None


def python_problem(cwd: Path, program: str, host_pythons: tuple[str, ...] = ()) -> str | None:
    """Why ``program`` (as ``PYSPARK_PYTHON`` names it) would not run the job on the image;
    ``host_pythons`` are this machine's, vouched for by the caller (a test without an archive)."""
    shown, inside = _first_outside(cwd, program)
    if shown in host_pythons:
        return None
    missing = f'Cannot run program "{program}": error=2, No such file or directory'
    if inside is not None:
        return None if inside.is_file() else missing
    version = IMAGE_PYTHONS.get(shown)
    if version is None:
        return f"{missing} (emulated: {shown} is not on the EMR Serverless 7.x image)"
    if version != ARCHIVE_PYTHON_VERSION:
        return (
            f"ModuleNotFoundError (emulated): {program} runs {shown}, Python {version} on the "
            f"EMR Serverless 7.x image, which cannot import the archive's Python "
            f"{ARCHIVE_PYTHON_VERSION} packages"
        )
    return None


def pythons_problem(
    cwd: Path,
    driver_env: dict[str, str],
    executor_env: dict[str, str],
    host_pythons: tuple[str, ...] = (),
) -> str:
    """The first interpreter of the request that would not run, or ''."""
    for env in (driver_env, executor_env):
        for variable in PYTHON_VARIABLES:
            if variable in env:
                problem = python_problem(cwd, env[variable], host_pythons)
                if problem:
                    return f"{variable}: {problem}"
    return ""
