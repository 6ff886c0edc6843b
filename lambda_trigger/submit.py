"""Writing a batch's manifest and starting its one job run, at most once per batch.

EMR Serverless deduplicates StartJobRun calls that carry the same client token, which
covers two deliveries racing each other. A receipt next to the manifest, written only
after the run started, also covers a redelivery long after the first one: the batch is
then acknowledged without a second run, and the receipt says which run has it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from lambda_trigger.manifest import Manifest
from lambda_trigger.request import for_manifest, start_job_run_request
from lambda_trigger.settings import Settings

NOT_FOUND = ("NoSuchKey", "404", "NotFound")


@dataclass(frozen=True)
class Submission:
    run_id: str
    job_run_id: str
    manifest_uri: str
    images: int
    already_submitted: bool


def _read_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in NOT_FOUND:
            return None
        raise
    return json.loads(response["Body"].read())


def submit_batch(s3: Any, emr: Any, settings: Settings, manifest: Manifest) -> Submission:
    """Manifest first, then the run, then the receipt: a failure at any step is retried whole."""
    bucket = settings.manifests.bucket
    manifest_key = settings.manifests.key(manifest.file_name)
    manifest_uri = f"s3://{bucket}/{manifest_key}"
    receipt_key = settings.manifests.key(manifest.receipt_name)
    receipt = _read_json(s3, bucket, receipt_key)
    if receipt is not None:
        return Submission(
            run_id=manifest.run_id,
            job_run_id=str(receipt.get("job_run_id", "")),
            manifest_uri=manifest_uri,
            images=manifest.images,
            already_submitted=True,
        )
    s3.put_object(
        Bucket=bucket, Key=manifest_key, Body=manifest.body, ContentType="application/x-ndjson"
    )
    request = start_job_run_request(
        settings.deployment,
        for_manifest(manifest_uri, manifest.body),
        client_token=manifest.run_id,
    )
    job_run_id = emr.start_job_run(**request)["jobRunId"]
    submission = Submission(
        run_id=manifest.run_id,
        job_run_id=job_run_id,
        manifest_uri=manifest_uri,
        images=manifest.images,
        already_submitted=False,
    )
    record = asdict(submission) | {
        "application_id": settings.deployment.application_id,
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    record.pop("already_submitted")
    s3.put_object(
        Bucket=bucket,
        Key=receipt_key,
        Body=json.dumps(record, sort_keys=True).encode(),
        ContentType="application/json",
    )
    return submission
