"""S3 buckets staged on local disk around an emulated run.

Hadoop here has no S3 client (EMR's EMRFS is not public), so the buckets a request names are
copied to a folder before the run and Spark reads and writes that folder through ``s3://``
paths (``submit.s3_mirror_conf``). Afterwards what the run created or changed is uploaded and
what it deleted is deleted, so S3 ends as it would after the same run on EMR, except for
EMRFS' own ``_$folder$`` markers and anything IAM would have refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Hadoop's local file system writes a checksum file next to every file; EMRFS does not.
CHECKSUM_SUFFIX = ".crc"


@dataclass
class Mirror:
    """A folder per bucket, and what each file was when it was copied from S3."""

    root: Path
    snapshot: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def pull(self, s3: Any, bucket: str) -> int:
        """Copy every object of ``bucket``; returns how many. Folder markers become folders."""
        copied = 0
        (self.root / bucket).mkdir(parents=True, exist_ok=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                key = item["Key"]
                target = self.path(bucket, key)
                if key.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(target))
                stat = target.stat()
                self.snapshot[(bucket, key)] = (stat.st_size, stat.st_mtime_ns)
                copied += 1
        return copied

    def push(self, s3: Any, bucket: str) -> tuple[list[str], list[str]]:
        """Upload new and changed files, delete objects whose files the run removed."""
        folder = self.root / bucket
        uploaded: list[str] = []
        present: set[str] = set()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.name.startswith(".") and path.name.endswith(CHECKSUM_SUFFIX):
                continue
            key = path.relative_to(folder).as_posix()
            present.add(key)
            stat = path.stat()
            if self.snapshot.get((bucket, key)) != (stat.st_size, stat.st_mtime_ns):
                s3.upload_file(str(path), bucket, key)
                uploaded.append(key)
        deleted = sorted(key for b, key in self.snapshot if b == bucket and key not in present)
        for start in range(0, len(deleted), 1000):
            s3.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": key} for key in deleted[start : start + 1000]]},
            )
        return uploaded, deleted
