"""The deployed path, run the way EMR Serverless runs it.

``./dev package`` builds the artifacts, ``./dev upload`` puts them in the moto server's bucket,
photos are uploaded, a backfill and the Lambda each start a job run through the moto EMR
Serverless API, and ``emr_emulator`` runs exactly those requests: the venv archive unpacked
as ``./environment`` for the driver and, by Spark, for each executor JVM in its own
directory; ``./environment/bin/python`` resolving to the archive's own ``bin/python3.11``, with
no Python of this machine's (the emulator answers for paths outside the archive as the EMR
Serverless image would: ``emr_emulator/image.py``); the entry point,
job package, model and archive read from ``s3://``; logs under the request's ``logUri``.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emr_emulator import __main__ as emulator_cli
from emr_emulator.run import run_job
from emr_serverless_job import job
from emr_serverless_job.config import parse_args
from fruits_build import build, pack, upload
from fruits_contract import ENTRY_POINT, JOB_PACKAGE, MODEL_FILE, VENV_ARCHIVE, logs
from fruits_ops import backfill
from lambda_trigger import handler as trigger
from lambda_trigger import sizing
from lambda_trigger.request import request_from_job_run
from tests.conftest import REAL_SAMPLE, needs_real_data
from tests.loopback import job_runs, keys, poll_and_invoke

ARCHIVE_PYTHON = ("environment", "bin", "python3.11")  # the archive's own
PHOTOS_PER_CLASS = 3
BROKEN_KEY = "raw/Kiwi/broken.jpg"


def sample_photos() -> dict[str, bytes]:
    """A few real photos of two classes, under the keys a grower's upload would have."""
    photos = {}
    for folder in sorted(p for p in REAL_SAMPLE.iterdir() if p.is_dir())[:2]:
        for photo in sorted(folder.glob("*.jpg"))[:PHOTOS_PER_CLASS]:
            photos[f"raw/{folder.name}/{photo.name}"] = photo.read_bytes()
    return photos


def emulate(stack, job_run_id: str) -> dict:
    """What EMR Serverless does with a submitted job run: run its request, end like GetJobRun."""
    submitted = stack.client("emr-serverless").get_job_run(
        applicationId=stack.application_id, jobRunId=job_run_id
    )["jobRun"]
    return run_job(
        request_from_job_run(submitted),
        stack.client("s3"),
        application_id=stack.application_id,
        job_run_id=job_run_id,
        release_label=submitted.get("releaseLabel"),
        # The run's own partitions, and the backfill's fitted model for the batch run to read.
        push=True,
        push_also=(f"s3://{stack.bucket}/output/pca_model/",),
    )


def table(stack, prefix: str) -> list[dict]:
    s3 = stack.client("s3")
    parts = [k for k in keys(stack, prefix) if k.endswith(".parquet")]
    rows = []
    for key in parts:
        body = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
        rows += pq.read_table(io.BytesIO(body)).to_pylist()
    return rows


def log_lines(stack, uri: str) -> list[str]:
    key = uri.removeprefix(f"s3://{stack.bucket}/")
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    return gzip.decompress(body).decode(errors="replace").splitlines()


def worker_events(stack, result: dict) -> list[dict]:
    """``model_built`` lines of the executors' logs (a line may follow Spark's progress bar)."""
    events = []
    for uri in result["emulator"]["logs"]:
        if "/SPARK_EXECUTOR/" in uri and uri.endswith("stderr.gz"):
            found = logs.parse("\n".join(log_lines(stack, uri)))
            events += [line for line in found if line["message"] == "model_built"]
    return events


@needs_real_data()
def test_photos_become_rows_when_run_as_emr_serverless_runs_the_deployed_artifacts(
    stack, onnx_dist, spark, tmp_path, capsys, monkeypatch
):
    bucket = stack.bucket
    assert upload.main(["--artifacts", f"s3://{bucket}/artifacts", "--dist", str(onnx_dist)]) == 0
    photos = sample_photos()
    broken = next(iter(photos.values()))[:400]
    s3 = stack.client("s3")
    for key, body in {**photos, BROKEN_KEY: broken, "raw/Kiwi/notes.txt": b"x"}.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    # 1. The first backfill, as the README's First deployment runs it: fits and saves the PCA.
    # Its size as a prefix too large to count gets it (every executor allowed, the large
    # executor), so that the emulator runs one large request and the batch below a small one;
    # a backfill of these 7 photos would be small (tests/test_backfill.py).
    with monkeypatch.context() as patched:  # undo this alone, not the stack's environment
        patched.setattr(sizing, "widest_work_vcpu_s", lambda executors, runtime="onnx": 0.0)
        assert backfill.main(["--input", f"s3://{bucket}/raw/"], env=stack.environment) == 0
    backfill_job = capsys.readouterr().out.strip().splitlines()[-1]
    first = emulate(stack, backfill_job)
    assert first["state"] == "SUCCESS", first["stateDetails"]
    assert first["emulator"]["master"].startswith("local-cluster[2,4,")

    # 2. The uploads' notifications: one batch, one job run started by the Lambda.
    invocation = poll_and_invoke(stack, trigger.handler)
    assert invocation is not None and invocation.response == {"batchItemFailures": []}
    (batch_run,) = [r for r in job_runs(stack) if r["jobRunId"] != backfill_job]
    second = emulate(stack, batch_run["jobRunId"])
    assert second["state"] == "SUCCESS", second["stateDetails"]
    # Sized to its batch (lambda_trigger/sizing.py): one small executor, not the backfill's.
    assert second["emulator"]["master"].startswith("local-cluster[2,2,")

    # One row per upload in each run: features for the photos, an error for the broken file.
    for run, executor_gb in ((first, 10), (second, 6)):
        # Held to the requested worker sizes (6 GB driver; a 10 GB executor for the backfill,
        # 6 GB for the batch) and within them.
        memory = run["emulator"]["memory"]
        assert memory["limitsMiB"] == {"driver": 6 * 1024, "executor": executor_gb * 1024}
        assert memory["killed"] == [] and memory["failedSamples"] == 0
        assert len(memory["peakMiB"]) == 3, memory["peakMiB"]  # the driver and 2 executors
        run_id = run["name"]
        features = table(stack, f"output/features/run_id={run_id}/")
        errors = table(stack, f"output/errors/run_id={run_id}/")
        assert sorted(r["path"] for r in features) == sorted(f"s3://{bucket}/{k}" for k in photos)
        assert [r["path"] for r in errors] == [f"s3://{bucket}/{BROKEN_KEY}"]
        assert errors[0]["reason"].startswith("corrupt or truncated image")
    backfilled = {r["path"]: r for r in table(stack, f"output/features/run_id={first['name']}/")}
    batched = {r["path"]: r for r in table(stack, f"output/features/run_id={second['name']}/")}
    for path, row in batched.items():  # the batch was projected by the backfill's saved model
        assert row["pca_features"] is not None
        np.testing.assert_allclose(row["pca_features"], backfilled[path]["pca_features"], atol=1e-5)

    # The same features as a direct local run of the same photos with the same model.
    for key, body in photos.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(body)
    local = tmp_path / "raw"
    # Spark ships a model by file name, once per session: this session's other tests use
    # mobilenet_v2.onnx for other models, so this copy gets a name of its own.
    model = tmp_path / "deploy-path-model.onnx"
    shutil.copyfile(onnx_dist / MODEL_FILE, model)
    output = str(tmp_path / "out")
    direct = parse_args(["--input", str(local), "--output", output, "--model", str(model)])
    job.run(direct, spark)
    direct_rows = pq.read_table(tmp_path / "out" / "features").to_pylist()
    assert len(direct_rows) == len(photos)
    for row in direct_rows:
        key = "raw/" + row["path"].split("/raw/", 1)[1]
        emulated = batched[f"s3://{bucket}/{key}"]["features"]
        np.testing.assert_allclose(emulated, row["features"], atol=1e-5)

    # Every Python process ran the archive's own interpreter, bin/python3.11 inside the
    # ./environment it was unpacked as: the driver from its working directory, each executor
    # from its own.
    for run in (first, second):
        report = json.loads(
            s3.get_object(Bucket=bucket, Key=f"output/reports/run_id={run['name']}/report.json")[
                "Body"
            ].read()
        )
        assert report["spark"]["driver_python"].endswith("/driver/environment/bin/python")
        resolved = Path(report["spark"]["driver_python_resolved"])
        assert resolved.parts[-3:] == ARCHIVE_PYTHON and resolved.parts[-4] == "driver"
        assert report["spark"]["driver_jit_max_tier"] == 1  # the request's JVM options
        # The emulator applies none of EMR's spark-defaults: its driver runs JDK 17's choice.
        collectors = report["spark"]["driver_gc"]
        assert collectors and all(isinstance(name, str) for name in collectors)
        assert report["spark"]["whole_stage_codegen"] == "false"  # job.configure_session
        events = worker_events(stack, run)
        assert events
        for event in events:
            resolved = Path(event["python_resolved"])
            assert resolved.parts[-3:] == ARCHIVE_PYTHON
            assert resolved.parent.parent.parent == Path(event["python"]).parents[2]
        folders = {Path(e["python"]).parents[2] for e in events}
        assert len(folders) == 2, folders  # two executors, each with its own ./environment
        assert all(Path(e["python"]).parts[-3:] == ("environment", "bin", "python") for e in events)
    driver_log = [u for u in second["emulator"]["logs"] if u.endswith("SPARK_DRIVER/stdout.gz")]
    expected = (
        f"s3://{bucket}/logs/applications/{stack.application_id}/jobs/"
        f"{batch_run['jobRunId']}/SPARK_DRIVER/stdout.gz"
    )
    assert driver_log == [expected]
    assert f"inputs {len(photos) + 1}: {len(photos)} featurized, 1 errors" in "\n".join(
        log_lines(stack, expected)
    )


def linked_archive(path: Path, target: str) -> Path:
    """An archive whose interpreter is a link out of it, as venv-pack or a hand edit makes."""
    with tarfile.open(path, "w:gz") as packed:
        for name, linkname in {"bin/python": "python3.11", "bin/python3.11": target}.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, linkname
            packed.addfile(info)
    return path


@pytest.mark.parametrize(
    ("target", "details"),
    [
        (
            "/usr/bin/python3",  # Debian's 3.11 here: this archive would have passed
            "runs /usr/bin/python3, Python 3.9 on the EMR Serverless 7.x image",
        ),
        (
            "/usr/bin/python3.11",
            "error=2, No such file or directory (emulated: /usr/bin/python3.11",
        ),
        ("/usr/local/bin/python3.11", "error=2, No such file or directory"),
        ("/usr/bin/python3.113.11", "error=2, No such file or directory"),  # venv-pack#14
    ],
    ids=["usr-bin-python3", "usr-bin-python3.11", "usr-local-bin", "venv-pack-prefix"],
)
def test_an_archive_whose_python_links_out_fails_the_run_as_it_would_on_emr(
    stack, tmp_path, capsys, target, details
):
    """The run is taken from the EMR Serverless API by the emulator's command line, as a user
    would; this machine's own Pythons do not stand in for the image's."""
    broken = linked_archive(tmp_path / VENV_ARCHIVE, target)
    assert pack.check_archive(broken).problems  # the build and upload refuse to ship it
    s3 = stack.client("s3")
    s3.upload_file(str(broken), stack.bucket, f"artifacts/{VENV_ARCHIVE}")
    package = build.job_package(tmp_path / JOB_PACKAGE)
    s3.upload_file(str(package), stack.bucket, f"artifacts/{JOB_PACKAGE}")
    s3.upload_file(str(build.JOB_SOURCES / "main.py"), stack.bucket, f"artifacts/{ENTRY_POINT}")
    assert backfill.main(["--input", f"s3://{stack.bucket}/raw/"], env=stack.environment) == 0
    (run,) = job_runs(stack)
    capsys.readouterr()
    command = ["--application-id", stack.application_id, "--job-run-id", run["jobRunId"], "--push"]
    assert emulator_cli.main(command) == emulator_cli.EXIT_FAILED
    result = json.loads(capsys.readouterr().out)
    assert result["state"] == "FAILED" and result["jobRunId"] == run["jobRunId"]
    assert result["emulator"]["sparkVersion"] == "3.5.5" and not result["emulator"]["warnings"]
    assert "PYSPARK_DRIVER_PYTHON: " in result["stateDetails"]
    assert details in result["stateDetails"]
    assert not keys(stack, "output/")  # nothing ran, nothing written
    (driver_log,) = [u for u in result["emulator"]["logs"] if u.endswith("SPARK_DRIVER/stderr.gz")]
    assert any(details in line for line in log_lines(stack, driver_log))
