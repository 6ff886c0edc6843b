"""Build the CPython 3.11 that the venv archive carries, so it needs no Python on the image.

EMR Serverless 7.x workers have Amazon Linux 2023's Python 3.9 and no documented 3.11
(docs/interpreter.md), so the archive brings its own interpreter, as the EMR Serverless User
Guide's recipe for other Python versions does ("Using different Python versions": build a
Python, copy it into the venv, pack). ``./environment/bin/python`` is then a file inside the
archive and finds its standard library next to itself, wherever the archive is unpacked.

The source is Debian 12's: the upstream 3.11.2 tarball and Debian's security patches to it
(every patch of Debian's series from ``FIRST_SECURITY_PATCH`` on), without Debian's layout
patches, plus this folder's ``cpython/*.patch``. Both files come from deb.debian.org (this
build machine reaches Debian's archive; python.org is not needed) and are checked by sha256.

What runs on Amazon Linux 2023 is checked after the build by ``pack.py`` (``elf.py``): every
ELF file's glibc symbol versions at most 2.34, and each library it needs in the archive or
among Amazon Linux 2023's. Built on a newer glibc, the one symbol that would need more,
``hypot@GLIBC_2.35``, is bound to its older version by a header forced into every compile.

    python -m fruits_build.cpython [--cache DIR] [--jobs N]     # prints the built home

Needs gcc, make, patch, and the headers of OpenSSL, libffi, zlib, xz, SQLite and libuuid
(Debian: ``apt-get install build-essential libssl-dev libffi-dev zlib1g-dev liblzma-dev
libsqlite3-dev uuid-dev``; Amazon Linux 2023: ``fruits_build/Dockerfile``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fruits_contract import cli as convention

HERE = Path(__file__).resolve().parent
OWN_PATCHES = HERE / "cpython"
VERSION = "3.11.2"
SERIES = "3.11"


@dataclass(frozen=True)
class Source:
    url: str
    sha256: str

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[1]


POOL = "http://deb.debian.org/debian/pool/main/p/python3.11"  # Debian verifies by checksum
UPSTREAM = Source(
    f"{POOL}/python3.11_3.11.2.orig.tar.gz",
    "2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849",
)
DEBIAN = Source(
    f"{POOL}/python3.11_3.11.2-6+deb12u8.debian.tar.xz",
    "ece2d63c70ac0b7a401fbe6b51b0103be997c294a01a3865549be1862794ba97",
)
FIRST_SECURITY_PATCH = "CVE-2024-0450.patch"  # before it in Debian's series: Debian's layout
PREFIX = "/opt/fruits-python"  # compiled in, but never used: the interpreter finds its home
CONFIGURE = (
    f"--prefix={PREFIX}",
    "--without-ensurepip",  # pip never runs on EMR; pack.py installs with the build's pip
    "--disable-test-modules",
)
# Extension modules the job never imports whose libraries differ on Amazon Linux 2023, or
# are not among what its Python needs: left out of the archive rather than failing there.
UNSHIPPED_MODULES = {
    "_bz2": "Debian's libbz2 soname is libbz2.so.1.0, Amazon Linux's libbz2.so.1",
    "_crypt": "Debian's libcrypt.so.1; Amazon Linux 2023 has libxcrypt's libcrypt.so.2",
    "_curses": "terminal UI",
    "_curses_panel": "terminal UI",
    "readline": "interactive prompt",
    "_dbm": "dbm databases",
    "_gdbm": "dbm databases",
    "_tkinter": "GUI",
    "nis": "NIS",
    "ossaudiodev": "audio",
}
UNSHIPPED_STDLIB = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    f"config-{SERIES}-x86_64-linux-gnu",  # libpython3.11.a (50 MB) and the Makefile
    f"config-{SERIES}-aarch64-linux-gnu",
)
# glibc 2.35 gave hypot a new version; its 2.2.5 (x86_64) / 2.17 (aarch64) one still exists.
OLD_SYMBOLS = {"x86_64": {"hypot": "GLIBC_2.2.5"}, "aarch64": {"hypot": "GLIBC_2.17"}}
NEWEST_GLIBC = (2, 34)  # Amazon Linux 2023


class BuildError(RuntimeError):
    """The interpreter could not be built; nothing is left in the cache."""


def glibc_version() -> tuple[int, int]:
    """The build machine's glibc, which decides whether symbols must be pinned down."""
    name, version = platform.libc_ver()
    if name != "glibc":
        raise BuildError(f"this build needs a glibc system, found {name or 'none'}")
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def symbol_pins(machine: str, glibc: tuple[int, int]) -> str:
    """A C header binding newer-versioned symbols to what Amazon Linux 2023's glibc has."""
    if glibc <= NEWEST_GLIBC:
        return ""
    return "".join(
        f'__asm__(".symver {symbol},{symbol}@{version}");\n'
        for symbol, version in OLD_SYMBOLS[machine].items()
    )


def build_key(machine: str, glibc: tuple[int, int]) -> str:
    """Names a build by everything that goes into it, so a change rebuilds it."""
    digest = hashlib.sha256()
    for part in (UPSTREAM.sha256, DEBIAN.sha256, FIRST_SECURITY_PATCH, *CONFIGURE, machine):
        digest.update(part.encode() + b"\0")
    digest.update(symbol_pins(machine, glibc).encode())
    digest.update(repr(sorted(UNSHIPPED_MODULES)).encode() + repr(UNSHIPPED_STDLIB).encode())
    for patch in sorted(OWN_PATCHES.glob("*.patch")):
        digest.update(patch.read_bytes())
    digest.update(Path(__file__).read_bytes())  # how it is built, trimmed and checked
    return f"cpython-{VERSION}-{machine}-{digest.hexdigest()[:12]}"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fruits-featurize"


def fetch(source: Source, folder: Path) -> Path:
    """The file, downloaded once into ``folder`` and refused if its sha256 differs."""
    path = folder / source.name
    if not path.is_file():
        partial = path.with_name(f"{path.name}.{os.getpid()}.part")  # builds may run at once
        with urllib.request.urlopen(source.url, timeout=120) as response:
            partial.write_bytes(response.read())
        partial.replace(path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != source.sha256:
        path.unlink()
        raise BuildError(f"{source.url}: sha256 {actual}, expected {source.sha256}")
    return path


def security_patches(series: str) -> list[str]:
    """Debian's patches from the first security fix on, in the series' order."""
    names = [line.strip() for line in series.splitlines() if line.strip()]
    if FIRST_SECURITY_PATCH not in names:
        raise BuildError(f"{FIRST_SECURITY_PATCH} is not in Debian's patch series")
    return names[names.index(FIRST_SECURITY_PATCH) :]


def _run(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("ab") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise BuildError(f"{' '.join(command[:2])} failed in {cwd}:\n" + "\n".join(tail))


def prepare_source(downloads: Path, work: Path) -> Path:
    """Upstream source with Debian's security patches and ours applied."""
    with tarfile.open(fetch(UPSTREAM, downloads)) as packed:
        packed.extractall(work, filter="data")
    with tarfile.open(fetch(DEBIAN, downloads)) as packed:
        packed.extractall(work, filter="data")
    source = work / f"Python-{VERSION}"
    patches = work / "debian" / "patches"
    chosen = [patches / n for n in security_patches((patches / "series").read_text())]
    for patch in [*chosen, *sorted(OWN_PATCHES.glob("*.patch"))]:
        _run(["patch", "-p1", "--forward", "-i", str(patch)], source, work / "patch.log")
    return source


def trim(home: Path) -> None:
    """What the archive does not carry: installers, tests, GUIs and the modules above."""
    stdlib = home / "lib" / f"python{SERIES}"
    for name in UNSHIPPED_STDLIB:
        shutil.rmtree(stdlib / name, ignore_errors=True)
    for module in UNSHIPPED_MODULES:
        for found in (stdlib / "lib-dynload").glob(f"{module}.cpython-*.so"):
            found.unlink()
    for found in (stdlib / "lib-dynload").glob("*_failed.so"):
        found.unlink()
    for cache in list(stdlib.rglob("__pycache__")):
        shutil.rmtree(cache)
    for extra in ("include", "share", "lib/pkgconfig"):
        shutil.rmtree(home / extra, ignore_errors=True)
    for program in (home / "bin").iterdir():
        if program.name != f"python{SERIES}":
            program.unlink()
    (home / "lib" / f"libpython{SERIES}.a").unlink(missing_ok=True)


def check_built(home: Path) -> None:
    """The modules the job needs must have been built: a missing header skips one quietly."""
    python = home / "bin" / f"python{SERIES}"
    needed = "import ssl, ctypes, lzma, zlib, sqlite3, uuid, pyexpat, xml.etree.ElementTree"
    done = subprocess.run(
        [str(python), "-I", "-c", needed], capture_output=True, text=True, env={"PATH": ""}
    )
    if done.returncode != 0:
        raise BuildError(
            f"the built interpreter cannot {needed!r} (a -dev package missing?): "
            + done.stderr.strip().splitlines()[-1]
        )


def build(cache: Path | None = None, jobs: int | None = None) -> Path:
    """The interpreter's home (``bin/python3.11``, ``lib/python3.11``), built once per key."""
    machine = platform.machine()
    if machine not in OLD_SYMBOLS:
        raise BuildError(f"no build for {machine}: x86_64 or aarch64")
    glibc = glibc_version()
    cache = cache or default_cache()
    home = cache / build_key(machine, glibc)
    if (home / "bin" / f"python{SERIES}").is_file():
        return home
    (cache / "downloads").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cpython-", dir=cache) as scratch:
        work = Path(scratch)
        source = prepare_source(cache / "downloads", work)
        header = work / "glibc_pins.h"
        header.write_text(symbol_pins(machine, glibc))
        # CFLAGS_NODIST: used for this build only, not recorded in sysconfig, so a C extension
        # built later against the archive's Python is not pointed at this deleted header.
        env = {**os.environ, "CFLAGS_NODIST": f"-include {header}"}
        log = work / "build.log"
        _run(["./configure", *CONFIGURE], source, log, env)
        _run(["make", f"-j{jobs or os.cpu_count() or 1}"], source, log, env)
        _run(["make", "install", f"DESTDIR={work / 'stage'}"], source, log, env)
        built = work / "stage" / PREFIX.lstrip("/")
        trim(built)
        check_built(built)
        try:
            built.rename(home)
        except OSError:  # another build of the same key finished first: the same bytes
            if not (home / "bin" / f"python{SERIES}").is_file():
                raise
    return home


def main(argv: list[str] | None = None) -> int:
    parser = convention.parser(
        "python -m fruits_build.cpython",
        __doc__.splitlines()[0] + " Prints the built home's path.",
        failed="the download, a checksum or the build failed (nothing is cached)",
    )
    parser.add_argument(
        "--cache", type=Path, help=f"where builds are kept (default: {default_cache()})"
    )
    parser.add_argument("--jobs", type=int, help="make -j (default: every CPU)")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        return convention.refuse(convention.flag_error("--jobs", args.jobs, "at least 1"))
    try:
        print(build(args.cache, args.jobs))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return convention.EXIT_FAILED
    return convention.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
