"""One batch of uploads as the job's manifest: JSON Lines, deterministic bytes.

The bytes depend only on the set of objects (sorted, one line per URI), so the same
batch delivered twice gives the same manifest, the same run id and the same client token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from lambda_trigger.events import S3Object
from lambda_trigger.request import manifest_run_id


@dataclass(frozen=True)
class Manifest:
    body: bytes
    run_id: str
    images: int
    duplicates: int  # events for a URI already in the batch (re-uploads, redelivery)

    @property
    def file_name(self) -> str:
        return f"{self.run_id}.jsonl"

    @property
    def receipt_name(self) -> str:
        return f"{self.run_id}.jobrun.json"


def _sequence(obj: S3Object) -> tuple[int, str]:
    """S3 sequencers of one key compare as hex strings of equal length, longer ones later."""
    return (len(obj.sequencer), obj.sequencer)


def build_manifest(objects: Iterable[S3Object]) -> Manifest:
    """The latest event per URI, one line each, sorted; size and etag when S3 sent them."""
    latest: dict[str, S3Object] = {}
    seen = 0
    for obj in objects:
        seen += 1
        current = latest.get(obj.uri)
        if current is None or _sequence(obj) >= _sequence(current):
            latest[obj.uri] = obj
    lines = []
    for uri in sorted(latest):
        obj = latest[uri]
        entry: dict[str, object] = {"uri": uri}
        if obj.size is not None:
            entry["size"] = obj.size
        if obj.etag is not None:
            entry["etag"] = obj.etag
        lines.append(json.dumps(entry, ensure_ascii=False, sort_keys=True))
    body = ("\n".join(lines) + "\n").encode() if lines else b""
    return Manifest(
        body=body,
        run_id=manifest_run_id(body),
        images=len(latest),
        duplicates=seen - len(latest),
    )
