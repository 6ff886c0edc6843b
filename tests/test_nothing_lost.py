"""Nothing lost, end to end, with the job runs executed as EMR Serverless would (emr_emulator):
a batch whose first attempt fails is resubmitted by the watcher and ends with one row per
photo; a batch that failed for good and a photo the S3 filter missed are exactly what the
reconcile command finds, and its --submit leaves no photo without a row. Keys Hadoop cannot
address as written go from S3 through the trigger's manifest into a job run (the local Spark
reading the bucket from a folder, as emr_emulator serves it) and each ends as its own error
row, which reconcile counts."""

from __future__ import annotations

import io
import json
from pathlib import Path

from emr_serverless_job import inputs
from emr_serverless_job.fruit_blobs import fruit_image
from fruits_build import upload as upload_artifacts
from fruits_contract import MODEL_FILE
from fruits_ops import reconcile
from lambda_trigger import handler as trigger
from lambda_trigger import watcher
from tests.conftest import needs_real_data
from tests.loopback import FakeContext, alerts, job_runs, keys, poll_and_invoke, state_change
from tests.test_deploy_path import emulate, sample_photos, table
from tests.test_job import run_job, s3_mount

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
        upload_artifacts.main(["--artifacts", f"s3://{bucket}/artifacts", "--dist", str(onnx_dist)])
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


SAME_KEY = "key has an empty folder name ('//'), which Hadoop would read as another key"
DOT_KEY = "key has a '.' or '..' folder, which Hadoop would read as another key"
# Keys S3 keeps as distinct objects, each with the reason its row must give. Hadoop's Path
# would read the first four as raw/Kiwi/a.jpg, raw/Kiwi/b.jpg, raw/c.jpg and output/d.jpg
# (photos below, outside this batch's reach only by name) and take "12:30.jpg" for a scheme.
UNADDRESSABLE = {
    "raw/Kiwi//a.jpg": SAME_KEY,
    "raw/./Kiwi/b.jpg": DOT_KEY,
    "raw/Kiwi/../c.jpg": DOT_KEY,
    "raw/../output/d.jpg": DOT_KEY,
    "raw/Kiwi/12:30.jpg": "key has a ':', which Hadoop reads as a URI scheme: rename the object",
    "raw/_drafts/a.jpg": inputs.HIDDEN_FOLDER,
    "raw/.trash/b.jpg": inputs.HIDDEN_FOLDER,
}
# What those keys would be read as: real photos, so a key read as another gets a feature row.
ADDRESSABLE = ["raw/Kiwi/a.jpg", "raw/Kiwi/b.jpg", "raw/c.jpg"]
OUTSIDE_RAW = "output/d.jpg"


def jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    fruit_image("Kiwi", index).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_keys_hadoop_cannot_address_become_their_own_error_rows_and_reconcile(
    stack, spark, tmp_path, capsys
):
    bucket, s3 = stack.bucket, stack.client("s3")
    photos = {key: jpeg(n) for n, key in enumerate([*UNADDRESSABLE, *ADDRESSABLE, OUTSIDE_RAW])}
    for key, body in photos.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    while poll_and_invoke(stack, trigger.handler) is not None:
        pass
    (run,) = job_runs(stack)
    manifest = f"manifests/{run['name']}.jsonl"
    lines = s3.get_object(Bucket=bucket, Key=manifest)["Body"].read().decode().splitlines()
    listed = sorted(json.loads(line)["uri"] for line in lines)
    assert listed == sorted(f"s3://{bucket}/{key}" for key in [*UNADDRESSABLE, *ADDRESSABLE])

    # The bucket as Hadoop sees it: a folder per bucket behind s3:// (emr_emulator's mount).
    # Only keys that are files there are copied; the others have no file of their own.
    mirror = tmp_path / "s3"
    addressable = [manifest, *ADDRESSABLE, OUTSIDE_RAW, *list(UNADDRESSABLE)[4:]]
    for key in addressable:
        target = mirror / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    with s3_mount(spark, mirror, bucket):
        report = run_job(
            spark, "--manifest", f"s3://{bucket}/{manifest}", "--output", f"s3://{bucket}/output"
        )
    assert (report.inputs, report.features, report.errors) == (10, 3, 7)

    # The run's tables go to the bucket as EMR would have written them; reconcile reads them.
    tables = mirror / bucket / "output"
    for path in sorted(tables.rglob("*.parquet")):
        s3.upload_file(str(path), bucket, f"output/{path.relative_to(tables).as_posix()}")
    features = table(stack, "output/features/")
    assert sorted(r["path"] for r in features) == sorted(f"s3://{bucket}/{k}" for k in ADDRESSABLE)
    errors = {r["path"]: r["reason"] for r in table(stack, "output/errors/")}
    assert errors == {f"s3://{bucket}/{key}": reason for key, reason in UNADDRESSABLE.items()}
    assert len(table(stack, "output/errors/")) == len(UNADDRESSABLE)

    capsys.readouterr()
    out = tmp_path / "missing.jsonl"
    assert reconcile.main(["--out", str(out)], env=stack.environment) == 0
    assert "objects 10: featurized 3, errored 7, missing 0" in capsys.readouterr().out
    assert not out.exists()
    assert OUTSIDE_RAW in keys(stack, "output/")  # never read, never written over
    assert Path(mirror / bucket / OUTSIDE_RAW).read_bytes() == photos[OUTSIDE_RAW]
