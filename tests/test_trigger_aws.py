"""The Lambda on loopback: real S3 notifications from the moto server's bucket reach its SQS
queue, a poller invokes the handler as the Lambda service would, and job runs land in its
EMR Serverless API. Nothing here needs Spark."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from urllib.parse import quote_plus

import pytest
from botocore.exceptions import ClientError

from lambda_trigger import handler as trigger
from lambda_trigger.settings import SettingsError
from tests.loopback import (
    FakeContext,
    job_runs,
    keys,
    poll_and_invoke,
    receive_batch,
    sqs_event,
)

IMAGE_KEYS = [
    "raw/Apple Braeburn/0_100.jpg",
    "raw/Apple Braeburn/my photo+1 (copy).jpg",
    "raw/Kiwi/pêche ü.png",
    "raw/Kiwi/UPPER.JPG",
]
NOT_DELIVERED = ["raw/Kiwi/notes.txt", "raw/Kiwi/", "incoming/a.jpg", "output/features/x.jpg"]


def upload(stack, keys_: list[str], body: bytes = b"x") -> None:
    s3 = stack.client("s3")
    for key in keys_:
        s3.put_object(Bucket=stack.bucket, Key=key, Body=body)


def drain(stack, batch_size: int | None = None) -> list:
    invocations = []
    while (invocation := poll_and_invoke(stack, trigger.handler, batch_size)) is not None:
        invocations.append(invocation)
    return invocations


def manifest_uris(stack, key: str) -> list[str]:
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    return [json.loads(line)["uri"] for line in body.decode().splitlines()]


def queue_event(stack, batch_size: int = 100) -> tuple[dict, list]:
    sqs = stack.client("sqs")
    messages = receive_batch(sqs, stack.queue_url, batch_size)
    arn = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["QueueArn"])
    return sqs_event(messages, arn["Attributes"]["QueueArn"]), messages


def test_uploads_become_one_manifest_and_one_job_run(stack):
    upload(stack, IMAGE_KEYS + NOT_DELIVERED)
    (invocation,) = drain(stack)
    assert invocation.error is None and invocation.response == {"batchItemFailures": []}
    # S3's own test event (sent when the notification was configured) plus one per image.
    assert invocation.messages == 1 + len(IMAGE_KEYS)

    (run,) = job_runs(stack)
    run_id = run["name"]
    manifests = keys(stack, "manifests/")
    assert sorted(manifests) == [f"manifests/{run_id}.jobrun.json", f"manifests/{run_id}.jsonl"]
    listed = manifest_uris(stack, f"manifests/{run_id}.jsonl")
    assert listed == sorted(f"s3://{stack.bucket}/{key}" for key in IMAGE_KEYS)
    for uri in listed:  # every listed key is a real object: decoded exactly once
        key = uri.removeprefix(f"s3://{stack.bucket}/")
        stack.client("s3").head_object(Bucket=stack.bucket, Key=key)

    driver = run["jobDriver"]["sparkSubmit"]
    assert driver["entryPoint"] == f"s3://{stack.bucket}/artifacts/main.py"
    args = driver["entryPointArguments"]
    assert args[:2] == ["--manifest", f"s3://{stack.bucket}/manifests/{run_id}.jsonl"]
    assert args[args.index("--run-id") + 1] == run_id
    assert run["executionRole"] == stack.job_role_arn
    receipt = json.loads(
        stack.client("s3")
        .get_object(Bucket=stack.bucket, Key=f"manifests/{run_id}.jobrun.json")["Body"]
        .read()
    )
    assert receipt["job_run_id"] == run["jobRunId"] and receipt["images"] == len(IMAGE_KEYS)


def test_a_redelivered_batch_starts_no_second_run(stack):
    upload(stack, IMAGE_KEYS)
    event, _ = queue_event(stack)
    first = trigger.handler(event, FakeContext())
    second = trigger.handler(event, FakeContext())  # as if the deletes had been lost
    assert first == second == {"batchItemFailures": []}
    assert len(job_runs(stack)) == 1
    assert len(keys(stack, "manifests/")) == 2


def test_a_poisoned_record_fails_alone(stack):
    upload(stack, IMAGE_KEYS[:2])
    poison = stack.client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody="{not json")
    (invocation,) = drain(stack)
    assert invocation.response == {"batchItemFailures": [{"itemIdentifier": poison["MessageId"]}]}
    (run,) = job_runs(stack)
    assert len(manifest_uris(stack, f"manifests/{run['name']}.jsonl")) == 2
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"  # back for a retry


def test_events_that_name_no_image_are_counted_and_start_nothing(stack, capfd, caplog):
    body = json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": stack.bucket}, "object": {"key": key, "size": 0}},
                }
                for key in ("raw/Kiwi/", "raw/Kiwi/notes.txt", "elsewhere/a.jpg")
            ]
        }
    )
    stack.client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody=body)
    (invocation,) = drain(stack)
    assert invocation.response == {"batchItemFailures": []}
    assert job_runs(stack) == [] and keys(stack, "manifests/") == []
    ignored = {r.object: r.reason for r in caplog.records if r.getMessage() == "object ignored"}
    assert ignored == {
        stack.bucket: "s3 test event",
        f"s3://{stack.bucket}/raw/Kiwi/": "folder marker",
        f"s3://{stack.bucket}/raw/Kiwi/notes.txt": (
            "not an image suffix (.jpg, .jpeg, .png, .webp, .heic, .heif)"
        ),
        f"s3://{stack.bucket}/elsewhere/a.jpg": "outside the raw prefix 'raw/'",
    }
    out = capfd.readouterr().out
    metrics = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    assert metrics[-1]["ObjectsIgnored"] == [4.0]  # the three above and S3's test event


def test_bad_configuration_stops_before_any_side_effect(stack, monkeypatch):
    upload(stack, IMAGE_KEYS[:1])
    monkeypatch.setenv("APPLICATION_ID", "Not-An-Id")
    monkeypatch.delenv("OUTPUT_URI")
    trigger.current_settings.cache_clear()
    (invocation,) = drain(stack)
    assert isinstance(invocation.error, SettingsError)
    assert "APPLICATION_ID: 'Not-An-Id'" in str(invocation.error)
    assert "OUTPUT_URI is not set" in str(invocation.error)
    assert keys(stack, "manifests/") == [] and job_runs(stack) == []
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "2"  # nothing acknowledged


def test_a_failed_submission_leaves_the_whole_batch_on_the_queue(stack, monkeypatch):
    upload(stack, IMAGE_KEYS)
    monkeypatch.setenv("APPLICATION_ID", "00nosuchapplication")
    trigger.current_settings.cache_clear()
    (invocation,) = drain(stack)
    assert invocation.error is not None and "00nosuchapplication" in str(invocation.error)
    assert [k for k in keys(stack, "manifests/") if k.endswith(".jobrun.json")] == []
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == str(1 + len(IMAGE_KEYS))


def notifications_like(stack, names: list[str]) -> list[dict]:
    """Messages for ``names`` in exactly the shape the server's S3 delivered for a real upload.

    moto's SQS slows down with queue length (1,000 receives of one message took 105 s with
    2,000 queued), so the 5,000 events are shaped after a real one and handed to the
    handler in the batches the event source mapping would make.
    """
    upload(stack, ["raw/Shape/model.jpg"])
    (real,) = [
        m for m in receive_batch(stack.client("sqs"), stack.queue_url, 10) if "Records" in m["Body"]
    ]
    shape = json.loads(real["Body"])
    messages = []
    for number, name in enumerate(names):
        body = copy.deepcopy(shape)
        body["Records"][0]["s3"]["object"]["key"] = quote_plus(name)  # as S3 encodes keys
        text = json.dumps(body)
        messages.append(
            {
                "MessageId": str(uuid.uuid4()),
                "ReceiptHandle": f"handle-{number}",
                "Body": text,
                "MD5OfBody": hashlib.md5(text.encode()).hexdigest(),
                "Attributes": real.get("Attributes", {}),
            }
        )
    return messages


def test_5000_upload_events_make_one_manifest_per_batch_and_lose_none(stack):
    total, batch_size = 5000, 1000
    names = [f"raw/Class {i % 7}/img {i}+{i}.jpg" for i in range(total)]
    messages = notifications_like(stack, names)
    arn = "arn:aws:sqs:eu-west-1:123456789012:uploads"
    for start in range(0, total, batch_size):
        event = sqs_event(messages[start : start + batch_size], arn)
        assert trigger.handler(event, FakeContext()) == {"batchItemFailures": []}
    runs = job_runs(stack)
    assert len(runs) == total // batch_size
    manifests = [k for k in keys(stack, "manifests/") if k.endswith(".jsonl")]
    assert sorted(manifests) == sorted(f"manifests/{run['name']}.jsonl" for run in runs)
    listed = [uri for key in manifests for uri in manifest_uris(stack, key)]
    assert len(listed) == len(set(listed)) == total
    assert set(listed) == {f"s3://{stack.bucket}/{name}" for name in names}


@pytest.mark.parametrize("field", ["APPLICATION_ID", "JOB_ROLE_ARN", "RAW_URI", "MANIFESTS_URI"])
def test_template_environment_is_complete(stack, field):
    assert stack.environment[field]


def start_request(stack, token: str, name: str = "run") -> dict:
    return {
        "applicationId": stack.application_id,
        "executionRoleArn": stack.job_role_arn,
        "jobDriver": {"sparkSubmit": {"entryPoint": f"s3://{stack.bucket}/artifacts/main.py"}},
        "clientToken": token,
        "name": name,
    }


def test_the_loopback_service_honours_client_tokens_as_emr_serverless_does(stack):
    """The harness itself: what the design relies on, modelled on the moto server."""
    emr = stack.client("emr-serverless")
    # GIVEN a run started with a client token
    first = emr.start_job_run(**start_request(stack, "token-1"))["jobRunId"]
    # WHEN the same call is repeated: THEN the first run comes back and nothing starts
    assert emr.start_job_run(**start_request(stack, "token-1"))["jobRunId"] == first
    assert len(job_runs(stack)) == 1
    # a new token is a new run; a used token with other parameters is refused
    assert emr.start_job_run(**start_request(stack, "token-2"))["jobRunId"] != first
    with pytest.raises(emr.exceptions.ConflictException):
        emr.start_job_run(**start_request(stack, "token-1", name="other"))
    # tokens belong to their application
    other = emr.create_application(name="other", releaseLabel="emr-7.5.0", type="SPARK")
    elsewhere = start_request(stack, "token-1") | {"applicationId": other["applicationId"]}
    assert emr.start_job_run(**elsewhere)["jobRunId"] != first
    assert len(job_runs(stack)) == 2


def test_two_deliveries_of_a_batch_racing_each_other_start_one_run(stack):
    # GIVEN a batch whose first delivery started its run but failed before writing the receipt
    upload(stack, IMAGE_KEYS)
    event, _ = queue_event(stack)
    s3 = trigger.clients()[0]
    failed: list = []

    def receipt_write_fails_once(params, **kwargs):
        if not failed and ".jobrun.json" in params["url"]:
            failed.append(params["url"])
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "Put")

    s3.meta.events.register("before-call.s3.PutObject", receipt_write_fails_once)
    with pytest.raises(ClientError):
        trigger.handler(event, FakeContext())
    (run,) = job_runs(stack)
    # WHEN the batch is delivered again before any receipt exists (as a racing delivery would)
    assert trigger.handler(event, FakeContext()) == {"batchItemFailures": []}
    # THEN the batch's client token gets the same run back: one run, named by the receipt
    assert [r["jobRunId"] for r in job_runs(stack)] == [run["jobRunId"]]
    body = s3.get_object(Bucket=stack.bucket, Key=f"manifests/{run['name']}.jobrun.json")["Body"]
    assert json.loads(body.read())["job_run_id"] == run["jobRunId"] and len(failed) == 1
