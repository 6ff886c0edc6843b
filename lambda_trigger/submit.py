"""Writing a batch's manifest and starting its job run: one run per batch, until it fails for good.

EMR Serverless deduplicates StartJobRun calls that carry the same client token, which
covers two deliveries racing each other. The receipt next to the manifest (``receipts.py``),
written only after the run started, covers a redelivery long after the first one: a batch
whose run is in flight or succeeded is acknowledged without a second run, and the receipt
says which run has it. A batch whose every attempt failed (the watcher marked it ``FAILED``),
or whose run an operator cancelled (``CANCELLED``), is started again, as the next attempts, so
a re-upload of the same photos is never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fruits_contract import now_iso
from lambda_trigger import receipts
from lambda_trigger.manifest import Manifest
from lambda_trigger.request import Attempt, client_token, start_job_run_request
from lambda_trigger.settings import Settings


@dataclass(frozen=True)
class Submission:
    run_id: str
    job_run_id: str
    manifest_uri: str
    images: int
    already_submitted: bool
    attempt: int = 1


def next_attempt(receipt: receipts.Receipt | None, max_attempts: int) -> Attempt:
    """The first attempt of a new batch; after a batch failed for good (or was cancelled by an
    operator), ``max_attempts`` more."""
    if receipt is None:
        return Attempt(1, max_attempts)
    done = int(receipt.get("attempt", 1))
    return Attempt(done + 1, done + max_attempts)


def submit_batch(s3: Any, emr: Any, settings: Settings, manifest: Manifest) -> Submission:
    """Manifest first, then the run, then the receipt: a failure at any step is retried whole."""
    bucket = settings.manifests.bucket
    manifest_key = settings.manifests.key(manifest.file_name)
    manifest_uri = f"s3://{bucket}/{manifest_key}"
    receipt_key = settings.manifests.key(manifest.receipt_name)
    receipt = receipts.read(s3, bucket, receipt_key)
    if receipt is not None and not receipts.started_again(receipt):
        return Submission(
            run_id=manifest.run_id,
            job_run_id=str(receipt.get("job_run_id", "")),
            manifest_uri=manifest_uri,
            images=manifest.images,
            already_submitted=True,
            attempt=int(receipt.get("attempt", 1)),
        )
    s3.put_object(
        Bucket=bucket, Key=manifest_key, Body=manifest.body, ContentType="application/x-ndjson"
    )
    attempt = next_attempt(receipt, settings.max_attempts)
    request = start_job_run_request(
        settings.deployment,
        manifest.source(manifest_uri),  # --manifest, or --erase for an erasure manifest
        client_token=client_token(manifest.run_id, attempt),
        attempt=attempt,
    )
    job_run_id = emr.start_job_run(**request)["jobRunId"]
    record = receipts.submitted(
        receipt,
        run_id=manifest.run_id,
        application_id=settings.deployment.application_id,
        source=manifest_uri,
        images=manifest.images,
        job_run_id=job_run_id,
        attempt=attempt,
        at=now_iso(),
    )
    receipts.write(s3, bucket, receipt_key, record)
    return Submission(
        run_id=manifest.run_id,
        job_run_id=job_run_id,
        manifest_uri=manifest_uri,
        images=manifest.images,
        already_submitted=False,
        attempt=attempt.number,
    )
