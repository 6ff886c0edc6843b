"""The watcher Lambda: when one of this pipeline's job runs ends, record, retry or raise the alarm.

EventBridge sends every SUCCESS, FAILED and CANCELLED state change of the application's job
runs here (template.yaml: ``JobRunEndedRule``). A failed run is resubmitted as it was (same
manifest or prefix, same run id: the job overwrites its own partition) with the retry's client
token, until its ``last-attempt`` tag; a run that timed out is resubmitted once, with twice its
timeout; then one SNS message says it failed for good. A run an operator cancelled is recorded
and left alone, and an event for a job run the service does not know is logged and dropped.
The run's receipt records every attempt, so a repeated event does nothing (or publishes the
alert a failed publish left unsent) and a redelivered batch knows whether to start again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from fruits_contract import now_iso, receipt_name
from lambda_trigger import receipts
from lambda_trigger import settings as config
from lambda_trigger.outcomes import (
    TIMED_OUT,
    End,
    Outcome,
    StateChange,
    alert,
    decide,
    end_of,
    longer_timeout,
    parse_state_change,
    source_of,
)
from lambda_trigger.request import RUN_ID_KEY, Attempt, resubmission

logger = Logger(use_rfc3339=True, utc=True)  # the keys and clock of fruits_contract.logs
tracer = Tracer()
metrics = Metrics()

METRIC_NAMES = {
    "record": "JobRunsSucceeded",
    "retry": "JobRunsRetried",
    "give_up": "RunsFailedForGood",
    "leave": "JobRunsCancelledByOperator",
}


@cache
def current_settings() -> config.Settings:
    return config.from_environment(os.environ)


@cache
def clients() -> tuple[Any, Any, Any]:
    return (
        boto3.client("s3", config=config.CLIENT_CONFIG),
        boto3.client("emr-serverless", config=config.CLIENT_CONFIG),
        boto3.client("sns", config=config.CLIENT_CONFIG),
    )


def ledger(
    receipt: receipts.Receipt | None, job_run: dict[str, Any], attempt: Attempt
) -> receipts.Receipt:
    """The run's receipt; a run the Lambda did not start (a backfill) gets one now."""
    if receipt is not None and job_run["jobRunId"] in receipts.job_run_ids(receipt):
        return receipt
    return receipts.submitted(
        receipt,
        run_id=job_run["tags"][RUN_ID_KEY],
        application_id=job_run["applicationId"],
        source=source_of(job_run),
        images=None,
        job_run_id=job_run["jobRunId"],
        attempt=attempt,
        at=now_iso(),
    )


def publish_alert(
    s3: Any,
    sns: Any,
    settings: config.Settings,
    key: str,
    receipt: receipts.Receipt,
    job_run: dict[str, Any],
    end: End,
) -> None:
    """One alert that the run failed for good, and nothing written after it.

    The receipt claims the alert before the publish, so an event repeated after a successful
    publish (whatever fails later) finds it sent. A publish that fails gives the claim back
    and raises: Lambda retries the event, which finds the alert due and publishes it.
    """
    bucket = settings.manifests.bucket
    attempt = Attempt.from_tags(job_run["tags"]) or Attempt()
    subject, message = alert(job_run, receipts.job_run_ids(receipt), attempt, end)
    receipts.write(s3, bucket, key, receipts.with_alert(receipt, receipts.ALERT_SENT, now_iso()))
    if not settings.alerts_topic_arn:
        return
    try:
        sns.publish(TopicArn=settings.alerts_topic_arn, Subject=subject, Message=message)
    except Exception:
        logger.exception("alert not published", extra={"job_run_id": job_run["jobRunId"]})
        unsent = receipts.with_alert(receipt, receipts.ALERT_UNSENT, now_iso())
        receipts.write(s3, bucket, key, unsent)
        raise


@dataclass(frozen=True)
class EndedRun:
    """One ended run of this pipeline, as every step below needs it: read once, passed along."""

    change: StateChange
    job_run: dict[str, Any]  # GetJobRun's ``jobRun``
    end: End
    run_id: str
    bucket: str
    key: str  # the run's receipt
    context: dict[str, Any]  # the fields every log line about the run carries

    @property
    def log_fields(self) -> dict[str, Any]:
        """The log fields once the end is recorded: the context, how it ended and why."""
        return {**self.context, "end": self.end, "details": self.job_run.get("stateDetails", "")}


def job_run_of(change: StateChange, emr: Any, context: dict[str, Any]) -> dict[str, Any] | None:
    """GetJobRun's ``jobRun``, or None (logged) for a run the service does not know."""
    try:
        return emr.get_job_run(applicationId=change.application_id, jobRunId=change.job_run_id)[
            "jobRun"
        ]
    except emr.exceptions.ResourceNotFoundException as error:
        # Not a run of this application (any more): nothing to retry, and raising would only
        # make Lambda repeat the event twice and fire the watcher's error alarm.
        logger.warning("unknown job run left alone", extra={**context, "error": str(error)})
        return None


def ended_run(
    change: StateChange,
    job_run: dict[str, Any],
    end: End,
    settings: config.Settings,
    context: dict[str, Any],
) -> EndedRun:
    """The run as this pipeline's: every later log line carries its run id."""
    run_id = job_run.get("tags", {})[RUN_ID_KEY]
    logger.set_correlation_id(run_id)
    bucket, key = settings.manifests.bucket, settings.manifests.key(receipt_name(run_id))
    return EndedRun(change, job_run, end, run_id, bucket, key, context)


def repeated_event(
    run: EndedRun,
    receipt: receipts.Receipt,
    outcome: Outcome,
    ended_as: Attempt,
    settings: config.Settings,
    s3: Any,
    sns: Any,
) -> Outcome:
    """An end already recorded: nothing to do, unless the alert a failed publish left is due."""
    if receipts.alert_due(receipt, run.change.job_run_id):
        publish_alert(s3, sns, settings, run.key, receipt, run.job_run, run.end)
        metrics.add_metric(name=METRIC_NAMES["give_up"], unit=MetricUnit.Count, value=1)
        logger.error("run failed for good, alert published on a repeated event", extra=run.context)
        return Outcome("give_up", ended_as)
    logger.info("repeated event", extra=run.context)
    return Outcome("ignore", outcome.attempt)


def record_end(run: EndedRun, receipt: receipts.Receipt, outcome: Outcome) -> receipts.Receipt:
    """The receipt with this attempt's end: final unless it is retried, left if cancelled."""
    return receipts.finished(
        receipt,
        run.change.job_run_id,
        run.change.state,
        run.job_run.get("stateDetails", ""),
        now_iso(),
        final=outcome.decision != "retry",
        end=run.end,
        left=outcome.decision == "leave",
    )


def resubmit(
    run: EndedRun,
    receipt: receipts.Receipt,
    attempt: Attempt,
    settings: config.Settings,
    s3: Any,
    emr: Any,
) -> None:
    """Start the run again as ``attempt`` (a timed-out one with longer), then receipt it."""
    request = resubmission(run.job_run, attempt)
    if run.end == TIMED_OUT:
        timeout = longer_timeout(run.job_run, settings.deployment.timeout_minutes)
        request["executionTimeoutMinutes"] = timeout
    started = emr.start_job_run(**request)["jobRunId"]
    receipt = receipts.submitted(
        receipt,
        run_id=run.run_id,
        application_id=run.job_run["applicationId"],
        source=source_of(run.job_run),
        images=receipt.get("images"),
        job_run_id=started,
        attempt=attempt,
        at=now_iso(),
    )
    receipts.write(s3, run.bucket, run.key, receipt)
    logger.warning(
        "job run resubmitted",
        extra={
            **run.log_fields,
            "failed": run.change.job_run_id,
            "job_run_id": started,
            "attempt": attempt.number,
            "last_attempt": attempt.last,
            "execution_timeout_minutes": request.get("executionTimeoutMinutes"),
        },
    )


def give_up(
    run: EndedRun, receipt: receipts.Receipt, settings: config.Settings, s3: Any, sns: Any
) -> None:
    """No attempt left: the one alert, with the end in the receipt."""
    publish_alert(s3, sns, settings, run.key, receipt, run.job_run, run.end)
    logger.error("run failed for good", extra=run.log_fields)


def leave(run: EndedRun, receipt: receipts.Receipt, s3: Any) -> None:
    """An operator cancelled it: recorded, and not started again."""
    receipts.write(s3, run.bucket, run.key, receipt)
    logger.warning("job run cancelled by an operator, left alone", extra=run.log_fields)


def record(run: EndedRun, receipt: receipts.Receipt, s3: Any) -> None:
    """It succeeded: recorded, nothing more to do."""
    receipts.write(s3, run.bucket, run.key, receipt)
    logger.info("job run succeeded", extra=run.log_fields)


def watch(change: StateChange, settings: config.Settings, s3: Any, emr: Any, sns: Any) -> Outcome:
    """Act on one ended job run; returns what was decided."""
    context = {"job_run_id": change.job_run_id, "state": change.state}
    job_run = job_run_of(change, emr, context)
    if job_run is None:
        return Outcome("ignore", None)
    end = end_of(change.state, job_run)
    tags = job_run.get("tags", {})
    outcome = decide(end, tags)
    if outcome.decision == "ignore":
        logger.info("job run ignored", extra=context)
        return outcome
    run = ended_run(change, job_run, end, settings, context)
    ended_as = Attempt.from_tags(tags) or Attempt()
    receipt = ledger(receipts.read(s3, run.bucket, run.key), job_run, ended_as)
    if receipts.ended(receipt, change.job_run_id) is not None:
        return repeated_event(run, receipt, outcome, ended_as, settings, s3, sns)
    if end == TIMED_OUT and receipts.any_ended(receipt, TIMED_OUT):
        outcome = decide(end, tags, timed_out_before=True)
    receipt = record_end(run, receipt, outcome)
    if outcome.decision == "retry" and outcome.attempt is not None:
        resubmit(run, receipt, outcome.attempt, settings, s3, emr)
    elif outcome.decision == "give_up":
        give_up(run, receipt, settings, s3, sns)
    elif outcome.decision == "leave":
        leave(run, receipt, s3)
    else:
        record(run, receipt, s3)
    metrics.add_metric(name=METRIC_NAMES[outcome.decision], unit=MetricUnit.Count, value=1)
    return outcome


@metrics.log_metrics
@tracer.capture_lambda_handler
@logger.inject_lambda_context(clear_state=True)
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    settings = current_settings()  # a bad configuration stops here, before any side effect
    change = parse_state_change(event.raw_event)
    outcome = watch(change, settings, *clients())
    return {"job_run_id": change.job_run_id, "state": change.state, "decision": outcome.decision}
