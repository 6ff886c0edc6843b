"""One batch of uploads as the job's manifest, its deletions as an erasure manifest: JSON
Lines, deterministic bytes.

The bytes depend only on the set of objects (sorted, one line per URI), so the same
batch delivered twice gives the same manifest, the same run id and the same client token.
An erasure manifest has the same shape plus ``erased_at``, the deletion's S3 ``eventTime``
(what emr_serverless_job/erase.py reads).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from fruits_contract import (
    ERASED_AT_FIELD,
    ETAG_FIELD,
    SIZE_FIELD,
    URI_FIELD,
    batch_run_id,
    erase_run_id,
    manifest_name,
    receipt_name,
)
from lambda_trigger.events import S3Object
from lambda_trigger.request import JobSource, for_erasure, for_manifest


@dataclass(frozen=True)
class Manifest:
    body: bytes
    run_id: str
    images: int
    duplicates: int  # events for a URI already in the batch (re-uploads, redelivery)
    erasure: bool = False  # an erasure manifest: its run is an erase run (--erase)
    total_bytes: int | None = None  # of the photos whose size S3 sent: the run's size follows

    def source(self, uri: str) -> JobSource:
        """What the job run reads, once the manifest is stored at ``uri``."""
        if self.erasure:
            return for_erasure(uri, self.body)
        return for_manifest(uri, self.body, photos=self.images, total_bytes=self.total_bytes)

    @property
    def file_name(self) -> str:
        return manifest_name(self.run_id)

    @property
    def receipt_name(self) -> str:
        return receipt_name(self.run_id)


def _sequence(obj: S3Object) -> tuple[int, str]:
    """S3 sequencers of one key compare as hex strings of equal length, longer ones later."""
    return (len(obj.sequencer), obj.sequencer)


def _latest(objects: Iterable[S3Object]) -> tuple[dict[str, S3Object], int]:
    """The latest event per URI (by S3's sequencer), and how many events there were."""
    latest: dict[str, S3Object] = {}
    seen = 0
    for obj in objects:
        seen += 1
        current = latest.get(obj.uri)
        if current is None or _sequence(obj) >= _sequence(current):
            latest[obj.uri] = obj
    return latest, seen


def split_batch(objects: Iterable[S3Object]) -> tuple[list[S3Object], list[S3Object]]:
    """(creations to featurize, removals to erase) of one batch.

    A key is featurized when its latest event is a creation: one uploaded, then deleted
    within the batch is only erased (its run would find nothing and write an error row that
    names the deleted key). A key is erased when the batch holds any removal of it: deleted,
    then uploaded again, its old rows go and the new upload is featurized (rows featurized
    after the deletion's time stay)."""
    events = list(objects)
    latest, _ = _latest(events)
    creations = [obj for obj in events if not obj.is_removal and not latest[obj.uri].is_removal]
    removals = [obj for obj in events if obj.is_removal]
    return creations, removals


def _manifest(
    lines: list[str], events: int, erasure: bool = False, total_bytes: int | None = None
) -> Manifest:
    """The manifest of these lines (one per URI, sorted) and the run id its bytes name."""
    body = ("\n".join(lines) + "\n").encode() if lines else b""
    return Manifest(
        body=body,
        run_id=(erase_run_id if erasure else batch_run_id)(body),
        images=len(lines),
        duplicates=events - len(lines),
        erasure=erasure,
        total_bytes=total_bytes,
    )


def build_erasure_manifest(removals: Iterable[S3Object]) -> Manifest:
    """One line per deleted URI, sorted, with the latest deletion's time; its hash names the
    erase run (``erase-<16 hex>``)."""
    latest, seen = _latest(removals)
    lines = [
        json.dumps({URI_FIELD: uri, ERASED_AT_FIELD: latest[uri].event_time}, ensure_ascii=False)
        for uri in sorted(latest)
    ]
    return _manifest(lines, events=seen, erasure=True)


def build_manifest(objects: Iterable[S3Object]) -> Manifest:
    """The latest event per URI, one line each, sorted; size and etag when S3 sent them."""
    latest, seen = _latest(objects)
    lines = []
    for uri in sorted(latest):
        obj = latest[uri]
        entry: dict[str, object] = {URI_FIELD: uri}
        if obj.size is not None:
            entry[SIZE_FIELD] = obj.size
        if obj.etag is not None:
            entry[ETAG_FIELD] = obj.etag
        lines.append(json.dumps(entry, ensure_ascii=False, sort_keys=True))
    sizes = [latest[uri].size for uri in latest if latest[uri].size is not None]
    return _manifest(lines, events=seen, total_bytes=sum(sizes) if sizes else None)
