"""emr_emulator/image.py: an interpreter outside the archive is answered for as the EMR
Serverless 7.x image would, not by this machine's own Pythons."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from emr_emulator.image import python_problem, pythons_problem

PROGRAM = "./environment/bin/python"


def environment(cwd: Path, target: str | None) -> Path:
    """``./environment/bin/python -> python3.11``, which is a file (None) or a link."""
    bin_dir = cwd / "environment" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to("python3.11")
    if target is None:
        (bin_dir / "python3.11").write_bytes(b"\x7fELF")
    else:
        (bin_dir / "python3.11").symlink_to(target)
    return cwd


def test_the_archives_own_interpreter_runs(tmp_path):
    assert python_problem(environment(tmp_path, None), PROGRAM) is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/usr/bin/python3", "runs /usr/bin/python3, Python 3.9 on the EMR Serverless 7.x image"),
        (
            "/usr/bin/python3.11",
            "error=2, No such file or directory (emulated: /usr/bin/python3.11",
        ),
        ("../../../../../../../../usr/bin/python3", "Python 3.9"),
        ("missing", 'Cannot run program "./environment/bin/python": error=2'),
        (sys.executable, "error=2"),
    ],
    ids=["python3", "python3.11", "relative-escape", "missing", "this-venv"],
)
def test_a_link_out_of_the_archive_fails_as_on_the_image(tmp_path, target, expected):
    # /usr/bin/python3 exists on this machine (Debian's 3.11): it must not stand in.
    problem = python_problem(environment(tmp_path, target), PROGRAM)
    assert problem is not None and expected in problem, problem


def test_interpreters_the_caller_vouches_for_run_and_the_first_bad_variable_is_named(tmp_path):
    cwd = environment(tmp_path, None)
    assert python_problem(cwd, sys.executable, host_pythons=(sys.executable,)) is None
    driver = {"PYSPARK_DRIVER_PYTHON": PROGRAM, "PYSPARK_PYTHON": PROGRAM}
    assert pythons_problem(cwd, driver, {"PYSPARK_PYTHON": PROGRAM}) == ""
    executors = {"PYSPARK_PYTHON": "/usr/bin/python3"}
    assert pythons_problem(cwd, driver, executors).startswith("PYSPARK_PYTHON: ModuleNotFound")
