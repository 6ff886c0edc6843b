"""What to do when one of this application's job runs ends: plain functions on plain data.

EventBridge delivers "EMR Serverless Job Run State Change" events; the watcher reads the run's
tags (``request.Attempt``) and decides: record a success, resubmit a failed or cancelled run
while attempts remain, or give up and say so, once. Runs this pipeline did not start (no
``pipeline`` tag) are left alone.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal

from lambda_trigger.request import RUN_ID_KEY, Attempt

DETAIL_TYPE = "EMR Serverless Job Run State Change"
SOURCE = "aws.emr-serverless"
FAILED_STATES = ("FAILED", "CANCELLED")
SUCCESS = "SUCCESS"
INPUT_FLAGS = ("--manifest", "--input")

Decision = Literal["record", "retry", "give_up", "ignore"]


class NotAStateChange(ValueError):
    """The event is not an EMR Serverless job run state change; nothing is done with it."""


@dataclass(frozen=True)
class StateChange:
    application_id: str
    job_run_id: str
    state: str


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    attempt: Attempt | None  # retry: the attempt to start; otherwise the one that ended


def parse_state_change(event: dict[str, Any]) -> StateChange:
    if event.get("source") != SOURCE or event.get("detail-type") != DETAIL_TYPE:
        raise NotAStateChange(
            f"expected {SOURCE} / {DETAIL_TYPE!r}, got {event.get('source')!r} / "
            f"{event.get('detail-type')!r}"
        )
    detail = event.get("detail") or {}
    try:
        return StateChange(
            application_id=str(detail["applicationId"]),
            job_run_id=str(detail["jobRunId"]),
            state=str(detail["state"]),
        )
    except KeyError as error:
        raise NotAStateChange(f"the event's detail has no {error.args[0]!r}") from None


def decide(state: str, tags: dict[str, str]) -> Outcome:
    attempt = Attempt.from_tags(tags)
    if attempt is None:
        return Outcome("ignore", None)
    if state == SUCCESS:
        return Outcome("record", attempt)
    if state in FAILED_STATES:
        return (
            Outcome("retry", attempt.next()) if attempt.may_retry else Outcome("give_up", attempt)
        )
    return Outcome("ignore", attempt)


def source_of(job_run: dict[str, Any]) -> str:
    """The manifest or prefix a run reads, from its entry point's arguments."""
    arguments = job_run.get("jobDriver", {}).get("sparkSubmit", {}).get("entryPointArguments", [])
    for flag, value in itertools.pairwise(arguments):
        if flag in INPUT_FLAGS:
            return value
    return ""


def driver_log(job_run: dict[str, Any]) -> str:
    """Where the service puts the driver's log of this run (the request's logUri)."""
    log_uri = (
        job_run.get("configurationOverrides", {})
        .get("monitoringConfiguration", {})
        .get("s3MonitoringConfiguration", {})
        .get("logUri", "")
    )
    if not log_uri:
        return ""
    return (
        f"{log_uri.rstrip('/')}/applications/{job_run['applicationId']}/jobs/"
        f"{job_run['jobRunId']}/SPARK_DRIVER/stderr.gz"
    )


def alert(job_run: dict[str, Any], attempts: list[str], attempt: Attempt) -> tuple[str, str]:
    """The SNS subject and message saying a run failed for good, with what to look at."""
    run_id = job_run.get("tags", {}).get(RUN_ID_KEY, job_run.get("name", ""))
    subject = f"fruits-features: run {run_id} failed {attempt.number} time(s), giving up"
    message = {
        "what": "A featurization job run failed on every attempt; its photos have no rows yet.",
        "run_id": run_id,
        "source": source_of(job_run),
        "state": job_run.get("state"),
        "state_details": job_run.get("stateDetails", ""),
        "attempts": attempt.number,
        "job_run_ids": attempts or [job_run["jobRunId"]],
        "driver_log": driver_log(job_run),
        "application_id": job_run.get("applicationId"),
        "next": (
            "Read the driver log, fix the cause, then run "
            "`python -m lambda_trigger.reconcile --stack STACK --submit` (or upload the "
            "batch again): the photos are submitted again."
        ),
    }
    return subject[:100], json.dumps(message, indent=2)
