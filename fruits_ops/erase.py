"""Erase photos by hand: ``python -m fruits_ops.erase --stack NAME --keys FILE``.

For a GDPR erasure request, or deletions whose notifications were lost: the listed photos'
rows are removed from every features and errors partition by one erase run, started through
the same manifest, receipt and request path as the Lambda's (docs/erasure.md). With
``--delete-objects`` the objects are deleted from ``raw/`` first; their deletion events then
also reach the trigger, whose own erase run finds nothing left to remove.

Settings come from their flags (``--raw``, ``--manifests``), else the Lambda's environment
variable names, else the stack's outputs (``--stack``), as for the backfill
(``fruits_ops.resolver``). Every flag and every line of the
keys file is checked before anything is deleted, written or started.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from fruits_contract import IMAGE_SUFFIXES, is_image_name, now_iso
from fruits_contract import cli as convention
from fruits_contract.cli import say
from fruits_ops import resolver
from lambda_trigger import settings as config
from lambda_trigger.events import OBJECT_REMOVED, S3Object
from lambda_trigger.manifest import Manifest, build_erasure_manifest
from lambda_trigger.submit import submit_batch

EXIT_CONFIG_ERROR = convention.EXIT_USAGE
# flag -> setting: where the photos are, and where the erasure manifest and its receipt go.
ERASE_SETTINGS = {"raw": config.RAW_URI, "manifests": config.MANIFESTS_URI}
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys per call
# The event name the command's erasure entries stand for (a deletion it made or vouches for).
COMMAND_EVENT = f"{OBJECT_REMOVED}Delete"
VERSIONED = ("Enabled", "Suspended")
VERSIONS_REMAIN = (
    "the bucket is versioned: each deleted photo's earlier versions remain as noncurrent "
    "versions until the lifecycle rule expires them (template.yaml: old-versions-and-uploads, "
    "30 days after the deletion); delete them by version id to erase them now (docs/erasure.md)"
)


class KeysError(convention.Refusal):
    """A line of --keys cannot be erased; raised before any side effect (exit 2)."""


@dataclass(frozen=True)
class Request:
    """What one invocation erases, and when (the command's time)."""

    keys: list[str]  # full keys under the raw prefix, decoded, in file order, no duplicates
    erased_at: str  # ISO-8601 UTC, milliseconds, as S3 writes eventTime


def build_parser() -> argparse.ArgumentParser:
    parser = convention.parser(
        "python -m fruits_ops.erase",
        "Remove photos' rows from every features and errors partition (GDPR erasure) "
        "with one EMR Serverless erase run; optionally delete the photos from raw/ first.",
        None,
    )
    parser.add_argument(
        "--keys",
        required=True,
        type=Path,
        help="text file, one photo per line: a key relative to the raw prefix "
        "(Kiwi/a.jpg) or a full s3://bucket/raw/... URI; blank lines are skipped",
    )
    resolver.add_stack_flags(parser)
    parser.add_argument(
        "--delete-objects",
        action="store_true",
        help="delete the objects from raw/ first (a versioned bucket keeps earlier versions)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the erasure manifest; delete, write and start nothing",
    )
    resolver.add_setting_flags(parser, ERASE_SETTINGS)
    return parser


def read_keys(path: Path) -> list[str]:
    """The file's lines as written (only the line break removed: a key may end in a space)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise KeysError(f"--keys: no file at {path}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise KeysError(f"--keys: cannot read {path}: {error}") from error
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if not any(line.strip() for line in lines):
        raise KeysError(f"--keys: {path} names no photo")
    return lines


def resolve_keys(lines: list[str], raw: config.S3Location) -> list[str]:
    """Full keys under ``raw`` for each non-blank line; every bad line is reported at once."""
    keys: list[str] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.startswith("s3://"):
            try:
                location = config.parse_s3_location(line)
            except ValueError:
                problems.append(f"line {number}: {line!r} is not an s3://bucket/key URI")
                continue
            if location.bucket != raw.bucket:
                problems.append(f"line {number}: bucket {location.bucket!r} is not {raw.bucket!r}")
                continue
            key = line.removeprefix(f"s3://{raw.bucket}/")
        elif line.startswith("/"):
            problems.append(f"line {number}: {line!r} starts with '/' (write it relative to raw/)")
            continue
        else:
            key = raw.key(line)
        if not key.startswith(raw.prefix):
            problems.append(f"line {number}: {key!r} is not under {raw.uri}")
        elif not is_image_name(key):
            suffixes = ", ".join(IMAGE_SUFFIXES)
            problems.append(f"line {number}: {key!r} is not an image ({suffixes})")
        elif key not in keys:
            keys.append(key)
    if problems:
        raise KeysError("--keys: " + "; ".join(problems))
    return keys


def erasure_manifest(bucket: str, request: Request) -> Manifest:
    """The same manifest the Lambda writes for deletions, with the command's time."""
    return build_erasure_manifest(
        S3Object(bucket, key, None, None, "", COMMAND_EVENT, event_time=request.erased_at)
        for key in request.keys
    )


def delete_objects(s3: Any, bucket: str, keys: list[str]) -> list[str]:
    """Delete the current versions; returns the problems S3 reported, one per key."""
    problems = []
    for start in range(0, len(keys), DELETE_BATCH):
        chunk = keys[start : start + DELETE_BATCH]
        answer = s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}
        )
        problems += [
            f"{e['Key']}: {e.get('Code')} {e.get('Message')}" for e in answer.get("Errors", [])
        ]
    return problems


def still_present(s3: Any, bucket: str, keys: list[str]) -> list[str]:
    """The keys that still have a current object (their rows would come back at a backfill)."""
    present = []
    for key in keys:
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                continue
            raise
        present.append(key)
    return present


def is_versioned(s3: Any, bucket: str) -> bool:
    return s3.get_bucket_versioning(Bucket=bucket).get("Status") in VERSIONED


def settings_and_keys(
    lines: list[str], values: dict[str, str], sources: config.Sources
) -> tuple[config.Settings, list[str]]:
    """The settings and the keys they resolve against, both checked before anything is said."""
    settings = config.from_environment(values, sources)
    return settings, resolve_keys(lines, settings.raw)


@convention.refusing
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = convention.checked_args(build_parser(), argv)
    lines = read_keys(args.keys)
    # every setting the Lambda's Settings hold: the erase run is started as the trigger does
    session, (settings, keys) = resolver.open_settings(
        args, env, partial(settings_and_keys, lines), ERASE_SETTINGS, config.FIELDS
    )
    bucket = settings.raw.bucket
    if args.dry_run:
        print(erasure_manifest(bucket, Request(keys, now_iso())).body.decode(), end="")
        return 0

    s3 = session.client("s3", config=config.CLIENT_CONFIG)
    if args.delete_objects:
        problems = delete_objects(s3, bucket, keys)
        for problem in problems:
            say(f"not deleted: {problem}")
        say(f"deleted {len(keys) - len(problems)} of {len(keys)} objects from {settings.raw.uri}")
        if is_versioned(s3, bucket):
            say(f"note: {VERSIONS_REMAIN}")
    else:
        for key in still_present(s3, bucket, keys):
            say(
                f"warning: s3://{bucket}/{key} is still in raw/: a backfill or reconcile would "
                "featurize it again (pass --delete-objects to delete it)"
            )
    request = Request(keys, now_iso())  # after the deletions: every earlier row goes
    manifest = erasure_manifest(bucket, request)
    submission = submit_batch(s3, session.client("emr-serverless"), settings, manifest)
    print(submission.job_run_id)
    state = "already submitted" if submission.already_submitted else "started"
    say(
        f"erase run {submission.run_id} {state} for {manifest.images} photos "
        f"(erased_at {request.erased_at}): {submission.manifest_uri}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
