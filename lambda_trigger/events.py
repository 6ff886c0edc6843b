"""S3 event notifications, as S3 delivers them to SQS, to the objects a run should read or erase.

S3 URL-encodes object keys in notifications the way HTML forms do: a space arrives as
``+``, a plus sign as ``%2B``, non-ASCII as UTF-8 ``%XX``. Reading the key as-is is the
classic bug (the object "does not exist"); every key is decoded here, once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote_plus

from fruits_contract import NOT_AN_IMAGE_SUFFIX, is_image_name

OBJECT_CREATED = "ObjectCreated:"
# A deletion: ``ObjectRemoved:DeleteMarkerCreated`` (a DELETE without a version id in a
# versioned bucket, as this stack's) or ``ObjectRemoved:Delete`` (an unversioned bucket, or a
# version deleted by id). Every one erases the key's rows (docs/erasure.md): a version
# deleted by id while the key still has a current one costs a re-featurization (reconcile
# finds the photo without a row), never a photo's rows kept against its deletion.
OBJECT_REMOVED = "ObjectRemoved:"
TEST_EVENT = "s3:TestEvent"


class MalformedMessage(ValueError):
    """The message is not an S3 notification this trigger understands; retried, then DLQ."""


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str  # decoded
    size: int | None
    etag: str | None
    sequencer: str  # orders events of the same key; "" when absent
    event_name: str
    event_time: str = ""  # S3's eventTime (ISO-8601 UTC): when a removal happened

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def is_removal(self) -> bool:
        return self.event_name.startswith(OBJECT_REMOVED)


@dataclass(frozen=True)
class Ignored:
    """An event that is fine but names nothing to featurize, and why."""

    what: str
    reason: str


def decode_key(key: str) -> str:
    return unquote_plus(key)


def parse_message(body: str) -> list[S3Object | Ignored]:
    """One SQS message body: an S3 notification (one or more records) or S3's test event."""
    try:
        message = json.loads(body)
    except json.JSONDecodeError as error:
        raise MalformedMessage(f"body is not JSON: {error.msg} at {error.pos}") from error
    if not isinstance(message, dict):
        raise MalformedMessage(f"body is JSON {type(message).__name__}, not an object")
    if message.get("Event") == TEST_EVENT:
        return [Ignored(what=str(message.get("Bucket", "?")), reason="s3 test event")]
    records = message.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedMessage('no "Records" list in the body (not an S3 notification)')
    return [_parse_record(number, record) for number, record in enumerate(records)]


def _parse_record(number: int, record: object) -> S3Object | Ignored:
    """One record to an object (its key decoded) or an Ignored. One that cannot be read, or a
    removal without a time, raises MalformedMessage: its whole message is retried, then goes
    to the DLQ, rather than being dropped."""
    try:
        s3 = record["s3"]  # type: ignore[index]
        bucket = s3["bucket"]["name"]
        raw_key = s3["object"]["key"]
        event_name = str(record.get("eventName", ""))  # type: ignore[union-attr]
    except (KeyError, TypeError, AttributeError) as error:
        raise MalformedMessage(f"record {number} has no s3.bucket.name/s3.object.key") from error
    if not isinstance(bucket, str) or not isinstance(raw_key, str):
        raise MalformedMessage(f"record {number}: bucket and key must be strings")
    key = decode_key(raw_key)
    if not event_name.startswith((OBJECT_CREATED, OBJECT_REMOVED)):
        return Ignored(
            what=f"s3://{bucket}/{key}", reason=f"not an object creation or removal: {event_name}"
        )
    event_time = record.get("eventTime")  # type: ignore[union-attr]
    if event_name.startswith(OBJECT_REMOVED) and not _is_utc_time(event_time):
        # The erasure's time decides which rows go: a removal without one cannot be applied.
        raise MalformedMessage(f"record {number}: {event_name} without an ISO-8601 eventTime")
    size = s3["object"].get("size")
    etag = s3["object"].get("eTag")
    return S3Object(
        bucket=bucket,
        key=key,
        size=size if isinstance(size, int) else None,
        etag=etag if isinstance(etag, str) else None,
        sequencer=str(s3["object"].get("sequencer", "")),
        event_name=event_name,
        event_time=event_time if isinstance(event_time, str) else "",
    )


def _is_utc_time(value: object) -> bool:
    """S3 writes ``1970-01-01T00:00:00.000Z``; any ISO-8601 time with a zone will do."""
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def ignore_reason(obj: S3Object, bucket: str, prefix: str) -> str | None:
    """Why this object does not belong in a run, or None when it does."""
    if obj.bucket != bucket:
        return f"other bucket (expected {bucket})"
    if not obj.key.startswith(prefix):
        return f"outside the raw prefix {prefix!r}"
    if obj.key.endswith("/"):
        return "folder marker"
    if not is_image_name(obj.key):  # the names the job reads
        return NOT_AN_IMAGE_SUFFIX
    return None
