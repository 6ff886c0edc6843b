"""S3 buckets staged on local disk around an emulated run, without harming them.

Hadoop here has no S3 client (EMR's EMRFS is not public), so what a request reads
(``reads.reads``: its artifacts, its input prefix or its manifest's photos, the output files
its kind of run consults) is copied to a folder before the run, and nothing else of the
buckets, and Spark reads and writes that folder through ``s3://`` paths
(``submit.s3_mirror_conf``).

The buckets may be real ones, so the mirror never harms them:

- a key that a local folder cannot hold as it is (``//``, a ``.`` or ``..`` segment, a path
  that would resolve outside the mirror, a name Hadoop's local file system reads as a
  checksum, a file and a folder of the same name) is not copied; it is listed, with why, and
  the run does not see it (on EMR it would);
- nothing goes back unless the caller asks (``PushScope``), and then only files the run
  created, under the prefixes the scope names (by default the run's own output partitions,
  ``OUTPUT/<table>/run_id=<run id>/``), to keys that do not exist in S3: an object the run
  changed or removed was not written by it and is left as it is in S3, and a partition
  holding such an object is not pushed at all (half of it would mix two runs' rows).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emr_emulator.reads import Reads, first_photo
from fruits_contract import PREFLIGHT_REPORT

# Hadoop's local file system writes a checksum file next to every file; EMRFS does not. It
# also reads ``.NAME.crc`` as the checksum of NAME, so such an object is never mirrored.
CHECKSUM_SUFFIX = ".crc"
UNSAFE_SEGMENTS = ("", ".", "..")
NOT_PUSHED = "not pushed: pushing back to S3 was not asked for"


def _is_checksum(name: str) -> bool:
    return name.startswith(".") and name.endswith(CHECKSUM_SUFFIX)


def unsafe_key(key: str) -> str | None:
    """Why ``key`` cannot be mirrored as it is, or None. A trailing ``/`` (a folder marker) is
    fine; anything a local path would rewrite or escape through is not."""
    body = key[:-1] if key.endswith("/") else key
    if not body:
        return "an empty key"
    if key.startswith("/"):
        return "it starts with '/'"
    segments = body.split("/")
    if "" in segments:
        return "it contains '//' (a local path would merge the two folders)"
    if any(s in UNSAFE_SEGMENTS for s in segments):
        return "it has a '.' or '..' segment (a local path would resolve it elsewhere)"
    if "\0" in key:
        return "it contains a NUL character"
    if not key.endswith("/") and _is_checksum(segments[-1]):
        return "Hadoop's local file system would read it as a checksum file"
    return None


@dataclass(frozen=True)
class PushScope:
    """What an emulated run may write back to S3: files it created under these prefixes
    (``s3://bucket/prefix/``). Empty: nothing, which is the default."""

    prefixes: tuple[str, ...] = ()

    @classmethod
    def for_run(cls, output: str | None, run_id: str | None, also: Iterable[str] = ()) -> PushScope:
        """The run's own output partitions (``OUTPUT/*/run_id=RUN/``) and preflight report
        folder (``OUTPUT/reports/preflight/RUN/``), plus ``also``."""
        own: tuple[str, ...] = ()
        if output and run_id:
            root = output.rstrip("/")
            report = PREFLIGHT_REPORT.format(run_id=run_id).rsplit("/", 1)[0]
            own = (f"{root}/*/run_id={run_id}/", f"{root}/{report}/")
        return cls(prefixes=(*own, *(p if p.endswith("/") else f"{p}/" for p in also)))

    def prefix_of(self, bucket: str, key: str) -> str | None:
        """The scope prefix (as ``bucket/key-prefix``, ``*`` resolved) that holds ``key``."""
        for prefix in self.prefixes:
            parts = urlsplit(prefix)
            if parts.scheme not in ("s3", "s3a") or parts.netloc != bucket:
                continue
            pattern = re.escape(parts.path.lstrip("/")).replace(r"\*", "[^/]+")
            match = re.match(pattern, key)
            if match:
                return f"{bucket}/{match.group(0)}"
        return None


@dataclass
class Pushed:
    """What went back to one bucket, and what did not and why."""

    uploaded: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class Mirror:
    """A folder per bucket, and what each file was when it was copied from S3."""

    root: Path
    snapshot: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)  # not mirrored, and why
    absent: dict[tuple[str, str], str] = field(default_factory=dict)  # named, not in S3

    def path(self, bucket: str, key: str) -> Path:
        """Where ``key`` is mirrored; raises ValueError for a key that cannot be."""
        problem = unsafe_key(key)
        if problem:
            raise ValueError(f"s3://{bucket}/{key} cannot be mirrored: {problem}")
        folder = (self.root / bucket).resolve()
        target = (folder / key).resolve()
        if target != folder and folder not in target.parents:
            raise ValueError(f"s3://{bucket}/{key} would be written outside {folder}")
        return folder / key

    def _copy(self, s3: Any, bucket: str, key: str) -> bool:
        """Copy one object if a local folder can hold it (else it is in ``skipped``); a folder
        marker becomes a folder. True when a file was copied."""
        if (bucket, key) in self.snapshot or (bucket, key) in self.skipped:
            return False
        try:
            target = self.path(bucket, key)
            if key.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                return False
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                raise ValueError("a folder of the same name is mirrored already")
            s3.download_file(bucket, key, str(target))
        except (ValueError, OSError) as error:
            self.skipped[(bucket, key)] = str(error)
            return False
        stat = target.stat()
        self.snapshot[(bucket, key)] = (stat.st_size, stat.st_mtime_ns)
        return True

    def _listing(self, s3: Any, bucket: str, prefix: str = "") -> Iterable[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def pull(self, s3: Any, bucket: str, prefix: str = "") -> int:
        """Copy every object of ``bucket`` under ``prefix`` that a local folder can hold;
        returns how many. Folder markers become folders; the others are in ``skipped``."""
        (self.root / bucket).mkdir(parents=True, exist_ok=True)
        return sum(self._copy(s3, bucket, key) for key in self._listing(s3, bucket, prefix))

    def pull_reads(self, s3: Any, wanted: Reads) -> int:
        """Copy what a run reads (``reads.reads``): its objects, what its prefixes hold, the
        first photo under each preflight prefix; nothing else of the buckets is listed or
        read. A named object that does not exist is in ``absent``. Returns how many."""
        copied = 0
        for bucket in wanted.buckets:
            (self.root / bucket).mkdir(parents=True, exist_ok=True)
        for bucket, key in sorted(wanted.keys):
            if (bucket, key) in self.snapshot:
                continue
            try:
                copied += self._copy(s3, bucket, key)
            except s3.exceptions.ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if code not in ("404", "NoSuchKey", "NotFound", "NoSuchBucket", "403"):
                    raise
                self.absent[(bucket, key)] = f"not copied: {code}"
        for bucket, prefix in sorted(wanted.prefixes):
            for key in self._listing(s3, bucket, prefix):
                if wanted.wants(bucket, key):
                    copied += self._copy(s3, bucket, key)
        for bucket, under in sorted(wanted.first_photo):
            key = first_photo(self._listing(s3, bucket, under), under)
            if key is not None:
                copied += self._copy(s3, bucket, key)
        return copied

    def _files(self, bucket: str) -> dict[str, Path]:
        folder = self.root / bucket
        files = {}
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not path.is_file() or _is_checksum(path.name):
                continue
            files[path.relative_to(folder).as_posix()] = path
        return files

    def push(self, s3: Any, bucket: str, scope: PushScope | None = None) -> Pushed:
        """Upload the files the run created under ``scope``; never re-upload, overwrite or
        delete an object the run did not write. Everything else is in ``refused``."""
        scope = scope or PushScope()
        result = Pushed()
        files = self._files(bucket)
        pulled = {key for b, key in self.snapshot if b == bucket}
        tainted: set[str] = set()  # scope partitions holding an object the run did not write
        for key in sorted(pulled):
            path = files.get(key)
            if path is None:
                reason = "removed by the run, but it did not write it: not deleted in S3"
            elif (path.stat().st_size, path.stat().st_mtime_ns) != self.snapshot[(bucket, key)]:
                reason = "changed by the run, but it did not write it: not re-uploaded"
            else:
                continue
            result.refused[key] = reason
            partition = scope.prefix_of(bucket, key)
            if partition:
                tainted.add(partition)
        occupied: dict[str, bool] = {}  # scope partition -> S3 already holds objects there
        for key, path in files.items():
            if key in pulled:
                continue
            partition = scope.prefix_of(bucket, key)
            if partition and partition not in occupied:
                occupied[partition] = remote_holds(s3, bucket, partition[len(bucket) + 1 :])
                if occupied[partition]:
                    tainted.add(partition)
            if not scope.prefixes:
                result.refused[key] = NOT_PUSHED
            elif partition is None:
                result.refused[key] = "not pushed: outside what the run may write back"
            elif partition in tainted:
                result.refused[key] = (
                    f"not pushed: s3://{partition} held objects the run did not write (a rerun "
                    "on EMR replaces them; the emulator never deletes, so it writes nothing there)"
                )
            elif remote_exists(s3, bucket, key):
                result.refused[key] = "not pushed: the key exists in S3 (written since the pull)"
            else:
                s3.upload_file(str(path), bucket, key)
                result.uploaded.append(key)
        return result


def remote_holds(s3: Any, bucket: str, prefix: str) -> bool:
    """Whether S3 holds any object under ``prefix``: one LIST of one key."""
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"))


def remote_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True
