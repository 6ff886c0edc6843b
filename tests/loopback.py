"""AWS on loopback for the tests: a moto server, the template's resources on it, and the Lambda
service's SQS poller. Job runs are executed by ``emr_emulator``, as EMR Serverless would.

Only the tests use this; the product talks to whatever ``AWS_ENDPOINT_URL`` names.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
STAGE = "test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A test-only route of the server: end a job run as EMR Serverless would (moto's runs never end).
END_JOB_RUN_PATH = "/_loopback/emr-serverless/end-job-run"


def _honour_client_tokens() -> None:
    """Make moto's EMR Serverless keep StartJobRun's idempotency promise, as the service does.

    moto ignores ``clientToken``. EMR Serverless documents it as "the client idempotency token
    of the job run to start" (API reference, StartJobRun; botocore marks it
    ``idempotencyToken``): a call that repeats a token already used on the same application
    gets the first call's job run back and starts nothing. A repeat with other parameters is
    refused with ``ConflictException`` (one of StartJobRun's documented errors; the AWS-wide
    convention for a reused token, as EMR Serverless does not spell it out). Runs also get
    their real start time (moto stamps midnight) and a cancelled run its end and duration, which
    the watcher reads to tell an operator's cancellation from a timeout. Runs in the server's
    process only, never in the product.
    """
    from moto.core.exceptions import JsonRESTError
    from moto.core.utils import utcnow
    from moto.emrserverless.models import EMRServerlessBackend

    start, cancel = EMRServerlessBackend.start_job_run, EMRServerlessBackend.cancel_job_run

    def start_job_run(self: Any, application_id: str, client_token: str, **request: Any) -> Any:
        tokens = self.__dict__.setdefault("loopback_client_tokens", {})
        if (application_id, client_token) in tokens:
            first, asked = tokens[application_id, client_token]
            if asked != request:
                raise ConflictError(f"client token {client_token!r} was used with other parameters")
            return first
        job_run = start(self, application_id=application_id, client_token=client_token, **request)
        job_run.created_at = job_run.updated_at = utcnow()
        tokens[application_id, client_token] = (job_run, request)
        return job_run

    def cancel_job_run(self: Any, application_id: str, job_run_id: str) -> tuple[str, str]:
        answer = cancel(self, application_id=application_id, job_run_id=job_run_id)
        ended(self.get_job_run(application_id, job_run_id), "CANCELLED", "", None)
        return answer

    class ConflictError(JsonRESTError):
        code = 409

        def __init__(self, message: str) -> None:
            super().__init__("ConflictException", message)

    EMRServerlessBackend.start_job_run = start_job_run  # type: ignore[method-assign]
    EMRServerlessBackend.cancel_job_run = cancel_job_run  # type: ignore[method-assign]


def ended(job_run: Any, state: str, details: str, ran_seconds: int | None) -> None:
    """A moto job run as the service leaves it at its end (``ran_seconds``: measured if None)."""
    from moto.core.utils import utcnow

    now = utcnow()
    job_run.state, job_run.state_details = state, details
    job_run.updated_at = job_run.ended_at = now
    job_run.started_at = job_run.created_at
    measured = int((now - job_run.created_at).total_seconds())
    job_run.total_execution_duration_seconds = measured if ran_seconds is None else ran_seconds


def _end_job_run_route(app: Any) -> Any:
    """``END_JOB_RUN_PATH`` in front of moto's app: a run ends with the state, details and
    duration the test asks for, as a run that failed or timed out on the service would."""

    def route(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != END_JOB_RUN_PATH:
            return app(environ, start_response)
        from moto.emrserverless.models import emrserverless_backends

        length = int(environ.get("CONTENT_LENGTH") or 0)
        asked = json.loads(environ["wsgi.input"].read(length))
        backend = emrserverless_backends[ACCOUNT][REGION]
        job_run = backend.get_job_run(asked["applicationId"], asked["jobRunId"])
        ended(job_run, asked["state"], asked.get("stateDetails", ""), asked.get("ranSeconds"))
        start_response("204 No Content", [])
        return [b""]

    return route


def serve(host: str, port: int) -> None:
    """moto's server (as ``python -m moto.server``) with client tokens honoured, in this process."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    _honour_client_tokens()
    app = _end_job_run_route(DomainDispatcherApplication(create_backend_app))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


class MotoServer:
    """A moto server in its own process on 127.0.0.1: real HTTP for real boto3 clients."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from tests.loopback import serve; serve('127.0.0.1', {self.port})",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def template() -> dict[str, Any]:
    return yaml_parse(TEMPLATE.read_text())


def parameter_defaults(doc: dict[str, Any]) -> dict[str, str]:
    return {name: str(p["Default"]) for name, p in doc["Parameters"].items() if "Default" in p}


@dataclass
class Stack:
    """The template's resources, created on the moto server with the template's settings."""

    bucket: str
    queue_url: str
    dead_letter_url: str
    application_id: str
    job_role_arn: str
    environment: dict[str, str]  # the trigger's
    batch_size: int
    alerts_topic_arn: str = ""
    alerts_inbox_url: str = ""  # an SQS queue subscribed to the alerts topic
    watcher_environment: dict[str, str] = field(default_factory=dict)
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = boto3.client(service, region_name=REGION)
        return self.clients[service]


def _resolve(value: Any, names: dict[str, str]) -> str:
    """The few intrinsic forms the template's Lambda environment uses."""
    if isinstance(value, str | int):
        return str(value)
    if "Ref" in value:
        return names[value["Ref"]]
    if "Fn::GetAtt" in value:
        return names[".".join(value["Fn::GetAtt"])]
    if "Fn::Sub" in value:
        text = value["Fn::Sub"]
        for name, resolved in names.items():
            text = text.replace("${" + name + "}", resolved)
        assert "${" not in text, f"unresolved: {text}"
        return text
    raise AssertionError(f"unsupported intrinsic in the environment: {value}")


def function_environment(doc: dict[str, Any], function: str = "TriggerFunction") -> dict[str, Any]:
    """A function's variables as SAM merges them: Globals first, the function's own over them."""
    shared = doc.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    own = doc["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
    return {**shared, **own}


def deploy(overrides: dict[str, str] | None = None) -> Stack:
    """Create bucket, queues (with redrive), notifications and application as the template does."""
    doc = template()
    params = parameter_defaults(doc) | (overrides or {})
    resources = doc["Resources"]
    bucket = f"fruits-{STAGE}-{ACCOUNT}-{REGION}"
    s3 = boto3.client("s3", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    emr = boto3.client("emr-serverless", region_name=REGION)

    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    dlq_url = sqs.create_queue(QueueName="uploads-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_props = resources["UploadsQueue"]["Properties"]
    redrive = dict(queue_props["RedrivePolicy"], deadLetterTargetArn=dlq_arn)
    queue_url = sqs.create_queue(
        QueueName="uploads",
        Attributes={
            "VisibilityTimeout": str(queue_props["VisibilityTimeout"]),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    notifications = resources["DataBucket"]["Properties"]["NotificationConfiguration"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": [config["Event"]],
                    "Filter": {"Key": {"FilterRules": config["Filter"]["S3Key"]["Rules"]}},
                }
                for config in notifications["QueueConfigurations"]
            ]
        },
    )
    app = resources["FeaturesApplication"]["Properties"]
    application_id = emr.create_application(
        name=f"fruits-features-{STAGE}",
        releaseLabel=params["ReleaseLabel"],
        type=app["Type"].upper(),
    )["applicationId"]
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/fruits-job-{uuid.uuid4().hex[:8]}"
    sns = boto3.client("sns", region_name=REGION)
    topic_arn = sns.create_topic(Name="fruits-alerts")["TopicArn"]
    inbox_url = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=inbox_arn,
        Attributes={"RawMessageDelivery": "false"},
    )
    names = {
        "DataBucket": bucket,
        "FeaturesApplication": application_id,
        "JobRuntimeRole.Arn": role_arn,
        "AlertsTopic": topic_arn,
        **params,
    }
    environment, watcher_environment = (
        {name: _resolve(value, names) for name, value in function_environment(doc, f).items()}
        for f in ("TriggerFunction", "WatcherFunction")
    )
    return Stack(
        bucket=bucket,
        queue_url=queue_url,
        dead_letter_url=dlq_url,
        application_id=application_id,
        job_role_arn=role_arn,
        environment=environment,
        batch_size=int(params["BatchSize"]),
        alerts_topic_arn=topic_arn,
        alerts_inbox_url=inbox_url,
        watcher_environment=watcher_environment,
        clients={"s3": s3, "sqs": sqs, "emr-serverless": emr, "sns": sns},
    )


@dataclass
class FakeContext:
    """What the Lambda service passes as ``context``, as far as powertools reads it."""

    function_name: str = "fruits-trigger"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fruits-trigger"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """Received SQS messages in the shape the Lambda service's event source mapping sends."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


def receive_batch(sqs: Any, queue_url: str, batch_size: int) -> list[dict[str, Any]]:
    """Up to ``batch_size`` messages, as a batching window that closes when the queue is dry."""
    messages: list[dict[str, Any]] = []
    while len(messages) < batch_size:
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, batch_size - len(messages)),
            AttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            break
        messages += got
    return messages


@dataclass
class Invocation:
    messages: int
    response: dict[str, Any] | None
    error: Exception | None


def poll_and_invoke(stack: Stack, handler: Any, batch_size: int | None = None) -> Invocation | None:
    """One turn of the Lambda service's poller: receive, invoke, delete what succeeded."""
    sqs = stack.client("sqs")
    messages = receive_batch(sqs, stack.queue_url, batch_size or stack.batch_size)
    if not messages:
        return None
    queue_arn = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    try:
        response = handler(sqs_event(messages, queue_arn), FakeContext())
    except Exception as error:  # the service leaves the whole batch on the queue
        return Invocation(messages=len(messages), response=None, error=error)
    failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
    done = [m for m in messages if m["MessageId"] not in failed]
    for start in range(0, len(done), 10):
        sqs.delete_message_batch(
            QueueUrl=stack.queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(done[start : start + 10])
            ],
        )
    return Invocation(messages=len(messages), response=response, error=None)


def job_runs(stack: Stack) -> list[dict[str, Any]]:
    """Every job run of the stack's application (moto answers 404 before the first one)."""
    emr = stack.client("emr-serverless")
    try:
        runs = emr.list_job_runs(applicationId=stack.application_id)["jobRuns"]
    except emr.exceptions.ResourceNotFoundException:
        return []
    return [
        emr.get_job_run(applicationId=stack.application_id, jobRunId=run["id"])["jobRun"]
        for run in runs
    ]


def keys(stack: Stack, prefix: str) -> list[str]:
    pages = (
        stack.client("s3")
        .get_paginator("list_objects_v2")
        .paginate(Bucket=stack.bucket, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def alerts(stack: Stack) -> list[dict[str, Any]]:
    """Every message published to the alerts topic so far (drained from its SQS inbox)."""
    sqs = stack.client("sqs")
    received = []
    while True:
        got = sqs.receive_message(QueueUrl=stack.alerts_inbox_url, MaxNumberOfMessages=10)
        messages = got.get("Messages", [])
        if not messages:
            return received
        for message in messages:
            received.append(json.loads(message["Body"]))
            sqs.delete_message(
                QueueUrl=stack.alerts_inbox_url, ReceiptHandle=message["ReceiptHandle"]
            )


def state_change(stack: Stack, job_run_id: str, state: str) -> dict[str, Any]:
    """The EventBridge event EMR Serverless sends when one of the application's runs ends."""
    from emr_emulator.events import state_change_event

    return state_change_event(
        {"applicationId": stack.application_id, "jobRunId": job_run_id, "state": state},
        account=ACCOUNT,
        region=REGION,
    )


def end_job_run(
    stack: Stack, job_run_id: str, state: str, details: str = "", ran_seconds: int | None = None
) -> None:
    """The run ends on the server as on the service: GetJobRun then says so (moto's never end)."""
    body = {
        "applicationId": stack.application_id,
        "jobRunId": job_run_id,
        "state": state,
        "stateDetails": details,
        "ranSeconds": ran_seconds,
    }
    endpoint = stack.client("emr-serverless").meta.endpoint_url
    request = urllib.request.Request(
        f"{endpoint}{END_JOB_RUN_PATH}", data=json.dumps(body).encode(), method="POST"
    )
    urllib.request.urlopen(request, timeout=10)
