"""The Lambda: a batch of S3 notifications from SQS becomes one manifest and one job run.

Records are parsed one by one (a poisoned message fails alone and goes back to the queue,
then to the dead-letter queue); the images of every good record go into one manifest, and
one job run is started for it. Deletions of images under ``raw/`` go into one erasure
manifest and one erase run (docs/erasure.md), so a batch holding both starts one of each.
If a submission fails, the invocation fails and SQS redelivers the whole batch (the run
already started is recognised by its receipt), so no upload or deletion is acknowledged
without a run that handles it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambda_trigger import settings as config
from lambda_trigger.events import Ignored, S3Object, ignore_reason, parse_message
from lambda_trigger.manifest import Manifest, build_erasure_manifest, build_manifest, split_batch
from lambda_trigger.submit import submit_batch

logger = Logger(use_rfc3339=True, utc=True)  # the keys and clock of fruits_contract.logs
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@dataclass
class Batch:
    images: list[S3Object] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


@cache
def current_settings() -> config.Settings:
    return config.from_environment(os.environ)


@cache
def clients() -> tuple[Any, Any]:
    return (
        boto3.client("s3", config=config.CLIENT_CONFIG),
        boto3.client("emr-serverless", config=config.CLIENT_CONFIG),
    )


def record_handler(record: SQSRecord, batch: Batch, raw: config.S3Location) -> None:
    """Sort one message's objects into images and ignored; raises on a malformed message."""
    images: list[S3Object] = []
    ignored: list[Ignored] = []
    for item in parse_message(record.body):
        reason = item.reason if isinstance(item, Ignored) else None
        if isinstance(item, S3Object):
            reason = ignore_reason(item, raw.bucket, raw.prefix)
            if reason is None:
                images.append(item)
                continue
            item = Ignored(what=item.uri, reason=reason)
        logger.info("object ignored", extra={"object": item.what, "reason": reason})
        ignored.append(item)
    batch.images.extend(images)
    batch.ignored.extend(ignored)


def count(batch: Batch, creations: int, removals: int, failed: int) -> None:
    metrics.add_metric(name="ImagesAccepted", unit=MetricUnit.Count, value=creations)
    metrics.add_metric(name="ImagesRemoved", unit=MetricUnit.Count, value=removals)
    metrics.add_metric(name="ObjectsIgnored", unit=MetricUnit.Count, value=len(batch.ignored))
    metrics.add_metric(name="MessagesFailed", unit=MetricUnit.Count, value=failed)


def start_run(
    manifest: Manifest, batch: Batch, settings: config.Settings, messages: int, failed: int
) -> None:
    """The manifest and at most one job run for it; raises if either fails."""
    logger.set_correlation_id(manifest.run_id)
    s3, emr = clients()
    submission = submit_batch(s3, emr, settings, manifest)
    duplicate = submission.already_submitted
    metrics.add_metric(
        name="DuplicateBatches" if duplicate else "JobRunsSubmitted", unit=MetricUnit.Count, value=1
    )
    logger.info(
        "batch already submitted" if duplicate else "job run started",
        extra={
            "run_id": submission.run_id,
            "job_run_id": submission.job_run_id,
            "attempt": submission.attempt,
            "manifest": submission.manifest_uri,
            "kind": "erase" if manifest.erasure else "featurize",
            "images": manifest.images,
            "duplicate_events": manifest.duplicates,
            "ignored": len(batch.ignored),
            "messages": messages,
            "failed": failed,
        },
    )


@metrics.log_metrics
@tracer.capture_lambda_handler
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Returns SQS's partial-batch response (the event source mapping sets
    ReportBatchItemFailures), so only the messages that could not be parsed come back; a
    failed submission raises instead, and the whole batch is redelivered."""
    settings = current_settings()  # a bad configuration stops here, before any side effect
    batch, records = Batch(), event["Records"]
    with processor(records=records, handler=partial(record_handler, batch=batch, raw=settings.raw)):
        processor.process()
    failed = len(processor.fail_messages)
    creations, removals = split_batch(batch.images)
    count(batch, len(creations), len(removals), failed)
    # Erasure first: a deletion is a legal obligation, and a failure after it redelivers the
    # batch, whose erase run the receipt then recognises.
    if removals:
        start_run(build_erasure_manifest(removals), batch, settings, len(records), failed)
    if creations:
        start_run(build_manifest(creations), batch, settings, len(records), failed)
    if not (creations or removals):
        logger.info("no images in batch", extra={"messages": len(records), "failed": failed})
    return processor.response()
