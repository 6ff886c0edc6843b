"""The watcher Lambda: when one of this pipeline's job runs ends, record, retry or raise the alarm.

EventBridge sends every SUCCESS, FAILED and CANCELLED state change of the application's job
runs here (template.yaml: ``JobRunEndedRule``). A failed or cancelled run is resubmitted as
it was (same manifest or prefix, same run id: the job overwrites its own partition) with the
next attempt's client token, until its ``last-attempt`` tag; then one SNS message says it
failed for good. The run's receipt records every attempt, so a repeated event does nothing
and a redelivered batch knows whether to start again.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambda_trigger import receipts
from lambda_trigger import settings as config
from lambda_trigger.outcomes import (
    Outcome,
    StateChange,
    alert,
    decide,
    parse_state_change,
    source_of,
)
from lambda_trigger.request import RUN_ID_KEY, Attempt, resubmission
from lambda_trigger.submit import now_iso

logger = Logger()
tracer = Tracer()
metrics = Metrics()

METRIC_NAMES = {
    "record": "JobRunsSucceeded",
    "retry": "JobRunsRetried",
    "give_up": "RunsFailedForGood",
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


def watch(change: StateChange, settings: config.Settings, s3: Any, emr: Any, sns: Any) -> Outcome:
    """Act on one ended job run; returns what was decided."""
    job_run = emr.get_job_run(applicationId=change.application_id, jobRunId=change.job_run_id)[
        "jobRun"
    ]
    outcome = decide(change.state, job_run.get("tags", {}))
    if outcome.decision == "ignore":
        logger.info(
            "job run ignored", extra={"job_run_id": change.job_run_id, "state": change.state}
        )
        return outcome
    run_id = job_run["tags"][RUN_ID_KEY]
    logger.set_correlation_id(run_id)
    bucket, key = settings.manifests.bucket, settings.manifests.key(f"{run_id}.jobrun.json")
    ended_as = Attempt.from_tags(job_run["tags"]) or Attempt()
    receipt = ledger(receipts.read(s3, bucket, key), job_run, ended_as)
    if receipts.ended(receipt, change.job_run_id) is not None:
        logger.info(
            "repeated event", extra={"job_run_id": change.job_run_id, "state": change.state}
        )
        return Outcome("ignore", outcome.attempt)
    details = job_run.get("stateDetails", "")
    receipt = receipts.finished(
        receipt,
        change.job_run_id,
        change.state,
        details,
        now_iso(),
        final=outcome.decision != "retry",
    )
    if outcome.decision == "retry" and outcome.attempt is not None:
        started = emr.start_job_run(**resubmission(job_run, outcome.attempt))["jobRunId"]
        receipt = receipts.submitted(
            receipt,
            run_id=run_id,
            application_id=job_run["applicationId"],
            source=source_of(job_run),
            images=receipt.get("images"),
            job_run_id=started,
            attempt=outcome.attempt,
            at=now_iso(),
        )
        logger.warning(
            "job run resubmitted",
            extra={
                "failed": change.job_run_id,
                "state": change.state,
                "details": details,
                "job_run_id": started,
                "attempt": outcome.attempt.number,
                "last_attempt": outcome.attempt.last,
            },
        )
    elif outcome.decision == "give_up" and outcome.attempt is not None:
        subject, message = alert(job_run, receipts.job_run_ids(receipt), outcome.attempt)
        if settings.alerts_topic_arn:
            sns.publish(TopicArn=settings.alerts_topic_arn, Subject=subject, Message=message)
        logger.error(
            "run failed for good", extra={"job_run_id": change.job_run_id, "details": details}
        )
    else:
        logger.info("job run succeeded", extra={"job_run_id": change.job_run_id})
    receipts.write(s3, bucket, key, receipt)
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
