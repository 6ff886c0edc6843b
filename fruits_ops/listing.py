"""How many photos (and bytes) a backfill's prefix holds, so that its run is sized to them.

A backfill of a new farm's few thousand photos should not hold every executor the stack
allows, and one of a million should; the StartJobRun request is built before the job lists
anything, so the backfill command lists the prefix first. The listing stops as soon as the
count is large enough that the size would not change (``sizing.widest_work_vcpu_s``): a
million-photo prefix costs about as many LIST calls as it takes to pass that point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fruits_contract import is_image_name


@dataclass(frozen=True)
class Count:
    photos: int
    total_bytes: int
    complete: bool  # False: stopped early, there are at least this many


def count_photos(s3: Any, bucket: str, prefix: str, enough: Callable[[int, int], bool]) -> Count:
    """Photos under ``prefix`` (the names a run reads: ``fruits_contract.is_image_name``),
    page by page, until ``enough(photos, total_bytes)``."""
    photos = total = 0
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if is_image_name(item["Key"]):
                photos += 1
                total += int(item.get("Size", 0))
        if enough(photos, total):
            return Count(photos, total, complete=False)
    return Count(photos, total, complete=True)
