"""Upload ``dist/`` under the stack's artifacts prefix; only what changed is transferred.

    python -m fruits_build.upload --stack NAME [--region R] [--dist dist]
    python -m fruits_build.upload --artifacts s3://BUCKET/artifacts [--architecture X86_64|ARM64]

Each object carries its sha256 as metadata; a file whose object already has the same
sha256 is left alone. Before anything is sent, each file must still have the sha256
``artifacts.json`` lists, and the venv archive is opened and checked again, whatever
``artifacts.json`` says of it, with fruits_build/pack.py's own check: its ``bin/python*`` must
resolve to the archive's own interpreter (a link rewritten by hand fails every job run with
``Cannot run program "./environment/bin/python"``), and every ELF file must need only what
the archive or Amazon Linux 2023 has; and the CPU they are built for (read from their ELF
headers) must be the application's ``Architecture`` (the stack's output, or
``--architecture``): x86_64 wheels on a Graviton application fail at the first import.
Prints the URIs the Lambda's configuration and the backfill use. The artifacts prefix and the
Architecture come from their flags, else ``$ARTIFACTS_URI`` / ``$ARCHITECTURE``, else the stack's
outputs (``--stack``), a variable that contradicts the stack being refused: the operator
commands' one resolver, ``fruits_ops.resolver``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emr_serverless_job.model import file_sha256
from fruits_build import pack
from fruits_contract import ARTIFACTS_MANIFEST, VENV_ARCHIVE, WEIGHTS_FILE, logs
from fruits_contract import cli as convention
from fruits_ops import resolver
from lambda_trigger import settings as config
from lambda_trigger.settings import ARTIFACTS_URI, parse_s3_location

ROOT = Path(__file__).resolve().parent.parent

SHA_KEY = "sha256"  # x-amz-meta-sha256
ARCHITECTURE = "ARCHITECTURE"  # the stack output Architecture, as the resolver names it
# flag dest -> setting, read by the operator commands' resolver (flag > environment > stack).
UPLOAD_SETTINGS = {"artifacts": ARTIFACTS_URI, "architecture": ARCHITECTURE}
# elf.py's CPU names -> the application's Architecture value.
ARCHITECTURES = {"x86_64": "X86_64", "aarch64": "ARM64"}
PACK_ARCH = {"X86_64": "x86_64", "ARM64": "arm64"}  # ./dev package --arch


def archive_architecture_problem(machines: dict[str, int], expected: str | None) -> str | None:
    """Why an archive with these compiled files cannot run on an ``expected`` application."""
    if len(machines) > 1:
        return f"{VENV_ARCHIVE} mixes compiled files for {', '.join(sorted(machines))}"
    (built,) = machines or {None: 0}
    if expected is None or built is None or built == expected:
        return None
    return (
        f"{VENV_ARCHIVE} is built for {built} but the application's Architecture is {expected}: "
        "every job run would fail at its first import. Rebuild it with "
        f"./dev package --arch {PACK_ARCH.get(expected, expected.lower())} (or deploy the stack "
        f"with Architecture={built})"
    )


def remote_sha256(s3: Any, bucket: str, key: str) -> str | None:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head.get("Metadata", {}).get(SHA_KEY)


def dist_problems(dist: Path, manifest: dict[str, Any], architecture: str | None) -> list[str]:
    """Why ``dist`` must not be uploaded, read from the files themselves: each must still be
    what ``artifacts.json`` lists, and the venv archive must pass pack.py's archive check and
    match ``architecture`` (None: not known here)."""
    problems = []
    for name, entry in manifest.get("files", {}).items():
        path = dist / name
        if not path.is_file():
            problems.append(f"{name} is listed in {ARTIFACTS_MANIFEST} but not in {dist}")
        elif file_sha256(path) != entry.get("sha256"):
            problems.append(
                f"{name} changed since {ARTIFACTS_MANIFEST} listed it (its sha256 differs): "
                "rebuild with ./dev package"
            )
    archive = dist / VENV_ARCHIVE
    if VENV_ARCHIVE not in manifest.get("files", {}) or not archive.is_file():
        return problems
    try:
        checked = pack.check_archive(archive, None)
    except (tarfile.TarError, OSError, EOFError) as error:
        return [*problems, f"{VENV_ARCHIVE} cannot be read as a tar.gz archive: {error}"]
    problems += [
        f"{VENV_ARCHIVE}: {problem} (every job run would fail: ./environment/bin/python must "
        "run and load every library on Amazon Linux 2023); rebuild it with ./dev package"
        for problem in checked.problems
    ]
    machines = {ARCHITECTURES.get(cpu, cpu): count for cpu, count in checked.machines.items()}
    architecture_problem = archive_architecture_problem(machines, architecture)
    if architecture_problem:
        problems.append(architecture_problem)
    return problems


def upload(s3: Any, dist: Path, artifacts_uri: str) -> tuple[list[str], list[str]]:
    """Returns (uploaded, unchanged) file names; the manifest goes last, once files are in."""
    location = parse_s3_location(artifacts_uri)
    manifest_path = dist / ARTIFACTS_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    entries = dict(manifest["files"])
    entries[ARTIFACTS_MANIFEST] = {"sha256": file_sha256(manifest_path)}
    uploaded, unchanged = [], []
    for name, entry in entries.items():
        key = location.key(name)
        if remote_sha256(s3, location.bucket, key) == entry["sha256"]:
            unchanged.append(name)
            continue
        s3.upload_file(
            str(dist / name),
            location.bucket,
            key,
            ExtraArgs={"Metadata": {SHA_KEY: entry["sha256"]}},
        )
        uploaded.append(name)
    return uploaded, unchanged


def build_parser() -> argparse.ArgumentParser:
    parser = convention.parser(
        "python -m fruits_build.upload",
        __doc__.splitlines()[0] + " (./dev upload runs this).",
        None,
    )
    resolver.add_stack_flags(parser)
    parser.add_argument(
        "--artifacts",
        metavar="URI",
        help="s3://BUCKET/artifacts, where the artifacts go "
        + resolver.origins_help(ARTIFACTS_URI),
    )
    parser.add_argument(
        "--dist",
        type=Path,
        default=ROOT / "dist",
        help="the artifacts folder ./dev package built (its --dist)",
    )
    parser.add_argument(
        "--architecture",
        choices=sorted(PACK_ARCH),
        help="the application's Architecture "
        + resolver.origins_help(ARCHITECTURE, stack_output=True)
        + "; a flag or variable that contradicts the stack is refused; none: not checked, "
        "with a warning",
    )
    return parser


def architecture_of(resolved: resolver.Resolved, stack: str | None) -> str | None:
    """The application's Architecture, checked: the stack's output is what was deployed, so a
    flag or variable may stand in for it (no --stack, an older stack) but never contradict it."""
    given, origin = resolved.values.get(ARCHITECTURE), resolved.origins.get(ARCHITECTURE, "")
    if given is not None and given not in PACK_ARCH:
        choices = ", ".join(sorted(PACK_ARCH))
        raise config.SettingsError(f"{ARCHITECTURE}: {given!r} is not one of {choices}")
    deployed = resolved.stack.get(ARCHITECTURE)
    if deployed and given and deployed != given:
        raise config.SettingsError(
            convention.flag_error(origin, given, f"stack {stack}'s application is {deployed}")
            if origin.startswith("--")
            else f"{origin} {given}: stack {stack}'s application is {deployed}"
        )
    if stack and given is None:
        raise config.SettingsError(
            f"stack {stack} has no Architecture output (deployed from an older "
            "template): update it with sam deploy, or pass --architecture"
        )
    return given


def target(
    session: Any, args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[str, str | None]:
    """Where the artifacts go and the application's Architecture, from the resolver; raises
    ``config.SettingsError`` naming the flag, variable or stack output at fault."""
    resolved = resolver.resolve_settings(session, args, env, UPLOAD_SETTINGS)
    problems, artifacts, architecture = [], "", None
    try:
        values = config.read_settings(resolved.values, (ARTIFACTS_URI,), resolved.sources)
        artifacts = values[ARTIFACTS_URI].uri.rstrip("/")
    except config.SettingsError as error:
        problems.append(str(error))
    try:
        architecture = architecture_of(resolved, args.stack)
    except config.SettingsError as error:
        problems.append(str(error))
    if problems:  # all of them at once
        raise config.SettingsError("; ".join(problems))
    resolver.say_origins(resolved, convention.say)
    return artifacts, architecture


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if env is None else env
    if not (args.dist / ARTIFACTS_MANIFEST).is_file():
        return convention.refuse(
            convention.flag_error(
                "--dist", args.dist, f"no {ARTIFACTS_MANIFEST}; run ./dev package first"
            )
        )
    import boto3

    session = boto3.session.Session(region_name=args.region)
    try:
        artifacts, architecture = target(session, args, env)
    except config.SettingsError as error:
        return convention.refuse(str(error))
    manifest = json.loads((args.dist / ARTIFACTS_MANIFEST).read_text())
    problems = dist_problems(args.dist, manifest, architecture)
    for problem in problems:
        print(f"{convention.USAGE_PREFIX}{problem}", file=sys.stderr)
    if problems:
        print("nothing uploaded", file=sys.stderr)
        return convention.EXIT_USAGE
    if architecture is None:
        convention.say(
            f"{VENV_ARCHIVE} was not checked against the application's Architecture "
            "(pass --stack, or --architecture X86_64|ARM64)",
            logs.WARNING,
        )
    uploaded, unchanged = upload(session.client("s3"), args.dist, artifacts)
    for name in uploaded:
        print(f"uploaded   {artifacts}/{name}")
    for name in unchanged:
        print(f"unchanged  {artifacts}/{name}")
    print(f"{len(uploaded)} uploaded, {len(unchanged)} unchanged")
    print(f"ARTIFACTS_URI={artifacts}")
    print(f"WEIGHTS_URI={artifacts}/{WEIGHTS_FILE}")
    return convention.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
