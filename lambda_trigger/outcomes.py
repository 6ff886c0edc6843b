"""What to do when one of this application's job runs ends: plain functions on plain data.

EventBridge delivers "EMR Serverless Job Run State Change" events; the watcher reads the run's
tags (``request.Attempt``) and how it ended (``end_of``), and decides: record a success,
resubmit a failed run while attempts remain, resubmit a run that timed out once with twice the
time, leave alone a run an operator cancelled, or give up and say so, once. Runs this pipeline
did not start (no ``pipeline`` tag) are ignored.

EMR Serverless ends a run as CANCELLED for two documented reasons only: "The CancelJobRun API
has requested job run cancellation, or the job run has timed out" (User Guide, "Job run
states"). GetJobRun gives the run's ``executionTimeoutMinutes`` and how long it took
(``totalExecutionDurationSeconds``, ``startedAt``/``endedAt``), so a cancelled run that lasted
its whole timeout timed out and any other was cancelled by someone calling CancelJobRun: an
operator (this pipeline never cancels). When in doubt it counts as a timeout: a timeout read as
a cancellation would be dropped silently, a cancellation read as a timeout is retried once.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fruits_contract import (
    DRIVER_STDOUT_LOG,
    EVENT_DETAIL_TYPE,
    EVENT_SOURCE,
    SOURCE_FLAGS,
    job_run_logs,
)
from lambda_trigger.request import RUN_ID_KEY, Attempt

FAILED = "FAILED"
CANCELLED = "CANCELLED"
SUCCESS = "SUCCESS"
# Not documented wording, only a hint in the safe direction (a timeout is retried once).
TIMEOUT_WORDS = ("timed out", "timeout")
TIMEOUT_RETRY_FACTOR = 2  # a run that timed out is resubmitted once, with this much more time
TIMEOUT_ADVICE = (
    "It ran out of its executionTimeoutMinutes: raise JOB_TIMEOUT_MINUTES (the functions' "
    "environment) or the stack's MaxExecutors, or submit smaller batches. "
)
ERASE_FLAG = "--erase"
# (what, next step) of a run that failed for good: [featurizing run, erase run].
ALERT_TEXT = (
    (
        "A featurization job run failed on every attempt; its photos have no rows yet.",
        "Read the driver log, fix the cause, then run "
        "`python -m fruits_ops.reconcile --stack STACK --submit` (or upload the "
        "batch again): the photos are submitted again.",
    ),
    (
        "An erase job run failed on every attempt; the photos it names still have rows.",
        "Read the driver log, fix the cause, then erase the keys of the source manifest "
        "again: `python -m fruits_ops.erase --stack STACK --keys FILE` (docs/erasure.md).",
    ),
)

Decision = Literal["record", "retry", "give_up", "leave", "ignore"]
# How a run ended: what the service says plus, for CANCELLED, who or what cancelled it.
End = Literal["succeeded", "failed", "timed out", "cancelled by an operator", "not ended"]
TIMED_OUT: End = "timed out"
BY_OPERATOR: End = "cancelled by an operator"


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
    """The run an EventBridge event is about, whatever its state; any other event, or one
    missing a field, raises NotAStateChange: the invocation fails with nothing done."""
    if event.get("source") != EVENT_SOURCE or event.get("detail-type") != EVENT_DETAIL_TYPE:
        raise NotAStateChange(
            f"expected {EVENT_SOURCE} / {EVENT_DETAIL_TYPE!r}, got {event.get('source')!r} / "
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


def _seconds(start: Any, stop: Any) -> float:
    if isinstance(start, datetime) and isinstance(stop, datetime):
        return (stop - start).total_seconds()
    return 0.0


def ran_seconds(job_run: dict[str, Any]) -> float:
    """The longest of the durations GetJobRun gives (the service's own, and start to end)."""
    start = job_run.get("startedAt") or job_run.get("createdAt")
    stop = job_run.get("endedAt") or job_run.get("updatedAt")
    return max(float(job_run.get("totalExecutionDurationSeconds") or 0), _seconds(start, stop))


def timed_out(job_run: dict[str, Any]) -> bool:
    """Whether the run lasted its ``executionTimeoutMinutes`` (or its details say it timed out)."""
    details = str(job_run.get("stateDetails") or "").lower()
    if any(word in details for word in TIMEOUT_WORDS):
        return True
    limit = job_run.get("executionTimeoutMinutes")
    return bool(limit) and ran_seconds(job_run) >= int(limit) * 60


def end_of(state: str, job_run: dict[str, Any]) -> End:
    """How the run ended, from the event's state and GetJobRun's ``jobRun``."""
    if state == SUCCESS:
        return "succeeded"
    if state == FAILED:
        return "failed"
    if state == CANCELLED:
        return TIMED_OUT if timed_out(job_run) else BY_OPERATOR
    return "not ended"


def decide(end: End, tags: dict[str, str], timed_out_before: bool = False) -> Outcome:
    """What to do with a run that ended so; ``timed_out_before``: an earlier attempt timed out.

    A failure is retried unchanged while attempts remain. A timeout is retried once, with
    ``longer_timeout`` (the same time would most likely run out again, and every minute of it
    is billed); a second one is given up and reported. An operator's cancellation is left
    alone: resubmitting it would undo what the operator asked for.
    """
    attempt = Attempt.from_tags(tags)
    if attempt is None or end == "not ended":
        return Outcome("ignore", attempt)
    if end == "succeeded":
        return Outcome("record", attempt)
    if end == BY_OPERATOR:
        return Outcome("leave", attempt)
    if attempt.may_retry and not (end == TIMED_OUT and timed_out_before):
        return Outcome("retry", attempt.next())
    return Outcome("give_up", attempt)


def longer_timeout(job_run: dict[str, Any], default: int) -> int:
    """The timeout of the resubmission of a run that timed out (the service's limit is 10^6)."""
    return int(job_run.get("executionTimeoutMinutes") or default) * TIMEOUT_RETRY_FACTOR


def source_flag_of(job_run: dict[str, Any]) -> tuple[str, str]:
    """(flag, value) of what a run reads, from its entry point's arguments; ("", "") if none."""
    arguments = job_run.get("jobDriver", {}).get("sparkSubmit", {}).get("entryPointArguments", [])
    for flag, value in itertools.pairwise(arguments):
        if flag in SOURCE_FLAGS:
            return flag, value
    return "", ""


def source_of(job_run: dict[str, Any]) -> str:
    """The manifest, erasure manifest or prefix a run reads."""
    return source_flag_of(job_run)[1]


def driver_log(job_run: dict[str, Any]) -> str:
    """Where the service puts the driver's Python output of this run, its traceback included
    (under the request's logUri; ``DRIVER_STDOUT_LOG`` says why stdout)."""
    log_uri = (
        job_run.get("configurationOverrides", {})
        .get("monitoringConfiguration", {})
        .get("s3MonitoringConfiguration", {})
        .get("logUri", "")
    )
    if not log_uri:
        return ""
    logs = job_run_logs(log_uri, job_run["applicationId"], job_run["jobRunId"])
    return f"{logs}/{DRIVER_STDOUT_LOG}"


def alert(
    job_run: dict[str, Any], attempts: list[str], attempt: Attempt, end: End = "failed"
) -> tuple[str, str]:
    """The SNS subject and message saying a run failed for good, with what to look at."""
    run_id = job_run.get("tags", {}).get(RUN_ID_KEY, job_run.get("name", ""))
    subject = f"fruits-features: run {run_id} failed {attempt.number} time(s), giving up"
    flag, source = source_flag_of(job_run)
    what, next_step = ALERT_TEXT[flag == ERASE_FLAG]
    message = {
        "what": what,
        "run_id": run_id,
        "source": source,
        "end": end,
        "execution_timeout_minutes": job_run.get("executionTimeoutMinutes"),
        "state": job_run.get("state"),
        "state_details": job_run.get("stateDetails", ""),
        "attempts": attempt.number,
        "job_run_ids": attempts or [job_run["jobRunId"]],
        "driver_log": driver_log(job_run),
        "application_id": job_run.get("applicationId"),
        "next": TIMEOUT_ADVICE * (end == TIMED_OUT) + next_step,
    }
    return subject[:100], json.dumps(message, indent=2)
