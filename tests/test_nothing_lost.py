"""Nothing lost, end to end, with the job runs executed as EMR Serverless would (emr_emulator):
a batch whose first attempt fails is resubmitted by the watcher and ends with one row per
photo; a batch that failed for good and a photo the S3 filter missed are exactly what the
reconcile command finds, and its --submit leaves no photo without a row."""

from __future__ import annotations

import json

from lambda_trigger import handler as trigger
from lambda_trigger import reconcile, watcher
from lambda_trigger.request import MODEL_FILE
from tests.conftest import needs_real_data
from tests.loopback import FakeContext, alerts, job_runs, poll_and_invoke, state_change
from tests.test_deploy_path import emulate, sample_photos, table
from tests.test_packaging import load

MISSED_BY_THE_FILTER = "raw/Kiwi/Phone Upload.Jpg"


def upload(stack, photos: dict[str, bytes]) -> dict | None:
    """Photos put in raw/, their notifications handled: the batch's new job run, if any."""
    before = {run["jobRunId"] for run in job_runs(stack)}
    for key, body in photos.items():
        stack.client("s3").put_object(Bucket=stack.bucket, Key=key, Body=body)
    while poll_and_invoke(stack, trigger.handler) is not None:
        pass
    new = [run for run in job_runs(stack) if run["jobRunId"] not in before]
    return new[0] if new else None


def ended(stack, job_run_id: str, state: str) -> str:
    return watcher.handler(state_change(stack, job_run_id, state), FakeContext())["decision"]


def receipt(stack, run_id: str) -> dict:
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=f"manifests/{run_id}.jobrun.json")
    return json.loads(body["Body"].read())


@needs_real_data()
def test_failed_runs_are_retried_and_reconcile_accounts_for_every_photo(
    stack, onnx_dist, tmp_path, capsys
):
    bucket, s3 = stack.bucket, stack.client("s3")
    assert (
        load("upload").main(["--artifacts", f"s3://{bucket}/artifacts", "--dist", str(onnx_dist)])
        == 0
    )
    photos = sample_photos()
    keys = sorted(photos)
    first_batch = {k: photos[k] for k in keys[:3]}
    doomed_batch = {k: photos[k] for k in keys[3:]}

    # 1. The first attempt fails (the model is missing from artifacts/), the watcher resubmits
    #    the same request as attempt 2, which runs once the model is back.
    model = s3.get_object(Bucket=bucket, Key=f"artifacts/{MODEL_FILE}")["Body"].read()
    s3.delete_object(Bucket=bucket, Key=f"artifacts/{MODEL_FILE}")
    run = upload(stack, first_batch)
    failed = emulate(stack, run["jobRunId"])
    assert failed["state"] == "FAILED", failed["stateDetails"]
    s3.put_object(Bucket=bucket, Key=f"artifacts/{MODEL_FILE}", Body=model)
    assert ended(stack, run["jobRunId"], failed["state"]) == "retry"
    retry = receipt(stack, run["name"])["job_run_id"]
    succeeded = emulate(stack, retry)
    assert succeeded["state"] == "SUCCESS", succeeded["stateDetails"]
    assert ended(stack, retry, "SUCCESS") == "record"
    rows = table(stack, f"output/features/run_id={run['name']}/")
    assert sorted(r["path"] for r in rows) == sorted(f"s3://{bucket}/{k}" for k in first_batch)
    ledger = receipt(stack, run["name"])
    assert ledger["state"] == "SUCCESS"
    assert [(a["attempt"], a["state"]) for a in ledger["attempts"]] == [
        (1, "FAILED"),
        (2, "SUCCESS"),
    ]

    # 2. Another batch fails on every attempt: one alert, and its photos have no row.
    doomed = upload(stack, doomed_batch)
    current = doomed["jobRunId"]
    while ended(stack, current, "FAILED") == "retry":
        current = receipt(stack, doomed["name"])["job_run_id"]
    assert len(alerts(stack)) == 1

    # 3. A photo whose suffix the notification filter does not list reaches no queue.
    assert upload(stack, {MISSED_BY_THE_FILTER: photos[keys[0]]}) is None

    # 4. Reconcile finds exactly those photos.
    out = tmp_path / "missing.jsonl"
    capsys.readouterr()
    assert reconcile.main(["--out", str(out)], env=stack.environment) == reconcile.EXIT_MISSING
    said = capsys.readouterr().out
    assert "objects 7: featurized 3, errored 0, missing 4" in said
    listed = [json.loads(line)["uri"] for line in out.read_text().splitlines()]
    expected = [*doomed_batch, MISSED_BY_THE_FILTER]
    assert listed == sorted(f"s3://{bucket}/{k}" for k in expected)

    # 5. --submit starts one run for them; once it ran, nothing is missing.
    assert reconcile.main(["--out", str(out), "--submit"], env=stack.environment) == 0
    (submitted,) = [r for r in job_runs(stack) if r["name"] not in (run["name"], doomed["name"])]
    result = emulate(stack, submitted["jobRunId"])
    assert result["state"] == "SUCCESS", result["stateDetails"]
    assert ended(stack, submitted["jobRunId"], "SUCCESS") == "record"
    capsys.readouterr()
    assert reconcile.main(["--out", str(out)], env=stack.environment) == 0
    assert "objects 7: featurized 7, errored 0, missing 0" in capsys.readouterr().out
