"""emr_emulator's pure core (what a request means to the service), its S3 mirror on loopback
(which never harms the bucket), and one small run that keeps the driver's and the executors'
environments apart. The emulator running the deployed job is tested in test_deploy_path.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from emr_emulator.mirror import NOT_PUSHED, Mirror, PushScope, unsafe_key
from emr_emulator.run import EXECUTOR_MAIN, _container_environment, java_launcher, run_job
from emr_emulator.submit import (
    Archive,
    RequestError,
    launch,
    local_cluster,
    memory_mb,
    s3_mirror_conf,
    spark_submit_command,
)
from lambda_trigger.request import (
    Attempt,
    Deployment,
    for_manifest,
    request_from_job_run,
    resubmission,
    start_job_run_request,
)

DEPLOYMENT = Deployment(
    application_id="00fapp",
    job_role_arn="arn:aws:iam::111122223333:role/job",
    artifacts_uri="s3://bucket/artifacts",
    output_uri="s3://bucket/output",
    logs_uri="s3://logs-bucket/logs",
    weights_uri="s3://bucket/artifacts/mobilenet_v2_weights.h5",
    model_uri="s3://bucket/artifacts/mobilenet_v2.onnx",
)


def the_request() -> dict:
    source = for_manifest("s3://bucket/manifests/batch-1.jsonl", b"{}")
    return start_job_run_request(DEPLOYMENT, source, client_token="t")


def test_the_requests_confs_pass_unchanged_and_driver_env_becomes_the_drivers_environment():
    run = launch(the_request())
    assert run.entry_point == "s3://bucket/artifacts/main.py"
    assert run.arguments[:2] == ["--manifest", "s3://bucket/manifests/batch-1.jsonl"]
    assert run.options == ["--py-files", "s3://bucket/artifacts/emr_serverless_job.zip"]
    assert run.driver_env == {
        "PYSPARK_DRIVER_PYTHON": "./environment/bin/python",
        "PYSPARK_PYTHON": "./environment/bin/python",
        "JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1",
    }
    assert run.conf["spark.executorEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
    assert run.conf["spark.executor.cores"] == "4"
    assert not any(key.startswith("spark.emr-serverless.") for key in run.conf)
    assert run.archives == [
        Archive(uri="s3://bucket/artifacts/pyspark_venv.tar.gz", alias="environment")
    ]
    assert run.buckets == ["bucket"]  # the logs bucket is written, not mirrored


def test_emr_only_confs_and_service_options_are_dropped_by_name():
    request = the_request()
    driver = request["jobDriver"]["sparkSubmit"]
    driver["sparkSubmitParameters"] += (
        " --conf spark.emr-serverless.driver.disk=50g --master yarn --deploy-mode cluster"
        " --archives s3://bucket/extra.zip --verbose"
    )
    run = launch(request)
    assert run.dropped == {
        "spark.emr-serverless.driver.disk": "50g",
        "--master": "yarn",
        "--deploy-mode": "cluster",
    }
    assert run.archives[-1] == Archive(uri="s3://bucket/extra.zip", alias="extra.zip")
    assert run.options[-3:] == ["--archives", "s3://bucket/extra.zip", "--verbose"]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("--conf", "--conf has no value"),
        ("--conf spark.x", "is not KEY=VALUE"),
        ("py-files x", "is not a spark-submit option"),
    ],
)
def test_a_malformed_request_is_refused_before_anything_runs(parameters, message):
    request = the_request()
    request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"] = parameters
    with pytest.raises(RequestError, match=message):
        launch(request)
    with pytest.raises(RequestError, match=r"no jobDriver\.sparkSubmit"):
        launch({"jobDriver": {"hive": {}}})


def test_executors_are_shaped_like_the_request_and_s3_is_served_from_the_mirror():
    run = launch(the_request())
    memory = memory_mb(run.conf["spark.executor.memory"])  # the request's, whatever it is
    assert local_cluster(run.conf, 2) == f"local-cluster[2,4,{memory}]"
    assert local_cluster({}, 1) == "local-cluster[1,1,1024]"
    assert [memory_mb(v) for v in ("6g", "512m", "1t", "2147483648")] == [6144, 512, 1 << 20, 2048]
    with pytest.raises(RequestError, match="not a Spark memory size"):
        memory_mb("lots")
    service = s3_mirror_conf(run.buckets, "/tmp/m/")
    assert (
        service["spark.hadoop.fs.viewfs.mounttable.bucket.linkFallback"] == "file:///tmp/m/bucket"
    )
    command = spark_submit_command("spark-submit", run, "local-cluster[2,4,6144]", service)
    assert command[:3] == ["spark-submit", "--master", "local-cluster[2,4,6144]"]
    assert command[-len(run.arguments) - 1 :] == [run.entry_point, *run.arguments]
    confs = [command[i + 1] for i, token in enumerate(command) if token == "--conf"]
    assert f"spark.archives={run.conf['spark.archives']}" in confs
    assert not any("emr-serverless" in conf for conf in confs)


def test_a_submitted_job_run_reads_back_as_its_request_and_resubmits_as_the_next_attempt():
    request = the_request()
    job_run = {
        "applicationId": request["applicationId"],
        "executionRole": request["executionRoleArn"],
        "name": request["name"],
        "jobDriver": request["jobDriver"],
        "configurationOverrides": request["configurationOverrides"],
        "executionTimeoutMinutes": request["executionTimeoutMinutes"],
        "tags": request["tags"],
        "state": "SUCCESS",
        "jobRunId": "00fq5v3r1b2c3d4e",
    }
    assert request_from_job_run(job_run) == {k: v for k, v in request.items() if k != "clientToken"}
    again = resubmission(job_run, Attempt(2, 3))
    replaced = hashlib.sha256(b"00fq5v3r1b2c3d4e").hexdigest()[:12]  # names the run it replaces
    assert again["clientToken"] == f"{request['name']}-attempt-2-{replaced}"
    assert again["tags"] == {**request["tags"], "attempt": "2", "last-attempt": "3"}
    assert again["jobDriver"] == request["jobDriver"] and again["name"] == request["name"]


# Keys a grower's tools can make that a local folder cannot hold as they are.
HOSTILE_KEYS = {
    "raw/Kiwi//a.jpg": "'//'",
    "raw/Kiwi/./b.jpg": "'.' or '..' segment",
    "raw/../../x": "'.' or '..' segment",
    "raw/Kiwi/.notes.crc": "checksum file",
}


def bucket_state(s3, bucket: str) -> dict[str, tuple[bytes, str]]:
    """Every object's bytes and ETag, to compare a bucket before and after."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {
        item["Key"]: (s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read(), item["ETag"])
        for page in pages
        for item in page.get("Contents", [])
    }


def put_all(s3, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def test_unsafe_keys_are_named_and_ordinary_ones_pass():
    for key, why in HOSTILE_KEYS.items():
        assert why in unsafe_key(key), key
    for key in ("raw/Kiwi/a.jpg", "raw/Empty/", "output/features/run_id=x/part-0.parquet"):
        assert unsafe_key(key) is None, key
    assert "starts with '/'" in unsafe_key("/etc/passwd")


def test_the_mirror_leaves_out_keys_a_folder_cannot_hold_and_writes_nothing_outside_it(
    stack, tmp_path
):
    s3 = stack.client("s3")
    ordinary = {"raw/Kiwi/a.jpg": b"kiwi", "raw/Apple": b"a file named like a folder"}
    put_all(s3, stack.bucket, {**ordinary, **dict.fromkeys(HOSTILE_KEYS, b"hostile")})
    s3.put_object(Bucket=stack.bucket, Key="raw/Apple/b.jpg", Body=b"under the file's name")
    before = bucket_state(s3, stack.bucket)
    assert set(HOSTILE_KEYS) <= set(before)  # S3 (moto) keeps them as written
    root = tmp_path / "work" / "s3"
    mirror = Mirror(root)
    assert mirror.pull(s3, stack.bucket) == len(ordinary)
    skipped = {key: why for (_, key), why in mirror.skipped.items()}
    assert set(skipped) == {*HOSTILE_KEYS, "raw/Apple/b.jpg"}
    for key, why in HOSTILE_KEYS.items():
        assert why in skipped[key]
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    bucket = f"work/s3/{stack.bucket}"
    assert files == [f"{bucket}/raw/Apple", f"{bucket}/raw/Kiwi/a.jpg"]  # nothing outside
    with pytest.raises(ValueError, match="cannot be mirrored"):
        mirror.path(stack.bucket, "raw/../../x")
    # Nothing to push, so nothing changes: every object byte-identical, the hostile ones too.
    for scope in (None, PushScope.for_run(f"s3://{stack.bucket}/output", "r1", ["s3://x/y/"])):
        pushed = mirror.push(s3, stack.bucket, scope)
        assert pushed.uploaded == [] and pushed.refused == {}
    assert bucket_state(s3, stack.bucket) == before


def test_the_mirror_never_re_uploads_overwrites_or_deletes_what_the_run_did_not_write(
    stack, tmp_path
):
    s3 = stack.client("s3")
    put_all(
        s3,
        stack.bucket,
        {
            "raw/Kiwi/a.jpg": b"kiwi",
            "output/pca_model/current.json": b'{"version": "real"}',
            "output/features/run_id=r0/part-0.parquet": b"another run's rows",
            "output/features/run_id=r2/part-0.parquet": b"r2's rows from the service",
        },
    )
    before = bucket_state(s3, stack.bucket)
    mirror = Mirror(tmp_path)
    mirror.pull(s3, stack.bucket)
    local = lambda key: mirror.path(stack.bucket, key)  # noqa: E731
    local("raw/Kiwi/a.jpg").write_bytes(b"re-encoded by the run")
    local("output/pca_model/current.json").write_bytes(b'{"version": "fitted here"}')
    local("output/features/run_id=r0/part-0.parquet").unlink()
    local("output/features/run_id=r2/part-0.parquet").unlink()  # a rerun replaces its partition
    written = {
        "output/features/run_id=r1/part-0.parquet": b"r1",
        "output/errors/run_id=r1/part-0.parquet": b"r1 errors",
        "output/errors/run_id=r1/.part-0.parquet.crc": b"Hadoop's checksum",
        "output/features/run_id=r2/part-1.parquet": b"r2 again",
        "output/features/run_id=r3/part-0.parquet": b"another run id",
        "output/pca_model/versions/v9/projection.npz": b"a model fitted here",
        "output/late/x.json": b"exists in S3 by the time of the push",
    }
    for key, body in written.items():
        path = mirror.root / stack.bucket / key  # mirror.path refuses the checksum's name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    s3.put_object(Bucket=stack.bucket, Key="output/late/x.json", Body=b"someone else's")
    before["output/late/x.json"] = bucket_state(s3, stack.bucket)["output/late/x.json"]

    # Not asked: nothing at all.
    pushed = mirror.push(s3, stack.bucket)
    assert pushed.uploaded == []
    assert pushed.refused["output/features/run_id=r1/part-0.parquet"] == NOT_PUSHED
    assert bucket_state(s3, stack.bucket) == before

    # The run's own partitions (run id r2, then r1), and a prefix named in so many words.
    output = f"s3://{stack.bucket}/output"
    pushed = mirror.push(s3, stack.bucket, PushScope.for_run(output, "r2"))
    assert pushed.uploaded == []  # r2's partition held an object the run did not write
    assert (
        "held objects the run did not write"
        in pushed.refused["output/features/run_id=r2/part-1.parquet"]
    )
    also = [f"{output}/pca_model/", f"{output}/late/"]
    pushed = mirror.push(s3, stack.bucket, PushScope.for_run(output, "r1", also[:1]))
    assert pushed.uploaded == [
        "output/errors/run_id=r1/part-0.parquet",
        "output/features/run_id=r1/part-0.parquet",
    ]
    refused = pushed.refused
    # pca_model/ was named, but the run rewrote its pointer: none of that prefix goes.
    assert (
        "held objects the run did not write"
        in refused["output/pca_model/versions/v9/projection.npz"]
    )
    assert "not re-uploaded" in refused["raw/Kiwi/a.jpg"]
    assert "not re-uploaded" in refused["output/pca_model/current.json"]
    assert "not deleted" in refused["output/features/run_id=r0/part-0.parquet"]
    assert (
        "outside what the run may write back" in refused["output/features/run_id=r3/part-0.parquet"]
    )
    assert "outside" in refused["output/late/x.json"]
    late = mirror.push(s3, stack.bucket, PushScope.for_run(output, "r1", also)).refused
    assert "held objects the run did not write" in late["output/late/x.json"]
    after = bucket_state(s3, stack.bucket)
    assert {k: v for k, v in after.items() if k in before} == before  # untouched, every one
    assert set(after) - set(before) == set(pushed.uploaded)


def test_a_rerun_never_adds_files_to_a_partition_s3_already_holds(stack, tmp_path):
    """The mirror pulls only what a run reads, so a rerun's partition in S3 is not pulled: its
    new files beside the old ones would double the rows (EMR would replace them)."""
    s3 = stack.client("s3")
    put_all(s3, stack.bucket, {"output/features/run_id=r5/part-OLD.parquet": b"earlier rows"})
    before = bucket_state(s3, stack.bucket)
    mirror = Mirror(tmp_path)
    new = mirror.path(stack.bucket, "output/features/run_id=r5/part-NEW.parquet")
    new.parent.mkdir(parents=True, exist_ok=True)
    new.write_bytes(b"this run's rows")
    fresh = mirror.path(stack.bucket, "output/errors/run_id=r5/part-0.parquet")
    fresh.parent.mkdir(parents=True, exist_ok=True)
    fresh.write_bytes(b"this run's errors")
    pushed = mirror.push(s3, stack.bucket, PushScope.for_run(f"s3://{stack.bucket}/output", "r5"))
    assert pushed.uploaded == ["output/errors/run_id=r5/part-0.parquet"]
    assert (
        "a rerun on EMR replaces them"
        in pushed.refused["output/features/run_id=r5/part-NEW.parquet"]
    )
    after = bucket_state(s3, stack.bucket)
    assert {k: v for k, v in after.items() if k in before} == before


def test_a_run_pushes_nothing_unless_asked(stack, tmp_path):
    """The default run_job writes nothing to S3, not even logs (here a run that cannot fetch
    its archive, which ends before Spark starts)."""
    s3 = stack.client("s3")
    put_all(s3, stack.bucket, {"raw/Kiwi/a.jpg": b"kiwi", "artifacts/main.py": b"print(1)"})
    before = bucket_state(s3, stack.bucket)
    archive = f"s3://{stack.bucket}/artifacts/missing.tar.gz#environment"
    request = {
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": f"s3://{stack.bucket}/artifacts/main.py",
                "entryPointArguments": ["--output", f"s3://{stack.bucket}/output", "--run-id", "r"],
                "sparkSubmitParameters": f"--conf spark.archives={archive}",
            }
        },
        "configurationOverrides": {
            "monitoringConfiguration": {
                "s3MonitoringConfiguration": {"logUri": f"s3://{stack.bucket}/logs/"}
            }
        },
    }
    result = run_job(request, s3, workdir=tmp_path / "run", keep=True)
    assert result["state"] == "FAILED" and "could not fetch" in result["stateDetails"]
    assert result["emulator"]["logs"] == [] and result["emulator"]["pushScope"] == []
    assert (
        "IAM: every S3 call is allowed, whatever the job role says"
        in result["emulator"]["notEmulated"]
    )
    assert bucket_state(s3, stack.bucket) == before


def test_the_java_launcher_starts_executors_without_the_drivers_environment(tmp_path):
    """The mechanism, without Spark: a stand-in java prints its environment."""
    fake = tmp_path / "jdk"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "java").write_text("#!/bin/sh\nenv\n")
    (fake / "bin" / "java").chmod(0o755)
    request = the_request()
    request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"] = " ".join(
        [
            "--conf spark.emr-serverless.driverEnv.DRIVER_ONLY=d",
            "--conf spark.emr-serverless.driverEnv.BOTH=driver",
            "--conf spark.executorEnv.BOTH=executor",
            "--conf spark.emr-serverless.driverEnv.LANG=C",
        ]
    )
    run = launch(request)
    container = {**_container_environment(tmp_path / "home"), "JAVA_HOME": str(fake)}
    launcher = java_launcher(tmp_path, run, container)
    inherited = {**container, **run.driver_env, "JAVA_HOME": str(launcher), "BOTH": "executor"}

    def environment(*args: str) -> dict[str, str]:
        out = subprocess.run(
            [str(launcher / "bin" / "java"), *args],
            env=inherited,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    executor = environment("-cp", "x", EXECUTOR_MAIN, "--driver-url", "spark://d")
    assert "DRIVER_ONLY" not in executor
    assert executor["BOTH"] == "executor"  # spark.executorEnv wins, as Spark's worker set it
    assert executor["LANG"] == container["LANG"]  # the container's, not the driver's C
    assert executor["JAVA_HOME"] == str(fake)
    driver = environment("-cp", "x", "org.apache.spark.deploy.SparkSubmit")
    assert driver["DRIVER_ONLY"] == "d" and driver["LANG"] == "C"


PROBE = """
import json, os, sys, time
from pyspark.sql import SparkSession

NAMES = ("FRUITS_DRIVER_ONLY", "FRUITS_EXECUTOR_ONLY", "FRUITS_BOTH", "LANG")
args = sys.argv[1:]
output, run_id = args[args.index("--output") + 1], args[args.index("--run-id") + 1]
spark = SparkSession.builder.getOrCreate()
sc = spark.sparkContext
deadline = time.monotonic() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.monotonic() < deadline:
    time.sleep(0.5)  # the driver and both executors


def seen(_):
    values = {n: os.environ.get(n) for n in NAMES}
    yield json.dumps({"side": "executor", "cwd": os.getcwd(), **values})


rows = sc.parallelize(range(8), 8).mapPartitions(seen).collect()
rows.append(json.dumps({"side": "driver", **{n: os.environ.get(n) for n in NAMES}}))
sc.parallelize(rows, 1).saveAsTextFile(f"{output}/probe/run_id={run_id}")
# What a run may do that must not reach the bucket: a model of its own, a deleted partition.
sc.parallelize(["fitted here"], 1).saveAsTextFile(f"{output}/pca_model/stolen")
gone = sc._jvm.org.apache.hadoop.fs.Path(f"{output}/features/run_id=other")
gone.getFileSystem(sc._jsc.hadoopConfiguration()).delete(gone, True)
spark.stop()
"""


def test_one_run_keeps_driver_and_executor_environments_apart_and_leaves_the_bucket_alone(
    stack, tmp_path
):
    """One small Spark run on two executor JVMs, as the service would run its request."""
    s3 = stack.client("s3")
    bucket = stack.bucket
    put_all(
        s3,
        bucket,
        {
            "artifacts/probe.py": PROBE.encode(),
            "output/features/run_id=other/part-0.parquet": b"another run's rows",
            "output/pca_model/current.json": b'{"version": "real"}',
            **dict.fromkeys(HOSTILE_KEYS, b"hostile"),
        },
    )
    before = bucket_state(s3, bucket)
    confs = {
        "spark.emr-serverless.driverEnv.FRUITS_DRIVER_ONLY": "driver",
        "spark.emr-serverless.driverEnv.FRUITS_BOTH": "driver",
        "spark.emr-serverless.driverEnv.LANG": "C",
        "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": sys.executable,
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
        "spark.executorEnv.FRUITS_EXECUTOR_ONLY": "executor",
        "spark.executorEnv.FRUITS_BOTH": "executor",
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
    }
    request = {
        "name": "probe-1",
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": f"s3://{bucket}/artifacts/probe.py",
                "entryPointArguments": [
                    *("--input", f"s3://{bucket}/raw/"),  # copied, its hostile keys left out
                    *("--output", f"s3://{bucket}/output", "--run-id", "probe-1"),
                ],
                "sparkSubmitParameters": " ".join(f"--conf {k}={v}" for k, v in confs.items()),
            }
        },
        "configurationOverrides": {
            "monitoringConfiguration": {
                "s3MonitoringConfiguration": {"logUri": f"s3://{bucket}/logs/"}
            }
        },
        "executionTimeoutMinutes": 10,
    }
    result = run_job(
        request, s3, workdir=tmp_path / "run", keep=True, push=True, host_pythons=(sys.executable,)
    )
    assert result["state"] == "SUCCESS", result["stateDetails"]

    rows = [
        json.loads(line)
        for key in s3.list_objects_v2(Bucket=bucket, Prefix="output/probe/")["Contents"]
        for line in s3.get_object(Bucket=bucket, Key=key["Key"])["Body"].read().splitlines()
    ]
    (driver,) = [r for r in rows if r["side"] == "driver"]
    executors = [r for r in rows if r["side"] == "executor"]
    assert driver["FRUITS_DRIVER_ONLY"] == "driver" and driver["FRUITS_BOTH"] == "driver"
    assert driver["FRUITS_EXECUTOR_ONLY"] is None and driver["LANG"] == "C"
    assert len({Path(r["cwd"]).name for r in executors}) == 2  # both executor JVMs
    container_lang = os.environ.get("LANG", "C.UTF-8")
    for row in executors:
        assert row["FRUITS_DRIVER_ONLY"] is None, row  # the leak this run guards against
        assert row["FRUITS_EXECUTOR_ONLY"] == "executor" and row["FRUITS_BOTH"] == "executor"
        assert row["LANG"] == container_lang

    emulator = result["emulator"]
    assert sorted(emulator["uploaded"][bucket]) == [
        "output/probe/run_id=probe-1/_SUCCESS",
        "output/probe/run_id=probe-1/part-00000",
    ]
    refused = emulator["notPushed"][bucket]
    # A backfill reads nothing of the output: the partition it deletes was never copied.
    assert "output/features/run_id=other/part-0.parquet" not in refused
    assert not (tmp_path / "run" / "s3" / bucket / "output" / "features" / "run_id=other").exists()
    assert "outside" in refused["output/pca_model/stolen/part-00000"]
    assert set(emulator["notMirrored"]) == {f"s3://{bucket}/{k}" for k in HOSTILE_KEYS}
    assert not (tmp_path / "run" / "s3" / "x").exists() and not (tmp_path / "run" / "x").exists()
    assert emulator["logs"] and all(u.startswith(f"s3://{bucket}/logs/") for u in emulator["logs"])
    after = bucket_state(s3, bucket)
    assert {k: v for k, v in after.items() if k in before} == before  # every object as it was
    new = set(after) - set(before)
    assert new == set(emulator["uploaded"][bucket]) | {
        u.removeprefix(f"s3://{bucket}/") for u in emulator["logs"]
    }


def test_the_command_refuses_a_request_it_cannot_run_before_running_anything(tmp_path, capsys):
    from emr_emulator import __main__ as cli

    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "jobDriver": {
                    "sparkSubmit": {
                        "entryPoint": "s3://b/m.py",
                        "sparkSubmitParameters": "--conf spark.archives",
                    }
                }
            }
        )
    )
    local = ["--endpoint-url", "http://127.0.0.1:9"]
    assert cli.main(["--request", str(request), "--region", "eu-west-1", *local]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "endpoint", [[], ["--endpoint-url", "https://s3.eu-west-1.amazonaws.com"]], ids=["aws", "host"]
)
def test_the_command_refuses_an_endpoint_that_is_not_loopback_unless_told(
    tmp_path, capsys, monkeypatch, endpoint
):
    from emr_emulator import __main__ as cli

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"jobDriver": {"sparkSubmit": {"entryPoint": "x.py"}}}))
    assert cli.main(["--request", str(request), "--region", "eu-west-1", *endpoint]) == 2
    assert "not a loopback endpoint" in capsys.readouterr().err
    assert cli.is_loopback("http://127.0.0.1:5000") and cli.is_loopback("http://[::1]:5000")
    assert cli.is_loopback("http://localhost:5000") and not cli.is_loopback("http://10.0.0.1")


def test_a_run_that_cannot_read_its_bucket_fails_and_leaves_no_copy_behind(
    moto_server, tmp_path, capsys, monkeypatch
):
    """The request is fine, the bucket it names is not there: the run fails (exit 1, the
    service's S3 error quoted), it is no usage error (2) nor a traceback, and the working
    directory, which holds a copy of the bucket's photos, is removed all the same."""
    from emr_emulator import __main__ as cli

    moto_server.reset()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    request = tmp_path / "request.json"
    request.write_text(json.dumps(the_request()))
    endpoint = ["--endpoint-url", moto_server.endpoint]
    assert cli.main(["--request", str(request), "--region", "eu-west-1", *endpoint]) == 1
    error = capsys.readouterr().err
    assert "could not finish the run" in error and "NoSuchBucket" in error
    assert list(scratch.iterdir()) == []
