"""Every photo accounted for: which objects in ``raw/`` have no row in ``features`` or ``errors``.

    python -m fruits_ops.reconcile --stack NAME [--since DATE] [--submit]

Lists ``raw/`` (every page; every name the job reads, ``fruits_contract.IMAGE_SUFFIXES``: ``.jpg``,
``.jpeg``, ``.png``, ``.webp``, ``.heic``, ``.heif`` in any letter case, the ``.Jpg`` the S3
notification filter misses included), reads only the ``path`` column of the ``features``
and ``errors`` tables, and prints how many objects have a feature row, an error row, or
neither. The photos with neither are written as a manifest (the Lambda's format); with
``--submit`` that manifest is started as one job run, through the same request builder and
receipts as a batch of uploads (so the watcher retries it, and a second ``--submit`` while it
runs starts nothing).

Memory stays flat in the number of objects: the listing is streamed in S3's key order and
merged against the two tables' keys, which are held as sorted Arrow string arrays (compact
buffers, not Python sets). Settings come from their flags, else the Lambda's environment
variable names, else the stack's outputs, as for the backfill (``fruits_ops.resolver``). The
missing photos' manifest is written to ``--missing-manifest`` (``--out`` until issue 22: it
still works, with a warning; ``--output`` is the output location, as in every command).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fruits_contract import ERRORS_TABLE, FEATURES_TABLE, PATH_COLUMN, is_image_name
from fruits_contract import cli as convention
from fruits_ops import resolver
from lambda_trigger import settings as config
from lambda_trigger.events import S3Object
from lambda_trigger.manifest import build_manifest

EXIT_MISSING = convention.EXIT_FAILED  # photos without a row (and --submit not given)
EXIT_CONFIG_ERROR = convention.EXIT_USAGE
# flag -> setting: the backfill's, where photos arrive (listed) and where manifests go (--submit)
RECONCILE_SETTINGS = {
    **resolver.DEPLOYMENT_FLAGS,
    "raw": config.RAW_URI,
    "manifests": config.MANIFESTS_URI,
}
TABLES = (FEATURES_TABLE, ERRORS_TABLE)  # the job's: a photo with a row in either is done
KEYS_PER_CHUNK = 65_536  # Python strings made from the Arrow arrays at a time
DEFAULT_OUT = "reconcile-missing.jsonl"
PARQUET_SUFFIX = ".parquet"
HIDDEN_PREFIXES = ("_", ".")  # pyarrow's (and Hadoop's) hidden files and folders


@dataclass
class Tally:
    objects: int = 0
    featurized: int = 0
    errored: int = 0
    missing: int = 0

    def line(self) -> str:
        return (
            f"objects {self.objects}: featurized {self.featurized}, errored {self.errored}, "
            f"missing {self.missing}"
        )


class _Cursor:
    """A forward-only walk over ascending keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = iter(keys)
        self._current: str | None = next(self._keys, None)

    def holds(self, key: str) -> bool:
        """Whether ``key`` is in the sequence; keys asked for must ascend too."""
        while self._current is not None and self._current < key:
            self._current = next(self._keys, None)
        return self._current == key


def reconcile(
    objects: Iterable[S3Object], featurized: Iterable[str], errored: Iterable[str], tally: Tally
) -> Iterator[S3Object]:
    """The objects whose key is in neither table; all three sequences ascend (S3's order)."""
    features, errors = _Cursor(featurized), _Cursor(errored)
    for obj in objects:
        tally.objects += 1
        if features.holds(obj.key):
            tally.featurized += 1
        elif errors.holds(obj.key):
            tally.errored += 1
        else:
            tally.missing += 1
            yield obj


def listing(s3: Any, bucket: str, prefix: str, since: datetime | None) -> Iterator[S3Object]:
    """Every photo under the prefix, page by page, in S3's (UTF-8 byte) key order."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not is_image_name(item["Key"]) or (since and item["LastModified"] < since):
                continue
            yield S3Object(
                bucket=bucket,
                key=item["Key"],
                size=item["Size"],
                etag=item.get("ETag", "").strip('"') or None,
                sequencer="",
                event_name="reconcile",
            )


def _filesystem(s3: Any) -> Any:
    """pyarrow's S3 client pointed where boto3 points (an endpoint such as moto's, or AWS)."""
    import pyarrow.fs as pafs

    endpoint = urlsplit(s3.meta.endpoint_url)
    options: dict[str, Any] = {"region": s3.meta.region_name}
    if os.environ.get("AWS_ENDPOINT_URL") or not endpoint.netloc.endswith("amazonaws.com"):
        options |= {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme}
    return pafs.S3FileSystem(**options)


def is_table_file(relative: str) -> bool:
    """Whether a file under a table's root (path relative to it) is one of its Parquet files.

    Spark writes ``part-*.parquet``; beside them a table holds what readers must skip: EMRFS's
    zero-byte ``<folder>_$folder$`` markers (``run_id=x_$folder$``, which pyarrow would open as
    an empty Parquet file and fail on), ``_SUCCESS``, ``.crc`` checksums and ``_temporary/``
    folders of a write in progress (hidden by their leading ``_`` or ``.``, as pyarrow's own
    discovery hides them).
    """
    parts = relative.split("/")
    hidden = any(part.startswith(HIDDEN_PREFIXES) for part in parts)
    return not hidden and parts[-1].endswith(PARQUET_SUFFIX)


def table_files(filesystem: Any, root: str) -> list[str]:
    """The table's Parquet files under ``root`` (empty if there is no table yet)."""
    import pyarrow.fs as pafs

    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        return []
    listed = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(
        info.path
        for info in listed
        if info.type == pafs.FileType.File and is_table_file(info.path[len(root) + 1 :])
    )


def row_keys(filesystem: Any, output: config.S3Location, table: str, bucket: str) -> Any:
    """Sorted, distinct keys of ``bucket`` in a table's ``path`` column (only that column)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = table_files(filesystem, f"{output.bucket}/{output.prefix}{table}")
    if not files:
        return pa.array([], pa.string())
    dataset = ds.dataset(files, filesystem=filesystem, format="parquet")
    paths = dataset.to_table(columns=[PATH_COLUMN]).column(PATH_COLUMN).combine_chunks()
    prefix = f"s3://{bucket}/"
    paths = paths.filter(pc.starts_with(paths, prefix))
    keys = pc.unique(pc.utf8_slice_codeunits(paths, len(prefix)))
    return keys.take(pc.array_sort_indices(keys))


def ascending(keys: Any) -> Iterator[str]:
    for start in range(0, len(keys), KEYS_PER_CHUNK):
        yield from keys.slice(start, KEYS_PER_CHUNK).to_pylist()


def iso_time(value: str) -> datetime:
    """``--since``'s value; argparse names the flag and the value when this raises."""
    return datetime.fromisoformat(value)


iso_time.__name__ = "ISO-8601 date or time"  # what argparse's refusal calls the type


def build_parser() -> argparse.ArgumentParser:
    parser = convention.parser(
        "python -m fruits_ops.reconcile",
        __doc__.splitlines()[0],
        "photos without a row were found (and --submit was not given)",
    )
    resolver.add_stack_flags(parser)
    parser.add_argument(
        "--since",
        type=iso_time,
        help="only objects modified at or after this ISO-8601 date or time (UTC unless it says; "
        "default: every object)",
    )
    missing = parser.add_argument(
        "--missing-manifest",
        type=Path,
        default=Path(DEFAULT_OUT),
        metavar="FILE",
        help="where the manifest of the photos without a row is written (JSON Lines)",
    )
    convention.deprecated_alias(parser, "--out", missing)
    parser.add_argument("--submit", action="store_true", help="start one job run for the missing")
    resolver.add_setting_flags(parser, RECONCILE_SETTINGS)
    return parser


@convention.refusing
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = convention.checked_args(build_parser(), argv)
    # every setting the Lambda's Settings hold (--submit starts a run as the trigger does)
    session, settings = resolver.open_settings(
        args, env, config.from_environment, RECONCILE_SETTINGS, config.FIELDS
    )
    since = args.since.replace(tzinfo=args.since.tzinfo or UTC) if args.since else None
    s3 = session.client("s3")
    started = time.perf_counter()
    filesystem = _filesystem(s3)
    output = config.parse_s3_location(settings.deployment.output_uri)
    keys = {t: row_keys(filesystem, output, t, settings.raw.bucket) for t in TABLES}
    tally = Tally()
    missing = list(
        reconcile(
            listing(s3, settings.raw.bucket, settings.raw.prefix, since),
            ascending(keys[FEATURES_TABLE]),
            ascending(keys[ERRORS_TABLE]),
            tally,
        )
    )
    print(f"{settings.raw.uri}: {tally.line()} ({time.perf_counter() - started:.1f} s)")
    if not missing:
        return 0
    manifest = build_manifest(missing)
    args.missing_manifest.write_bytes(manifest.body)
    print(f"missing photos listed in {args.missing_manifest} ({manifest.images})")
    if not args.submit:
        return EXIT_MISSING
    from lambda_trigger.submit import submit_batch

    submission = submit_batch(s3, session.client("emr-serverless"), settings, manifest)
    verb = "already submitted as" if submission.already_submitted else "started"
    print(
        f"run {submission.run_id} {verb} job run {submission.job_run_id} "
        f"(attempt {submission.attempt}): {submission.manifest_uri}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
