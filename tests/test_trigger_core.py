"""The trigger's pure core: key decoding, filtering, manifests, settings and the request."""

from __future__ import annotations

import json
import re

import botocore.session
import pytest
from botocore.validate import validate_parameters

import fruits_contract as contract
from lambda_trigger import request as rq
from lambda_trigger.events import (
    Ignored,
    MalformedMessage,
    S3Object,
    decode_key,
    ignore_reason,
    parse_message,
)
from lambda_trigger.manifest import build_manifest
from lambda_trigger.settings import (
    SettingsError,
    deployment_from_environment,
    from_environment,
    parse_s3_location,
)

BUCKET = "fruits-prod-123456789012-eu-west-1"
ENV = {
    "APPLICATION_ID": "00fabc123def4567",
    "JOB_ROLE_ARN": "arn:aws:iam::123456789012:role/fruits-job",
    "RAW_URI": f"s3://{BUCKET}/raw/",
    "ARTIFACTS_URI": f"s3://{BUCKET}/artifacts",
    "MANIFESTS_URI": f"s3://{BUCKET}/manifests",
    "OUTPUT_URI": f"s3://{BUCKET}/output",
    "LOGS_URI": f"s3://{BUCKET}/logs",
}


def notification(*keys: str, event: str = "ObjectCreated:Put", bucket: str = BUCKET) -> str:
    """An S3 -> SQS message body as S3 sends it (keys already URL-encoded by the caller)."""
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": event,
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {"key": key, "size": 10, "eTag": "e", "sequencer": "0A"},
                    },
                }
                for key in keys
            ]
        }
    )


# --- keys and events ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("raw/Apple+Braeburn/0_100.jpg", "raw/Apple Braeburn/0_100.jpg"),
        ("raw/Kiwi/a%2Bb.jpg", "raw/Kiwi/a+b.jpg"),
        ("raw/Kiwi/a%20b.jpg", "raw/Kiwi/a b.jpg"),
        ("raw/Pomme/p%C3%AAche+%C3%BC.png", "raw/Pomme/pêche ü.png"),
        ("raw%2FKiwi%2F100%25.jpg", "raw/Kiwi/100%.jpg"),
    ],
)
def test_keys_are_url_decoded_once(encoded, decoded):
    assert decode_key(encoded) == decoded
    (obj,) = parse_message(notification(encoded))
    assert obj.key == decoded
    assert obj.uri == f"s3://{BUCKET}/{decoded}"


def test_s3_test_event_is_ignored_not_an_error():
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET})
    assert parse_message(body) == [Ignored(what=BUCKET, reason="s3 test event")]


@pytest.mark.parametrize(
    "body",
    ["not json", "[1, 2]", '{"Records": []}', '{"Records": [{"s3": {}}]}', '{"hello": 1}'],
)
def test_malformed_messages_raise_with_a_reason(body):
    with pytest.raises(MalformedMessage):
        parse_message(body)


def test_events_other_than_creations_and_removals_are_ignored():
    (item,) = parse_message(notification("raw/a.jpg", event="ObjectTagging:Put"))
    assert isinstance(item, Ignored)
    assert "ObjectTagging:Put" in item.reason


@pytest.mark.parametrize(
    ("bucket", "key", "reason"),
    [
        (BUCKET, "raw/Kiwi/a.JPG", None),
        (BUCKET, "raw/Kiwi/a.jpeg", None),
        (BUCKET, "raw/Kiwi/a.Png", None),
        (BUCKET, "raw/Kiwi/a.webp", None),
        (BUCKET, "raw/Kiwi/IMG_1.HEIC", None),  # an error row saying so, never silence
        (BUCKET, "raw/Kiwi/IMG_2.heif", None),
        (BUCKET, "raw/Kiwi/a.gif", "not an image suffix (.jpg, .jpeg, .png, .webp, .heic, .heif)"),
        (BUCKET, "raw/Kiwi/", "folder marker"),
        (BUCKET, "raw/Kiwi/notes.txt", "not an image suffix"),
        (BUCKET, "raw/Kiwi/a.jpg.part", "not an image suffix"),
        (BUCKET, "output/features/a.jpg", "outside the raw prefix"),
        (BUCKET, "rawfiles/a.jpg", "outside the raw prefix"),
        ("someone-else", "raw/a.jpg", "other bucket"),
    ],
)
def test_only_images_under_the_raw_prefix_are_accepted(bucket, key, reason):
    obj = S3Object(bucket, key, 1, None, "", "ObjectCreated:Put")
    got = ignore_reason(obj, BUCKET, "raw/")
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)


# --- manifests ------------------------------------------------------------------------------


def _obj(key: str, sequencer: str = "01", size: int = 5, etag: str = "e") -> S3Object:
    return S3Object(BUCKET, key, size, etag, sequencer, "ObjectCreated:Put")


def test_manifest_is_deterministic_deduplicated_and_in_the_job_format():
    a, b = _obj("raw/K/b.jpg"), _obj("raw/K/a b+c.jpg")
    first = build_manifest([a, b, a])
    again = build_manifest([b, a])
    assert first.body == again.body and first.run_id == again.run_id
    assert (first.images, first.duplicates) == (2, 1)
    lines = [json.loads(line) for line in first.body.decode().splitlines()]
    assert [line["uri"] for line in lines] == [
        f"s3://{BUCKET}/raw/K/a b+c.jpg",
        f"s3://{BUCKET}/raw/K/b.jpg",
    ]
    assert lines[0] == {"uri": f"s3://{BUCKET}/raw/K/a b+c.jpg", "size": 5, "etag": "e"}
    assert first.file_name == f"{first.run_id}.jsonl"


def test_manifest_keeps_the_latest_event_of_a_key():
    old = _obj("raw/K/a.jpg", sequencer="0055B", size=1, etag="old")
    new = _obj("raw/K/a.jpg", sequencer="0055C", size=2, etag="new")
    longer = _obj("raw/K/a.jpg", sequencer="0055C0", size=3, etag="newest")
    for order in ([old, new], [new, old]):
        assert json.loads(build_manifest(order).body)["etag"] == "new"
    assert json.loads(build_manifest([longer, new, old]).body)["etag"] == "newest"


def test_a_different_batch_is_a_different_run():
    assert build_manifest([_obj("raw/a.jpg")]).run_id != build_manifest([_obj("raw/b.jpg")]).run_id


def test_run_ids_are_the_ones_the_job_derives_itself():
    """If --run-id were dropped, the job would still name the same partition."""
    from emr_serverless_job.config import normalize_location
    from emr_serverless_job.inputs import content_digest

    manifest = build_manifest([_obj("raw/K/a.jpg")])
    assert manifest.run_id == f"batch-{content_digest(manifest.body)[:16]}"
    uri = f"s3://{BUCKET}/raw/"
    assert (
        contract.backfill_run_id(uri)
        == f"backfill-{content_digest(normalize_location(uri).encode())[:16]}"
    )


# --- settings -------------------------------------------------------------------------------


def test_settings_from_the_environment():
    settings = from_environment(ENV)
    assert settings.raw.bucket == BUCKET and settings.raw.prefix == "raw/"
    assert settings.manifests.key("x.jsonl") == "manifests/x.jsonl"
    d = settings.deployment
    assert d.weights_uri == f"s3://{BUCKET}/artifacts/{contract.WEIGHTS_FILE}"
    assert (d.image_size, d.max_executors, d.timeout_minutes) == (224, 3, 120)


def test_every_missing_variable_is_named():
    env = {k: v for k, v in ENV.items() if k not in ("APPLICATION_ID", "LOGS_URI")}
    with pytest.raises(SettingsError) as error:
        from_environment(env)
    assert "APPLICATION_ID is not set" in str(error.value)
    assert "LOGS_URI is not set" in str(error.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RAW_URI", "https://bucket/raw", "RAW_URI: 'https://bucket/raw' is not an s3://"),
        ("JOB_ROLE_ARN", "fruits-job", "JOB_ROLE_ARN: 'fruits-job' is not an IAM role ARN"),
        ("APPLICATION_ID", "App-1", "APPLICATION_ID: 'App-1' is not an EMR Serverless"),
        ("IMAGE_SIZE", "200", "IMAGE_SIZE: 200 is not one of 96, 128"),
        ("IMAGE_SIZE", "big", "IMAGE_SIZE: 'big' is not a whole number"),
        ("MAX_EXECUTORS", "0", "MAX_EXECUTORS: 0 is not between 1 and 1000"),
        ("WEIGHTS_URI", f"s3://{BUCKET}", "WEIGHTS_URI: "),
        ("RUNTIME", "torch", "RUNTIME: 'torch' is not one of onnx, tensorflow"),
    ],
)
def test_malformed_variables_are_named(name, value, message):
    with pytest.raises(SettingsError, match=None) as error:
        from_environment(ENV | {name: value})
    assert message in str(error.value)


def test_backfill_needs_only_the_job_side():
    env = {k: v for k, v in ENV.items() if k not in ("RAW_URI", "MANIFESTS_URI")}
    assert deployment_from_environment(env).application_id == ENV["APPLICATION_ID"]


def test_s3_locations():
    assert parse_s3_location("s3://b-1/a/b/").prefix == "a/b/"
    assert parse_s3_location("s3://b-1").prefix == ""
    with pytest.raises(ValueError):
        parse_s3_location("s3://B_ad/x")


# --- the StartJobRun request ----------------------------------------------------------------


def _conf(request: dict) -> dict[str, str]:
    tokens = request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"].split()
    pairs = zip(tokens[::2], tokens[1::2], strict=True)
    return dict(value.split("=", 1) for flag, value in pairs if flag == "--conf")


def _manifest_request() -> dict:
    deployment = from_environment(ENV).deployment
    body = build_manifest([_obj("raw/K/a.jpg")]).body
    source = rq.for_manifest(f"s3://{BUCKET}/manifests/x.jsonl", body)
    return rq.start_job_run_request(deployment, source, client_token=source.run_id)


def test_request_is_valid_for_the_emr_serverless_api():
    model = botocore.session.get_session().get_service_model("emr-serverless")
    shape = model.operation_model("StartJobRun").input_shape
    validate_parameters(_manifest_request(), shape)  # raises on a wrong key or type


def test_request_runs_the_entry_point_in_the_venv_archive():
    request = _manifest_request()
    driver = request["jobDriver"]["sparkSubmit"]
    assert driver["entryPoint"] == f"s3://{BUCKET}/artifacts/main.py"
    args = driver["entryPointArguments"]
    assert args[:2] == ["--manifest", f"s3://{BUCKET}/manifests/x.jsonl"]
    assert args[args.index("--output") + 1] == f"s3://{BUCKET}/output"
    # ONNX Runtime by default; the model decides the image size, so none is passed.
    assert args[args.index("--runtime") + 1] == "onnx"
    assert args[args.index("--model") + 1] == f"s3://{BUCKET}/artifacts/{contract.MODEL_FILE}"
    assert "--weights" not in args and "--image-size" not in args
    assert args[args.index("--run-id") + 1] == request["name"] == request["clientToken"]
    assert "--py-files s3://" in driver["sparkSubmitParameters"]
    conf = _conf(request)
    assert conf["spark.archives"] == f"s3://{BUCKET}/artifacts/pyspark_venv.tar.gz#environment"
    for key in (
        "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON",
        "spark.emr-serverless.driverEnv.PYSPARK_PYTHON",
        "spark.executorEnv.PYSPARK_PYTHON",
    ):
        assert conf[key] == "./environment/bin/python"
    for key in (
        "spark.emr-serverless.driverEnv.JAVA_TOOL_OPTIONS",
        "spark.executorEnv.JAVA_TOOL_OPTIONS",
    ):
        assert conf[key] == contract.JVM_OPTIONS
    logs = request["configurationOverrides"]["monitoringConfiguration"]
    assert logs["s3MonitoringConfiguration"]["logUri"] == f"s3://{BUCKET}/logs/"


def test_tensorflow_runtime_passes_weights_and_image_size():
    deployment = from_environment(ENV | {"RUNTIME": "tensorflow", "IMAGE_SIZE": "128"}).deployment
    request = rq.start_job_run_request(deployment, rq.for_backfill("s3://b/raw/"), "token")
    args = request["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert args[args.index("--runtime") + 1] == "tensorflow"
    assert args[args.index("--weights") + 1] == f"s3://{BUCKET}/artifacts/{contract.WEIGHTS_FILE}"
    assert args[args.index("--image-size") + 1] == "128"
    assert "--model" not in args


def _gigabytes(size: str) -> float:
    assert size[-1] == "g"
    return float(size[:-1])


@pytest.mark.parametrize(("runtime", "python_worker_gb"), [("onnx", 0.86), ("tensorflow", 1.65)])
def test_executor_and_driver_fit_emr_serverless_worker_sizes(runtime, python_worker_gb):
    """4 vCPU workers take 8-30 GB, 2 vCPU 4-16 GB; each Python worker (one per core) holds
    the model in the executor's memory overhead (sizes measured in BENCHMARKS.md)."""
    deployment = from_environment(ENV | {"RUNTIME": runtime}).deployment
    conf = _conf(rq.start_job_run_request(deployment, rq.for_backfill("s3://b/raw/"), "t"))
    executor = _gigabytes(conf["spark.executor.memory"]) + _gigabytes(
        conf["spark.executor.memoryOverhead"]
    )
    assert conf["spark.executor.cores"] == "4" and 8 <= executor <= 30
    assert _gigabytes(conf["spark.executor.memoryOverhead"]) >= 4 * python_worker_gb
    driver = _gigabytes(conf["spark.driver.memory"]) + _gigabytes(
        conf["spark.driver.memoryOverhead"]
    )
    assert conf["spark.driver.cores"] == "2" and 4 <= driver <= 16
    assert int(conf["spark.default.parallelism"]) == 3 * 4


def test_backfill_and_batch_requests_differ_only_where_they_mean_to():
    deployment = from_environment(ENV).deployment
    batch = _manifest_request()
    backfill = rq.start_job_run_request(
        deployment, rq.for_backfill(f"s3://{BUCKET}/raw/"), client_token="token"
    )
    for request in (batch, backfill):
        args = request["jobDriver"]["sparkSubmit"]["entryPointArguments"]
        del args[:2]
        args[args.index("--run-id") + 1] = "ID"
        request["name"] = request["clientToken"] = request["tags"]["run-id"] = "ID"
    assert batch == backfill


def test_client_tokens_are_one_per_submission_and_attempt_and_fit_the_api():
    """A retry's token names the job run it replaces: the same end maps to the same retry, two
    submissions of one run id (two backfills of a prefix) never share one."""
    model = botocore.session.get_session().get_service_model("emr-serverless")
    shape = model.operation_model("StartJobRun").input_shape.members["clientToken"]
    run_id = contract.backfill_run_id("s3://b/raw/")
    first = {"jobRunId": "00fexamplejobrun1", **_backfill_job_run(run_id)}
    second = {**first, "jobRunId": "00fexamplejobrun2"}
    tokens = [rq.resubmission(run, rq.Attempt(2, 3))["clientToken"] for run in (first, second)]
    assert tokens[0] != tokens[1]
    assert tokens[0] == rq.resubmission(first, rq.Attempt(2, 3))["clientToken"]
    assert tokens[0].startswith(f"{run_id}-attempt-2-")
    assert rq.client_token(run_id, rq.Attempt(1, 3)) == run_id  # a batch's first attempt
    assert rq.client_token(run_id, rq.Attempt(4, 6)) == f"{run_id}-attempt-4"  # started again
    longest = rq.client_token(run_id, rq.Attempt(999, 999), replaces="x" * 64)
    assert len(longest) <= shape.metadata["max"]
    assert all(re.fullmatch(shape.metadata["pattern"], t) for t in [*tokens, longest])


def _backfill_job_run(run_id: str) -> dict:
    """A GetJobRun ``jobRun`` of a backfill (the fields a resubmission repeats)."""
    deployment = from_environment(ENV).deployment
    request = rq.start_job_run_request(deployment, rq.for_backfill("s3://b/raw/"), "token")
    return {
        "applicationId": request["applicationId"],
        "executionRole": request["executionRoleArn"],
        "name": run_id,
        "jobDriver": request["jobDriver"],
        "tags": request["tags"],
    }
