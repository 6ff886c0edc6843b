"""The watcher: what happens to a batch after its job run ends.

Pure decisions first, then faults injected on loopback: the handler starts runs in the moto
server's EMR Serverless API, EventBridge's "Job Run State Change" events (in the shape
EMR Serverless sends them) are handed to the watcher as the Lambda service would, and the
alerts topic is read through an SQS queue subscribed to it.
"""

from __future__ import annotations

import json

import pytest

from lambda_trigger import backfill, outcomes, receipts, watcher
from lambda_trigger import handler as trigger
from lambda_trigger.request import Attempt
from tests.loopback import FakeContext, alerts, job_runs, poll_and_invoke, state_change

IMAGE_KEYS = ["raw/Kiwi/a.jpg", "raw/Kiwi/b.jpg"]


# --- pure: what is decided --------------------------------------------------------------


def tags(attempt: int, last: int) -> dict[str, str]:
    return {"pipeline": "fruits-features", "run-id": "batch-1", **Attempt(attempt, last).tags()}


@pytest.mark.parametrize(
    ("state", "run_tags", "decision", "attempt"),
    [
        ("SUCCESS", tags(1, 3), "record", Attempt(1, 3)),
        ("FAILED", tags(1, 3), "retry", Attempt(2, 3)),
        ("CANCELLED", tags(2, 3), "retry", Attempt(3, 3)),
        ("FAILED", tags(3, 3), "give_up", Attempt(3, 3)),
        ("FAILED", tags(1, 1), "give_up", Attempt(1, 1)),  # a backfill by hand
        ("FAILED", {"team": "other"}, "ignore", None),  # not started by this pipeline
        ("RUNNING", tags(1, 3), "ignore", Attempt(1, 3)),
    ],
)
def test_decisions(state, run_tags, decision, attempt):
    assert outcomes.decide(state, run_tags) == outcomes.Outcome(decision, attempt)


def test_an_event_that_is_not_a_job_run_state_change_is_refused():
    with pytest.raises(outcomes.NotAStateChange, match="EMR Serverless Job Run State Change"):
        outcomes.parse_state_change({"source": "aws.emr-serverless", "detail-type": "Other"})
    with pytest.raises(outcomes.NotAStateChange, match="'applicationId'"):
        outcomes.parse_state_change(
            {"source": outcomes.SOURCE, "detail-type": outcomes.DETAIL_TYPE, "detail": {}}
        )


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
    assert end(stack, current, "CANCELLED")["decision"] == "give_up"
    assert end(stack, current, "CANCELLED")["decision"] == "ignore"  # EventBridge repeats itself
    (message,) = alerts(stack)
    alert = json.loads(message["Message"])
    assert alert["run_id"] == run_id and alert["attempts"] == 3
    assert alert["source"] == f"s3://{stack.bucket}/manifests/{run_id}.jsonl"
    assert alert["job_run_ids"] == receipts.job_run_ids(receipt_of(stack, run_id))
    assert alert["driver_log"].endswith(f"/jobs/{current}/SPARK_DRIVER/stderr.gz")
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
