"""The EventBridge events EMR Serverless emits, for what an emulated run did.

EMR Serverless sends "EMR Serverless Job Run State Change" to the default event bus on every
state change of a job run (EMR Serverless User Guide, "Automating EMR Serverless with Amazon
EventBridge"); the pipeline's watcher Lambda consumes the ends of runs.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fruits_contract import EVENT_DETAIL_TYPE, EVENT_SOURCE


def state_change_event(
    job_run: dict[str, Any], account: str, region: str, previous: str = "RUNNING"
) -> dict[str, Any]:
    """The event for ``job_run`` reaching its ``state`` (a GetJobRun-like ``jobRun``)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    arn = (
        f"arn:aws:emr-serverless:{region}:{account}:/applications/{job_run['applicationId']}"
        f"/jobruns/{job_run['jobRunId']}"
    )
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": EVENT_DETAIL_TYPE,
        "source": EVENT_SOURCE,
        "account": account,
        "time": now,
        "region": region,
        "resources": [],
        "detail": {
            "jobRunId": job_run["jobRunId"],
            "applicationId": job_run["applicationId"],
            "arn": arn,
            "releaseLabel": job_run.get("releaseLabel", ""),
            "state": job_run["state"],
            "previousState": previous,
            "createdBy": f"arn:aws:sts::{account}:assumed-role/emulator",
            "updatedAt": now,
            "createdAt": now,
        },
    }
