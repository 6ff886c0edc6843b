"""Upload ``dist/`` under the stack's artifacts prefix; only what changed is transferred.

    python packaging/upload.py --stack NAME [--region R] [--dist dist]
    python packaging/upload.py --artifacts s3://BUCKET/artifacts [--dist dist]

Each object carries its sha256 as metadata; a file whose object already has the same
sha256 is left alone. A venv archive that packaging/pack.py did not check (an older build,
``"valid_on_emr": false``) is refused: every job run would fail with it. Prints the URIs the
Lambda's configuration and the backfill use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emr_serverless_job.model import file_sha256  # noqa: E402 (root added just above)
from lambda_trigger.backfill import stack_settings  # noqa: E402
from lambda_trigger.request import VENV_ARCHIVE, WEIGHTS_FILE  # noqa: E402
from lambda_trigger.settings import ARTIFACTS_URI, parse_s3_location  # noqa: E402

MANIFEST = "artifacts.json"
SHA_KEY = "sha256"  # x-amz-meta-sha256


def remote_sha256(s3: Any, bucket: str, key: str) -> str | None:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head.get("Metadata", {}).get(SHA_KEY)


def archive_problem(manifest: dict[str, Any]) -> str | None:
    """Why the manifest's venv archive must not be shipped, or None when pack.py checked it."""
    if VENV_ARCHIVE not in manifest.get("files", {}):
        return None
    archive = manifest.get("archive", {})
    if archive.get("valid_on_emr") is not True:
        return (
            f"{VENV_ARCHIVE} was not checked by packaging/pack.py (an older build: its "
            "bin/python may not link to /usr/bin/python3.11, and every job run would fail); "
            "rebuild it with ./dev package"
        )
    return None


def upload(s3: Any, dist: Path, artifacts_uri: str) -> tuple[list[str], list[str]]:
    """Returns (uploaded, unchanged) file names; the manifest goes last, once files are in."""
    location = parse_s3_location(artifacts_uri)
    manifest_path = dist / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    entries = dict(manifest["files"])
    entries[MANIFEST] = {"sha256": file_sha256(manifest_path)}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--stack", help="read the artifacts prefix from this stack's outputs")
    target.add_argument("--artifacts", help="s3://BUCKET/artifacts")
    parser.add_argument("--region")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    if not (args.dist / MANIFEST).is_file():
        print(f"error: no {MANIFEST} in {args.dist}; run packaging/build.py first", file=sys.stderr)
        return 2
    problem = archive_problem(json.loads((args.dist / MANIFEST).read_text()))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import boto3

    session = boto3.session.Session(region_name=args.region)
    artifacts = args.artifacts
    if args.stack:
        artifacts = stack_settings(session.client("cloudformation"), args.stack)[ARTIFACTS_URI]
    try:
        parse_s3_location(artifacts)
    except ValueError as error:
        print(f"error: --artifacts: {error}", file=sys.stderr)
        return 2
    artifacts = artifacts.rstrip("/")
    uploaded, unchanged = upload(session.client("s3"), args.dist, artifacts)
    for name in uploaded:
        print(f"uploaded   {artifacts}/{name}")
    for name in unchanged:
        print(f"unchanged  {artifacts}/{name}")
    print(f"{len(uploaded)} uploaded, {len(unchanged)} unchanged")
    print(f"ARTIFACTS_URI={artifacts}")
    print(f"WEIGHTS_URI={artifacts}/{WEIGHTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
