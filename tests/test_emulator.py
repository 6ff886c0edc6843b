"""emr_emulator's pure core (what a request means to the service) and its S3 mirror on loopback.
The emulator running whole requests is tested in test_deploy_path.py."""

from __future__ import annotations

import hashlib
import json

import pytest

from emr_emulator.mirror import Mirror
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
    assert local_cluster(run.conf, 2) == "local-cluster[2,4,6144]"
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


def test_the_mirror_uploads_what_a_run_wrote_and_deletes_what_it_removed(stack, tmp_path):
    s3 = stack.client("s3")
    for key in ("output/old/part-0.parquet", "output/keep.json", "raw/Kiwi/a.jpg"):
        s3.put_object(Bucket=stack.bucket, Key=key, Body=b"before")
    s3.put_object(Bucket=stack.bucket, Key="raw/Empty/", Body=b"")
    mirror = Mirror(tmp_path)
    assert mirror.pull(s3, stack.bucket) == 3
    assert mirror.path(stack.bucket, "raw/Empty").is_dir()
    mirror.path(stack.bucket, "output/old/part-0.parquet").unlink()
    new = mirror.path(stack.bucket, "output/new/part-0.parquet")
    new.parent.mkdir(parents=True)
    new.write_bytes(b"after")
    (new.parent / ".part-0.parquet.crc").write_bytes(b"checksum")  # Hadoop's, not EMRFS'
    uploaded, deleted = mirror.push(s3, stack.bucket)
    assert uploaded == ["output/new/part-0.parquet"] and deleted == ["output/old/part-0.parquet"]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    keys = sorted(item["Key"] for page in pages for item in page.get("Contents", []))
    assert keys == ["output/keep.json", "output/new/part-0.parquet", "raw/Empty/", "raw/Kiwi/a.jpg"]


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
    assert cli.main(["--request", str(request), "--region", "eu-west-1"]) == cli.EXIT_BAD_REQUEST
    assert "is not KEY=VALUE" in capsys.readouterr().err
