"""Shrink a venv before it is packed: every executor downloads and unpacks the archive.

Removes what the job never loads at run time: test suites, bytecode caches, C/C++ headers,
static libraries, the installers (pip, setuptools, wheel) and console scripts other than
the interpreter (also those ``pip install --target`` leaves in ``site-packages/bin``).
fruits_build/pack.py runs it in the Dockerfile and in the local build alike, so the archive
proved here is the archive shipped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TEST_DIRS = {"tests"}  # not "testing": absl.testing is imported by TensorFlow itself
CACHE_DIRS = {"__pycache__"}
HEADER_DIRS = {"include"}
HEADER_SUFFIXES = {".h", ".hpp", ".hh", ".hxx", ".cuh", ".inc", ".pxd", ".pyx", ".pyi"}
STATIC_SUFFIXES = {".a", ".pyc"}
INSTALLERS = (
    "pip",
    "setuptools",
    "wheel",
    "_distutils_hack",
    "pkg_resources",
    "distutils-precedence.pth",
)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def slim(venv: Path) -> dict[str, int]:
    """Remove the parts above in place; returns bytes before and after, and files removed."""
    before = tree_bytes(venv)
    removed = 0
    (site,) = venv.glob("lib/python3.*/site-packages")
    if (site / "bin").is_dir():
        shutil.rmtree(site / "bin")
        removed += 1
    for name in INSTALLERS:
        for path in [*site.glob(name), *site.glob(f"{name}-*.dist-info")]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed += 1
    for path in sorted(site.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if not path.exists() or path.is_symlink():
            continue
        if path.is_dir():
            if path.name in CACHE_DIRS | HEADER_DIRS | TEST_DIRS:
                shutil.rmtree(path)
                removed += 1
        elif path.suffix in HEADER_SUFFIXES | STATIC_SUFFIXES:
            path.unlink()
            removed += 1
    for script in (venv / "bin").iterdir():
        if not script.name.startswith(("python", "activate")):
            script.unlink()
            removed += 1
    for folder in (venv / "include", venv / "share"):
        if folder.exists():
            shutil.rmtree(folder)
    return {
        "bytes_before": before,
        "bytes_after": tree_bytes(venv),
        "entries_removed": removed,
        "packages": installed(site),
    }


def installed(site: Path) -> dict[str, str]:
    """Distribution name -> version, from the dist-info folders (pip itself is gone by now)."""
    found = {}
    for metadata in site.glob("*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1)
            for line in metadata.read_text(errors="replace").splitlines()[:10]
            if ": " in line
        )
        if "Name" in fields and "Version" in fields:
            found[fields["Name"].lower().replace("_", "-")] = fields["Version"]
    return dict(sorted(found.items()))
