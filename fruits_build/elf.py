"""What an ELF file needs from the system it is loaded on: its CPU, libraries and symbol versions.

The archive carries its own interpreter and wheels, so what can still fail on an EMR worker
is a library that Amazon Linux 2023 lacks, or a symbol version newer than its libraries have
(``version `GLIBC_2.35' not found``). Both are read from the file itself (the System V ABI's
dynamic section and GNU version-needs section), by ``pack.py`` after the build and by
``upload.py`` before anything is sent. Standard library only: both run where pip may not.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

MAGIC = b"\x7fELF"
ELFCLASS64 = 2
LITTLE_ENDIAN = 1
SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1
MACHINES = {62: "x86_64", 183: "aarch64"}

# What Amazon Linux 2023 provides, by soname, and the newest symbol version of each namespace
# its packages define (AL2023 user guide, "Core toolchain packages": glibc 2.34, gcc 11;
# release notes, "Amazon Linux 2023 RPM packages": openssl 3.0.8, libffi 3.4.4, zlib 1.2.11,
# xz 5.2.5, util-linux 2.37, sqlite 3.40). Its python3.9 needs all of the libraries below,
# so they are on every image that has the Python the EMR Serverless images document.
SYSTEM_LIBRARIES = frozenset(
    {
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libutil.so.1",
        "libresolv.so.2",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "libgcc_s.so.1",
        "libstdc++.so.6",
        "libz.so.1",
        "liblzma.so.5",
        "libffi.so.8",
        "libssl.so.3",
        "libcrypto.so.3",
        "libsqlite3.so.0",
        "libuuid.so.1",
    }
)
NEWEST_VERSIONS = {
    "GLIBC": (2, 34),
    "GLIBCXX": (3, 4, 29),
    "CXXABI": (1, 3, 13),
    "GCC": (11,),
    "OPENSSL": (3, 0, 0),
    "LIBFFI_BASE": (8, 0),
    "LIBFFI_CLOSURE": (8, 0),
    "ZLIB": (1, 2, 11),
    "XZ": (5, 2),
    "UUID": (2, 31),
}
VERSION_NAME = re.compile(r"^([A-Z][A-Z_]*?)_(\d+(?:\.\d+)*)$")
# Version names that are not NAMESPACE_N.N but that Amazon Linux 2023's libraries define.
KNOWN_ODD_VERSIONS = frozenset({"XZ_5.1.2alpha"})


class NotElf(ValueError):
    """The bytes are not a 64-bit little-endian ELF file (the only kind EMR's CPUs load), or
    one whose needs cannot be read from its sections."""


@dataclass(frozen=True)
class ElfNeeds:
    machine: str
    needed: tuple[str, ...]  # DT_NEEDED sonames
    versions: dict[str, frozenset[str]] = field(default_factory=dict)  # soname -> versions


def is_elf(data: bytes) -> bool:
    return data[:4] == MAGIC


def _string(table: bytes, offset: int) -> str:
    return table[offset : table.index(b"\0", offset)].decode()


def read(data: bytes) -> ElfNeeds:
    """The CPU, needed libraries and needed symbol versions of one ELF file."""
    if not is_elf(data) or data[4] != ELFCLASS64 or data[5] != LITTLE_ENDIAN:
        raise NotElf("not a 64-bit little-endian ELF file")
    (machine,) = struct.unpack_from("<H", data, 18)
    (shoff,) = struct.unpack_from("<Q", data, 40)
    shentsize, shnum = struct.unpack_from("<HH", data, 58)
    if not shnum:
        raise NotElf("no section headers: what it needs cannot be read (stripped with sstrip?)")
    try:
        sections = [
            struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
        ]
    except struct.error:
        raise NotElf("truncated: its section headers are past its end") from None

    def contents(index: int) -> bytes:
        _, _, _, _, offset, size, *_ = sections[index]
        return data[offset : offset + size]

    needed: list[str] = []
    versions: dict[str, set[str]] = {}
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind == SHT_DYNAMIC:
            strings = contents(link)
            for at in range(offset, offset + size, entsize or 16):
                tag, value = struct.unpack_from("<qQ", data, at)
                if tag == DT_NEEDED:
                    needed.append(_string(strings, value))
        elif kind == SHT_GNU_VERNEED:
            strings = contents(link)
            at = offset
            while True:
                _, count, file_name, aux, following = struct.unpack_from("<HHIII", data, at)
                names = versions.setdefault(_string(strings, file_name), set())
                entry = at + aux
                for _ in range(count):
                    _, _, _, name, next_aux = struct.unpack_from("<IHHII", data, entry)
                    names.add(_string(strings, name))
                    entry += next_aux
                if not following:
                    break
                at += following
    return ElfNeeds(
        machine=MACHINES.get(machine, f"e_machine {machine}"),
        needed=tuple(needed),
        versions={soname: frozenset(names) for soname, names in versions.items()},
    )


def _version(name: str) -> tuple[str, tuple[int, ...]] | None:
    match = VERSION_NAME.match(name)
    if match is None:
        return None
    return match[1], tuple(int(part) for part in match[2].split("."))


def system_problems(needs: ElfNeeds, carried: set[str]) -> list[str]:
    """What this file needs that Amazon Linux 2023 lacks; libraries in ``carried`` (sonames
    the archive holds, found through the wheels' ``$ORIGIN`` rpaths) are the archive's own."""
    problems = [
        f"needs {soname}, which Amazon Linux 2023 does not have"
        for soname in needs.needed
        if soname not in carried and soname not in SYSTEM_LIBRARIES
    ]
    for soname, names in sorted(needs.versions.items()):
        if soname in carried:
            continue
        for name in sorted(names):
            parsed = _version(name)
            if parsed is None:
                if name not in KNOWN_ODD_VERSIONS:
                    problems.append(f"needs {name} from {soname}, a version nobody checked")
                continue
            namespace, number = parsed
            newest = NEWEST_VERSIONS.get(namespace)
            if newest is None:
                problems.append(f"needs {name} from {soname}, a version nobody checked")
            elif number > newest:
                shown = ".".join(map(str, newest))
                problems.append(
                    f"needs {name} from {soname}; Amazon Linux 2023 has {namespace} {shown}"
                )
    return problems
