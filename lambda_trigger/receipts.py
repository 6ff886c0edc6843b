"""The receipt of a run: which job runs it took, how each ended, and where it stands now.

One JSON object per run id, next to its manifest (``manifests/<run id>.jobrun.json``). The
Lambda writes it when it starts a batch's run; the watcher records each attempt's end, each
resubmission, and the run's final state. A redelivered batch reads it: ``SUBMITTED`` or
``SUCCESS`` means the batch has its run; ``FAILED`` (every attempt failed) or ``CANCELLED`` (an
operator cancelled it) means the batch is submitted again. A run that failed for good also
says whether its alert went out (``alert``): the watcher claims it in the receipt before it
publishes and writes nothing after the publish, so a redelivered event never alerts twice. The
functions that change a receipt are pure; reading and writing it are the two small functions
at the end.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from lambda_trigger.request import Attempt

SUBMITTED = "SUBMITTED"  # a job run is in flight
SUCCESS = "SUCCESS"
FAILED = "FAILED"  # every attempt failed: the watcher gave up and said so
CANCELLED = "CANCELLED"  # an operator cancelled the run: not resubmitted, not alerted
STARTED_AGAIN = (FAILED, CANCELLED)  # a redelivered batch in these states gets a new run
ALERT_SENT = "sent"  # claimed before the publish: a repeated event publishes nothing
ALERT_UNSENT = "unsent"  # the publish failed: the repeated event publishes it
NOT_FOUND = ("NoSuchKey", "404", "NotFound")

Receipt = dict[str, Any]


def submitted(
    receipt: Receipt | None,
    *,
    run_id: str,
    application_id: str,
    source: str,
    images: int | None,
    job_run_id: str,
    attempt: Attempt,
    at: str,
) -> Receipt:
    """The receipt after ``job_run_id`` was started as ``attempt`` (a new one if none yet)."""
    base = receipt or {
        "run_id": run_id,
        "application_id": application_id,
        "manifest_uri": source,
        "images": images,
        "submitted_at": at,
        "attempts": [],
    }
    entry = {"attempt": attempt.number, "job_run_id": job_run_id, "submitted_at": at}
    return {
        **base,
        "state": SUBMITTED,
        "job_run_id": job_run_id,
        "attempt": attempt.number,
        "last_attempt": attempt.last,
        "attempts": [*base.get("attempts", []), entry],  # receipts before attempts had none
        "updated_at": at,
    }


def ended(receipt: Receipt | None, job_run_id: str) -> str | None:
    """How ``job_run_id`` ended, if the receipt says so already (a repeated event)."""
    for entry in (receipt or {}).get("attempts", []):
        if entry["job_run_id"] == job_run_id:
            return entry.get("state")
    return None


def finished(
    receipt: Receipt,
    job_run_id: str,
    state: str,
    details: str,
    at: str,
    final: bool,
    end: str = "",
    left: bool = False,
) -> Receipt:
    """The receipt after ``job_run_id`` ended in ``state``; ``final``: no attempt follows.

    ``end`` says how (``outcomes.end_of``: a timeout and an operator's cancellation are both
    CANCELLED); ``left``: an operator cancelled it and it is left alone.
    """
    attempts = [
        {**entry, "state": state, "state_details": details, "end": end, "finished_at": at}
        if entry["job_run_id"] == job_run_id
        else entry
        for entry in receipt.get("attempts", [])
    ]
    if state == SUCCESS:
        overall = SUCCESS
    elif left:
        overall = CANCELLED
    else:
        overall = FAILED if final else receipt.get("state", SUBMITTED)
    return {**receipt, "attempts": attempts, "state": overall, "updated_at": at}


def failed_for_good(receipt: Receipt | None) -> bool:
    return receipt is not None and receipt.get("state") == FAILED


def started_again(receipt: Receipt | None) -> bool:
    """Whether a redelivered batch with this receipt gets a new run (it has none that may end
    well: every attempt failed, or an operator cancelled it and the photos came again)."""
    return receipt is not None and receipt.get("state") in STARTED_AGAIN


def any_ended(receipt: Receipt | None, end: str) -> bool:
    """Whether an attempt of the run ended so (``outcomes.end_of``), e.g. timed out."""
    return any(entry.get("end") == end for entry in (receipt or {}).get("attempts", []))


def with_alert(receipt: Receipt, alert: str, at: str) -> Receipt:
    """The receipt of a run that failed for good, its alert ``ALERT_SENT`` or ``ALERT_UNSENT``."""
    return {**receipt, "alert": alert, "alert_at": at}


def alert_due(receipt: Receipt | None, job_run_id: str) -> bool:
    """Whether the alert that ``job_run_id`` failed for good is still to be published."""
    return (
        failed_for_good(receipt)
        and receipt is not None
        and receipt.get("job_run_id") == job_run_id
        and receipt.get("alert") == ALERT_UNSENT
    )


def job_run_ids(receipt: Receipt | None) -> list[str]:
    return [entry["job_run_id"] for entry in (receipt or {}).get("attempts", [])]


def read(s3: Any, bucket: str, key: str) -> Receipt | None:
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in NOT_FOUND:
            return None
        raise
    return json.loads(response["Body"].read())


def write(s3: Any, bucket: str, key: str, receipt: Receipt) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(receipt, sort_keys=True).encode(),
        ContentType="application/json",
    )
