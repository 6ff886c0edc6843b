"""The watcher: what happens to a batch after its job run ends.

Pure decisions first, then faults injected on loopback: the handler starts runs in the moto
server's EMR Serverless API, EventBridge's "Job Run State Change" events (in the shape
EMR Serverless sends them) are handed to the watcher as the Lambda service would, and the
alerts topic is read through an SQS queue subscribed to it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from fruits_contract import EVENT_DETAIL_TYPE, EVENT_SOURCE
from fruits_ops import backfill
from lambda_trigger import handler as trigger
from lambda_trigger import outcomes, receipts, watcher
from lambda_trigger import request as rq
from lambda_trigger.request import Attempt
from tests.loopback import (
    FakeContext,
    alerts,
    end_job_run,
    job_runs,
    poll_and_invoke,
    state_change,
)

IMAGE_KEYS = ["raw/Kiwi/a.jpg", "raw/Kiwi/b.jpg"]


# --- pure: what is decided --------------------------------------------------------------


def tags(attempt: int, last: int) -> dict[str, str]:
    return {"pipeline": "fruits-features", "run-id": "batch-1", **Attempt(attempt, last).tags()}


@pytest.mark.parametrize(
    ("end", "run_tags", "timed_out_before", "decision", "attempt"),
    [
        ("succeeded", tags(1, 3), False, "record", Attempt(1, 3)),
        ("failed", tags(1, 3), False, "retry", Attempt(2, 3)),
        ("failed", tags(2, 3), True, "retry", Attempt(3, 3)),  # earlier timeouts: not this one
        ("failed", tags(3, 3), False, "give_up", Attempt(3, 3)),
        ("failed", tags(1, 1), False, "give_up", Attempt(1, 1)),  # a backfill by hand
        ("timed out", tags(1, 3), False, "retry", Attempt(2, 3)),
        ("timed out", tags(2, 3), True, "give_up", Attempt(2, 3)),  # a timeout is retried once
        ("cancelled by an operator", tags(1, 3), False, "leave", Attempt(1, 3)),
        ("failed", {"team": "other"}, False, "ignore", None),  # not started by this pipeline
        ("not ended", tags(1, 3), False, "ignore", Attempt(1, 3)),
    ],
)
def test_decisions(end, run_tags, timed_out_before, decision, attempt):
    outcome = outcomes.decide(end, run_tags, timed_out_before)
    assert outcome == outcomes.Outcome(decision, attempt)


START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("state", "job_run", "end"),
    [
        ("SUCCESS", {}, "succeeded"),
        ("FAILED", {"executionTimeoutMinutes": 120}, "failed"),
        ("RUNNING", {}, "not ended"),
        # CancelJobRun after 10 minutes of 120: an operator (the pipeline never cancels)
        (
            "CANCELLED",
            {
                "executionTimeoutMinutes": 120,
                "totalExecutionDurationSeconds": 600,
                "startedAt": START,
                "endedAt": START + timedelta(minutes=10),
            },
            "cancelled by an operator",
        ),
        # the service's own duration reached the timeout
        (
            "CANCELLED",
            {"executionTimeoutMinutes": 120, "totalExecutionDurationSeconds": 7200},
            "timed out",
        ),
        # start to end reached it (queued time included: in doubt, a timeout)
        (
            "CANCELLED",
            {
                "executionTimeoutMinutes": 120,
                "totalExecutionDurationSeconds": 60,
                "createdAt": START,
                "updatedAt": START + timedelta(minutes=121),
            },
            "timed out",
        ),
        (
            "CANCELLED",
            {"stateDetails": "Job run timed out", "executionTimeoutMinutes": 120},
            "timed out",
        ),
    ],
)
def test_a_cancelled_run_timed_out_if_it_lasted_its_timeout_otherwise_an_operator_cancelled_it(
    state, job_run, end
):
    assert outcomes.end_of(state, job_run) == end


def test_an_event_that_is_not_a_job_run_state_change_is_refused():
    with pytest.raises(outcomes.NotAStateChange, match="EMR Serverless Job Run State Change"):
        outcomes.parse_state_change({"source": "aws.emr-serverless", "detail-type": "Other"})
    with pytest.raises(outcomes.NotAStateChange, match="'applicationId'"):
        outcomes.parse_state_change(
            {"source": EVENT_SOURCE, "detail-type": EVENT_DETAIL_TYPE, "detail": {}}
        )


@pytest.mark.parametrize(
    "source",
    [
        rq.for_backfill("s3://b/raw/"),
        rq.for_manifest("s3://b/manifests/batch-1.jsonl", b"{}\n"),
        rq.for_erasure("s3://b/manifests/erase-1.jsonl", b"{}\n"),
    ],
    ids=lambda source: source.flag,
)
def test_the_receipt_and_alert_name_what_every_kind_of_run_reads_and_what_to_do(source):
    deployment = rq.Deployment(
        "app", "role", "s3://b/artifacts", "s3://b/output", "s3://b/logs", ""
    )
    request = rq.start_job_run_request(deployment, source, source.run_id)
    job_run = {"jobRunId": "r1", "applicationId": "app", **request}  # as GetJobRun has it
    assert outcomes.source_of(job_run) == source.uri
    message = json.loads(outcomes.alert(job_run, ["r1"], Attempt())[1])
    assert message["source"] == source.uri
    erasing = source.flag == "--erase"
    assert ("fruits_ops.erase" in message["next"]) == erasing
    assert ("still have rows" in message["what"]) == erasing


def test_a_receipt_follows_every_attempt_to_the_end():
    first = receipts.submitted(
        None,
        run_id="batch-1",
        application_id="app",
        source="s3://b/manifests/batch-1.jsonl",
        images=2,
        job_run_id="r1",
        attempt=Attempt(1, 2),
        at="t0",
    )
    assert first["state"] == receipts.SUBMITTED and receipts.ended(first, "r1") is None
    failed = receipts.finished(first, "r1", "FAILED", "exit 1", "t1", final=False)
    assert failed["state"] == receipts.SUBMITTED and receipts.ended(failed, "r1") == "FAILED"
    second = receipts.submitted(
        failed,
        run_id="batch-1",
        application_id="app",
        source="",
        images=2,
        job_run_id="r2",
        attempt=Attempt(2, 2),
        at="t2",
    )
    assert receipts.job_run_ids(second) == ["r1", "r2"] and second["job_run_id"] == "r2"
    gave_up = receipts.finished(second, "r2", "CANCELLED", "timeout", "t3", final=True)
    assert receipts.failed_for_good(gave_up) and gave_up["submitted_at"] == "t0"
    done = receipts.finished(second, "r2", "SUCCESS", "", "t3", final=True)
    assert done["state"] == receipts.SUCCESS


# --- on loopback: faults injected ---------------------------------------------------------


def upload_batch(stack, keys: list[str]) -> dict:
    """Photos uploaded, their notifications handled: the batch's job run."""
    before = {run["jobRunId"] for run in job_runs(stack)}
    for key in keys:
        stack.client("s3").put_object(Bucket=stack.bucket, Key=key, Body=b"x")
    while poll_and_invoke(stack, trigger.handler) is not None:
        pass
    (run,) = [run for run in job_runs(stack) if run["jobRunId"] not in before]
    return run


def end(stack, job_run_id: str, state: str) -> dict:
    """EMR Serverless says the run ended: EventBridge invokes the watcher."""
    return watcher.handler(state_change(stack, job_run_id, state), FakeContext())


def receipt_of(stack, run_id: str) -> dict:
    key = f"manifests/{run_id}.jobrun.json"
    return json.loads(stack.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read())


def test_a_batch_failing_on_every_attempt_is_retried_then_alerted_once_and_never_looped(stack):
    run = upload_batch(stack, IMAGE_KEYS)
    run_id = run["name"]
    assert run["tags"]["attempt"] == "1" and run["tags"]["last-attempt"] == "3"
    current = run["jobRunId"]
    for attempt in (2, 3):
        assert end(stack, current, "FAILED")["decision"] == "retry"
        receipt = receipt_of(stack, run_id)
        assert receipt["attempt"] == attempt and receipt["state"] == receipts.SUBMITTED
        current = receipt["job_run_id"]
        resubmitted = next(r for r in job_runs(stack) if r["jobRunId"] == current)
        assert resubmitted["tags"]["attempt"] == str(attempt)
        # the same manifest and run id: the job overwrites its own partition
        assert resubmitted["jobDriver"] == run["jobDriver"] and resubmitted["name"] == run_id
    assert end(stack, current, "FAILED")["decision"] == "give_up"
    assert end(stack, current, "FAILED")["decision"] == "ignore"  # EventBridge repeats itself
    (message,) = alerts(stack)
    alert = json.loads(message["Message"])
    assert alert["run_id"] == run_id and alert["attempts"] == 3
    assert alert["source"] == f"s3://{stack.bucket}/manifests/{run_id}.jsonl"
    assert alert["job_run_ids"] == receipts.job_run_ids(receipt_of(stack, run_id))
    assert alert["driver_log"].endswith(f"/jobs/{current}/SPARK_DRIVER/stdout.gz")
    assert run_id in message["Subject"]
    assert len(job_runs(stack)) == 3
    assert receipt_of(stack, run_id)["state"] == receipts.FAILED

    # The same photos' notifications arrive again (or the photos are uploaded again): the
    # batch that failed for good is started again, as attempts 4 to 6, not skipped.
    again = upload_batch(stack, IMAGE_KEYS)
    assert again["name"] == run_id and again["tags"]["attempt"] == "4"
    assert again["tags"]["last-attempt"] == "6"
    assert receipt_of(stack, run_id)["state"] == receipts.SUBMITTED
    assert end(stack, again["jobRunId"], "SUCCESS")["decision"] == "record"
    assert receipt_of(stack, run_id)["state"] == receipts.SUCCESS
    assert alerts(stack) == []


def test_runs_this_pipeline_did_not_start_are_left_alone(stack):
    emr = stack.client("emr-serverless")
    foreign = emr.start_job_run(
        applicationId=stack.application_id,
        executionRoleArn=stack.job_role_arn,
        jobDriver={"sparkSubmit": {"entryPoint": "s3://elsewhere/job.py"}},
        tags={"team": "forecasting"},
    )["jobRunId"]
    assert end(stack, foreign, "FAILED")["decision"] == "ignore"
    assert len(job_runs(stack)) == 1 and alerts(stack) == []


@pytest.mark.parametrize(("retries", "runs"), [(0, 1), (1, 2)])
def test_a_backfill_by_hand_is_retried_only_when_asked(stack, capsys, retries, runs):
    raw = f"s3://{stack.bucket}/raw/"
    flags = ["--input", raw, "--retries", str(retries)]
    assert backfill.main(flags, env=stack.environment) == 0
    current = capsys.readouterr().out.strip().splitlines()[-1]
    decisions = []
    while True:
        decision = end(stack, current, "FAILED")["decision"]
        decisions.append(decision)
        if decision != "retry":
            break
        current = max(job_runs(stack), key=lambda r: int(r["tags"]["attempt"]))["jobRunId"]
    assert decisions == ["retry"] * retries + ["give_up"]
    assert len(job_runs(stack)) == runs
    (message,) = alerts(stack)
    assert json.loads(message["Message"])["source"] == raw


# --- on loopback: how a run ended, and faults around the alert -----------------------------


def test_an_event_for_a_job_run_the_service_does_not_know_is_logged_and_left_alone(stack, caplog):
    # GIVEN an end event for a job run the application does not have (never ours, or expired)
    upload_batch(stack, IMAGE_KEYS)
    # WHEN the watcher hears it
    outcome = end(stack, "00nosuchjobrun0", "FAILED")
    # THEN it says so in its log and does nothing: no exception (no Lambda retry), no run, no alert
    assert outcome["decision"] == "ignore"
    (logged,) = [r for r in caplog.records if r.getMessage() == "unknown job run left alone"]
    assert logged.job_run_id == "00nosuchjobrun0" and "ResourceNotFoundException" in logged.error
    assert len(job_runs(stack)) == 1 and alerts(stack) == []


def test_a_run_an_operator_cancels_is_left_alone_and_a_new_upload_starts_it_again(stack):
    # GIVEN a batch's run that an operator cancels through the API, 10 s into a 120 min timeout
    run = upload_batch(stack, IMAGE_KEYS)
    stack.client("emr-serverless").cancel_job_run(
        applicationId=stack.application_id, jobRunId=run["jobRunId"]
    )
    # WHEN the service reports it CANCELLED
    outcome = end(stack, run["jobRunId"], "CANCELLED")
    # THEN it is recorded and left alone: no resubmission, no alert
    assert outcome["decision"] == "leave"
    assert len(job_runs(stack)) == 1 and alerts(stack) == []
    receipt = receipt_of(stack, run["name"])
    assert receipt["state"] == receipts.CANCELLED
    assert receipt["attempts"][0]["end"] == "cancelled by an operator"
    # AND the same photos uploaded again are not skipped: the batch starts again
    again = upload_batch(stack, IMAGE_KEYS)
    assert again["name"] == run["name"] and again["tags"]["attempt"] == "2"


def test_a_run_that_timed_out_is_retried_once_with_twice_the_time_then_reported(stack):
    # GIVEN a batch's run that the service cancels when its timeout (120 min) runs out
    run = upload_batch(stack, IMAGE_KEYS)
    timeout = run["executionTimeoutMinutes"]
    end_job_run(stack, run["jobRunId"], "CANCELLED", ran_seconds=timeout * 60)
    # WHEN the watcher hears it
    assert end(stack, run["jobRunId"], "CANCELLED")["decision"] == "retry"
    # THEN it is resubmitted once, with twice the time
    (retry,) = [r for r in job_runs(stack) if r["jobRunId"] != run["jobRunId"]]
    assert retry["executionTimeoutMinutes"] == 2 * timeout
    assert retry["jobDriver"] == run["jobDriver"] and retry["tags"]["attempt"] == "2"
    # AND when that one times out too, attempts left or not, it is reported, not retried
    end_job_run(stack, retry["jobRunId"], "CANCELLED", ran_seconds=2 * timeout * 60)
    assert end(stack, retry["jobRunId"], "CANCELLED")["decision"] == "give_up"
    assert len(job_runs(stack)) == 2
    (message,) = alerts(stack)
    alert = json.loads(message["Message"])
    assert alert["end"] == "timed out" and alert["execution_timeout_minutes"] == 2 * timeout
    assert "JOB_TIMEOUT_MINUTES" in alert["next"]
    ends = [entry["end"] for entry in receipt_of(stack, run["name"])["attempts"]]
    assert ends == ["timed out", "timed out"]


def fail_once(client, event: str, armed=lambda params: True) -> list:
    """Make the client's next matching call fail once (after ``armed`` says so); returns the
    list the failure is appended to, for the test to check it happened."""
    failures: list = []

    def fail(params, **kwargs):
        if not failures and armed(params):
            failures.append(params)
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, event)

    client.meta.events.register(f"before-call.{event}", fail)
    return failures


def receipt_write(params) -> bool:
    return params.get("url_path", "").endswith(".jobrun.json") or ".jobrun.json" in str(
        params.get("url", "")
    )


@pytest.mark.parametrize("fault", ["receipt write after the publish", "receipt write", "publish"])
def test_a_run_that_failed_for_good_alerts_exactly_once_whatever_fails_around_the_alert(
    stack, fault
):
    # GIVEN a run on its last attempt (a backfill by hand, 1 of 1) that fails
    raw = f"s3://{stack.bucket}/raw/"
    assert backfill.main(["--input", raw], env=stack.environment) == 0
    (run,) = job_runs(stack)
    s3, _, sns = watcher.clients()
    published: list = []
    sns.meta.events.register("after-call.sns.Publish", lambda **kwargs: published.append(1))
    # AND one write or publish around the alert fails once
    if fault == "publish":
        failures = fail_once(sns, "sns.Publish")
    elif fault == "receipt write":
        failures = fail_once(s3, "s3.PutObject", receipt_write)
    else:
        failures = fail_once(s3, "s3.PutObject", lambda p: bool(published) and receipt_write(p))
    # WHEN the end event is delivered, and delivered again after the failure (Lambda retries
    # an asynchronous event that raised; EventBridge may repeat one anyway)
    decisions = []
    for _ in range(3):
        try:
            decisions.append(end(stack, run["jobRunId"], "FAILED")["decision"])
        except ClientError:
            decisions.append("raised")
    # THEN exactly one alert went out, and the receipt says so
    assert len(alerts(stack)) == 1
    assert receipt_of(stack, run["name"])["alert"] == receipts.ALERT_SENT
    if fault == "receipt write after the publish":
        assert failures == [] and decisions == ["give_up", "ignore", "ignore"]  # nothing to fail
    else:
        assert len(failures) == 1 and decisions == ["raised", "give_up", "ignore"]


def test_a_retry_whose_receipt_write_failed_is_not_started_twice(stack):
    # GIVEN a batch's failed run whose resubmission started, but the receipt write after it failed
    run = upload_batch(stack, IMAGE_KEYS)
    s3, _, _ = watcher.clients()
    failures = fail_once(s3, "s3.PutObject", receipt_write)
    with pytest.raises(ClientError):
        end(stack, run["jobRunId"], "FAILED")
    assert len(failures) == 1 and len(job_runs(stack)) == 2
    # WHEN the event is delivered again
    assert end(stack, run["jobRunId"], "FAILED")["decision"] == "retry"
    # THEN the same retry's client token gets the same job run back: still two runs
    runs = job_runs(stack)
    assert len(runs) == 2
    (retry,) = [r for r in runs if r["jobRunId"] != run["jobRunId"]]
    assert receipts.job_run_ids(receipt_of(stack, run["name"])) == [
        run["jobRunId"],
        retry["jobRunId"],
    ]
