"""The backfill command on loopback: the same request as the Lambda's, settings from the stack's
outputs, following the run to its end, and refusing a bad configuration before any call."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import boto3
import pytest

from emr_serverless_job.config import parse_args
from fruits_contract import backfill_run_id, logs
from fruits_ops import backfill, listing, resolver
from lambda_trigger import handler as trigger
from lambda_trigger import sizing
from tests.loopback import REGION, FakeContext, job_runs, receive_batch, sqs_event


def lambda_run(stack) -> dict:
    """A job run started by the handler for one real upload."""
    stack.client("s3").put_object(Bucket=stack.bucket, Key="raw/Kiwi/a.jpg", Body=b"x")
    sqs = stack.client("sqs")
    arn = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["QueueArn"])
    event = sqs_event(receive_batch(sqs, stack.queue_url, 10), arn["Attributes"]["QueueArn"])
    trigger.handler(event, FakeContext())
    (run,) = job_runs(stack)
    return run


def outputs_stack(stack) -> str:
    """A CloudFormation stack on the server whose outputs are the template's, resolved."""
    env = stack.environment
    outputs = {
        "DataBucketName": stack.bucket,
        "ApplicationId": env["APPLICATION_ID"],
        "JobRoleArn": env["JOB_ROLE_ARN"],
        "ArtifactsUri": env["ARTIFACTS_URI"],
        "OutputUri": env["OUTPUT_URI"],
        "LogsUri": env["LOGS_URI"],
        "ImageSize": env["IMAGE_SIZE"],
        "MaxExecutors": env["MAX_EXECUTORS"],
    }
    body = {
        "Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName="fruits-test", TemplateBody=json.dumps(body)
    )
    return "fruits-test"


def confs(submit: dict) -> dict[str, str]:
    words = submit["sparkSubmitParameters"].split()
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--conf")


def test_backfill_from_stack_outputs_matches_the_lambdas_request(stack, capsys):
    from_lambda = lambda_run(stack)
    name = outputs_stack(stack)
    raw = f"s3://{stack.bucket}/raw/"
    assert backfill.main(["--stack", name, "--region", REGION, "--input", raw], env={}) == 0
    job_run_id = capsys.readouterr().out.strip().splitlines()[-1]  # after the metrics line
    (run,) = [r for r in job_runs(stack) if r["jobRunId"] == job_run_id]
    assert run["name"] == backfill_run_id(raw)
    ours, theirs = run["jobDriver"]["sparkSubmit"], from_lambda["jobDriver"]["sparkSubmit"]
    assert ours["entryPoint"] == theirs["entryPoint"]
    # The same archive, package, environment and JVM options; the size follows the run: the
    # batch of one photo holds one small executor, and so does the backfill, which counted the
    # one photo under its prefix.
    ours_conf, theirs_conf = confs(ours), confs(theirs)
    sized = set(sizing.widest("onnx", 3).spark_conf())
    assert {k: v for k, v in ours_conf.items() if k not in sized} == {
        k: v for k, v in theirs_conf.items() if k not in sized
    }
    assert ours["sparkSubmitParameters"].startswith("--py-files ")
    assert ours_conf["spark.dynamicAllocation.maxExecutors"] == "1"
    assert theirs_conf["spark.dynamicAllocation.maxExecutors"] == "1"
    assert ours_conf["spark.executor.cores"] == "2"
    assert theirs_conf["spark.executor.cores"] == "2"
    assert ours["entryPointArguments"][:2] == ["--input", raw]
    assert ours["entryPointArguments"][2:-2] == theirs["entryPointArguments"][2:-2]
    assert run["executionRole"] == from_lambda["executionRole"]


def test_flags_override_and_pca_flags_reach_the_job(stack, capsys):
    raw = f"s3://{stack.bucket}/raw/"
    code = backfill.main(
        [
            *["--input", raw, "--runtime", "tensorflow", "--image-size", "128"],
            *["--pca-k", "20", "--pca-scaling", "standard"],
        ],
        env=stack.environment,
    )
    assert code == 0
    (run,) = job_runs(stack)
    args = run["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert args[args.index("--image-size") + 1] == "128"
    assert args[-4:] == ["--pca-k", "20", "--pca-scaling", "standard"]
    job = parse_args([*args, "--weights", "random:0"])  # the job takes what it is sent
    assert (job.pca_k, job.pca_scaling) == (20, "standard")


def test_wait_follows_the_run_to_its_end(stack, capsys):
    raw = f"s3://{stack.bucket}/raw/"
    code = backfill.main(["--input", raw, "--wait", "--poll-seconds", "0"], env=stack.environment)
    err = capsys.readouterr().err
    assert code == 0
    assert " SUCCESS" in err and "state SUCCESS" in err


def test_a_cancelled_run_is_reported_with_its_state(stack):
    emr = stack.client("emr-serverless")
    started = emr.start_job_run(
        applicationId=stack.application_id,
        executionRoleArn=stack.job_role_arn,
        jobDriver={"sparkSubmit": {"entryPoint": "s3://b/main.py"}},
    )
    emr.cancel_job_run(applicationId=stack.application_id, jobRunId=started["jobRunId"])
    said: list[str] = []
    run = backfill.wait_for(emr, stack.application_id, started["jobRunId"], 0, said.append)
    assert run["state"] == "CANCELLED" and said[-1].endswith("CANCELLED")
    assert backfill.describe_end(run | {"stateDetails": "killed"}).startswith(
        "state CANCELLED; reason: killed"
    )


def test_bad_configuration_exits_2_and_starts_nothing(stack, capsys):
    env = {k: v for k, v in stack.environment.items() if k != "JOB_ROLE_ARN"}
    code = backfill.main(["--input", f"s3://{stack.bucket}/raw/"], env=env)
    assert code == 2
    assert "JOB_ROLE_ARN is not set" in capsys.readouterr().err
    assert job_runs(stack) == []
    code = backfill.main(["--input", "/local/folder"], env=stack.environment)
    assert code == 2 and "/local/folder" in capsys.readouterr().err


def test_dry_run_starts_nothing(stack, capsys):
    raw = f"s3://{stack.bucket}/raw/"
    assert backfill.main(["--input", raw, "--dry-run"], env=stack.environment) == 0
    assert f"--application-id {stack.application_id}" in capsys.readouterr().out
    assert job_runs(stack) == []


@pytest.mark.parametrize(
    ("key", "name"),
    [("ApplicationId", "APPLICATION_ID"), ("JobRoleArn", "JOB_ROLE_ARN"), ("LogsUri", "LOGS_URI")],
)
def test_output_keys_name_settings(key, name):
    assert resolver.setting_name(key) == name


OPERATING = Path(__file__).resolve().parent.parent / "docs" / "operating.md"
EXAMPLE_BUCKET = "fruits-prod-111122223333-eu-west-1"
EXAMPLE_FLAGS = [
    "--input",
    f"s3://{EXAMPLE_BUCKET}/raw/",
    "--application-id",
    "00fexampleapp0id",
    "--job-role-arn",
    "arn:aws:iam::111122223333:role/fruits-prod-JobRuntimeRole",
    "--artifacts",
    f"s3://{EXAMPLE_BUCKET}/artifacts",
    "--output",
    f"s3://{EXAMPLE_BUCKET}/output",
    "--logs",
    f"s3://{EXAMPLE_BUCKET}/logs",
    "--dry-run",
]


def test_a_backfill_is_sized_to_the_photos_under_its_prefix_and_stops_counting_when_wide(
    stack, capsys, monkeypatch
):
    """GIVEN photos under raw/ (and a note, which no run reads) WHEN backfilled THEN the run is
    sized to the photos counted; past the widest size the listing stops and the run is wide."""
    s3 = stack.client("s3")
    for index in range(5):
        s3.put_object(Bucket=stack.bucket, Key=f"raw/Kiwi/{index}.jpg", Body=b"x" * 1000)
    s3.put_object(Bucket=stack.bucket, Key="raw/Kiwi/notes.txt", Body=b"x")
    raw = f"s3://{stack.bucket}/raw/"
    assert backfill.main(["--input", raw, "--print-request"], env=stack.environment) == 0
    captured = capsys.readouterr()
    assert f"5 photos, 0.0 MB under {raw}: the run is sized to them" in captured.err
    small = sizing.size_run(5, runtime="onnx", max_executors=3, total_bytes=5000)
    conf = confs(json.loads(captured.out)["jobDriver"]["sparkSubmit"])
    assert {k: conf[k] for k in small.spark_conf()} == small.spark_conf()

    pages = []
    real = listing.count_photos

    def counting(s3_client, bucket, prefix, enough):
        found = real(s3_client, bucket, prefix, lambda p, b: pages.append(p) or enough(p, b))
        return found

    monkeypatch.setattr(listing, "count_photos", counting)
    monkeypatch.setattr(sizing, "widest_work_vcpu_s", lambda executors, runtime="onnx": 0.0)
    assert backfill.main(["--input", raw, "--print-request"], env=stack.environment) == 0
    wide = confs(json.loads(capsys.readouterr().out)["jobDriver"]["sparkSubmit"])
    assert pages == [5]  # one page listed, then enough
    widest = sizing.widest("onnx", 3).spark_conf()
    assert {k: wide[k] for k in widest} == widest


def test_a_prefix_that_cannot_be_listed_is_said_and_sized_wide(stack, capsys):
    raw = f"s3://no-such-bucket-{stack.bucket}/raw/"
    assert backfill.main(["--input", raw, "--print-request"], env=stack.environment) == 0
    captured = capsys.readouterr()
    warned = [line["message"] for line in logs.parse(captured.err) if line["level"] == logs.WARNING]
    assert any(m.startswith(f"could not count the photos under {raw}") for m in warned)
    widest = sizing.widest("onnx", 3).spark_conf()
    conf = confs(json.loads(captured.out)["jobDriver"]["sparkSubmit"])
    assert {k: conf[k] for k in widest} == widest


def test_dry_run_prints_the_same_request_as_an_aws_cli_command(capsys):
    assert backfill.main(EXAMPLE_FLAGS, env={}) == 0
    command = capsys.readouterr().out.strip()
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:3] == ["aws", "emr-serverless", "start-job-run"]
    options = dict(zip(words[3::2], words[4::2], strict=True))
    driver = json.loads(options["--job-driver"])["sparkSubmit"]
    assert driver["entryPointArguments"][:2] == ["--input", f"s3://{EXAMPLE_BUCKET}/raw/"]
    assert "spark.archives=" in driver["sparkSubmitParameters"]
    assert options["--name"] == backfill_run_id(f"s3://{EXAMPLE_BUCKET}/raw/")


def test_readme_shows_exactly_what_the_builder_sends(capsys):
    """The `aws emr-serverless start-job-run` block users copy (docs/operating.md, "Running a
    backfill", linked from the README) is this command's output."""
    assert backfill.main(EXAMPLE_FLAGS, env={}) == 0
    command = capsys.readouterr().out.strip()
    assert f"```bash\n{command}\n```" in OPERATING.read_text()


def test_print_request_writes_the_request_as_json_for_the_emulator(stack, capsys):
    from emr_emulator.submit import launch

    flags = [flag for flag in EXAMPLE_FLAGS if flag != "--dry-run"]
    assert backfill.main([*flags, "--print-request"], env={}) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["name"] == backfill_run_id(f"s3://{EXAMPLE_BUCKET}/raw/")
    assert launch(request).driver_env["PYSPARK_PYTHON"] == "./environment/bin/python"
    assert job_runs(stack) == []  # printed, not started


def test_two_backfills_of_one_prefix_retry_as_two_runs(stack, capsys):
    """Same prefix, same run id: each backfill's retry still has its own client token."""
    from lambda_trigger import watcher
    from tests.loopback import state_change

    # GIVEN two backfills of the same prefix, each allowed one retry, whose runs both fail
    raw = f"s3://{stack.bucket}/raw/"
    firsts = []
    for _ in range(2):
        assert backfill.main(["--input", raw, "--retries", "1"], env=stack.environment) == 0
        firsts.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(set(firsts)) == 2
    # WHEN the watcher hears both failures
    for job_run_id in firsts:
        event = state_change(stack, job_run_id, "FAILED")
        assert watcher.handler(event, FakeContext())["decision"] == "retry"
    # THEN each is retried as a run of its own (on AWS a shared token would hand the second
    # backfill the first one's retry: no rerun, and no alert when it failed)
    runs = job_runs(stack)
    retries = [r for r in runs if r["jobRunId"] not in firsts]
    assert len(runs) == 4 and len(retries) == 2
    assert all(r["tags"]["attempt"] == "2" and r["name"] == backfill_run_id(raw) for r in retries)


def test_a_stack_that_cannot_be_read_is_refused_naming_the_flag(stack, capsys):
    """GIVEN a stack name that does not exist WHEN backfilled THEN exit 2 naming --stack, no
    traceback and no run (it used to end in botocore's ClientError, exit 1)."""
    raw = f"s3://{stack.bucket}/raw/"
    assert (
        backfill.main(["--stack", "no-such-stack", "--region", REGION, "--input", raw], env={}) == 2
    )
    assert "configuration error: --stack no-such-stack:" in capsys.readouterr().err
    assert job_runs(stack) == []


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--pca-k", "0"], "--pca-k 0: not between 1 and 1280"),
        (["--pca-k", "1281"], "--pca-k 1281: not between 1 and 1280"),
        (["--pca-variance", "0"], "--pca-variance 0.0: not in (0, 1]"),
        (["--pca-variance", "nan"], "--pca-variance nan: not in (0, 1]"),
        (["--wait", "--poll-seconds", "-2"], "--poll-seconds -2.0: 0 or more seconds"),
        (["--wait", "--poll-seconds", "inf"], "--poll-seconds inf: 0 or more seconds"),
    ],
)
def test_bad_job_and_follow_flags_are_refused_before_any_run(stack, capsys, flags, said):
    """GIVEN a PCA value the job would refuse, or a poll it cannot sleep WHEN backfilled THEN exit
    2 naming the flag as typed and no StartJobRun: the run used to start and fail on the
    service, billed, or the command to fail after starting it."""
    argv = ["--input", f"s3://{stack.bucket}/raw/", *flags]
    assert backfill.main(argv, env=stack.environment) == 2
    assert f"configuration error: {said}" in capsys.readouterr().err
    assert job_runs(stack) == []


def test_flag_beats_environment_beats_stack_output_and_each_origin_is_said(stack, capsys):
    """GIVEN a setting in the stack's outputs, the environment and a flag WHEN backfilled THEN
    the flag's value is sent; without the flag a variable that agrees with the stack (one
    that disagrees is refused, nothing started); without either the stack's (the order
    changed in issue 22: it was flag > stack output > environment)."""
    name = outputs_stack(stack)
    raw = f"s3://{stack.bucket}/raw/"
    logs_uri = stack.environment["LOGS_URI"]
    env = {"OUTPUT_URI": f"s3://{stack.bucket}/env-output", "LOGS_URI": logs_uri}
    argv = ["--stack", name, "--region", REGION, "--input", raw, "--print-request"]
    flagged = f"s3://{stack.bucket}/flag-output"
    assert backfill.main([*argv, "--output", flagged], env=env) == 0
    captured = capsys.readouterr()
    request = json.loads(captured.out)
    args = request["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert args[args.index("--output") + 1] == flagged
    monitoring = request["configurationOverrides"]["monitoringConfiguration"]
    assert monitoring["s3MonitoringConfiguration"]["logUri"].startswith(logs_uri.rstrip("/"))
    assert request["applicationId"] == stack.environment["APPLICATION_ID"]
    assert f"  OUTPUT_URI={flagged}  (--output)" in captured.err
    assert f"  LOGS_URI={logs_uri}  ($LOGS_URI)" in captured.err
    assert f"(stack {name} output ApplicationId)" in captured.err
    assert "  RUNTIME=onnx  (default)" in captured.err
    assert backfill.main(argv, env=env) == 2
    err = capsys.readouterr().err
    assert f"$OUTPUT_URI={env['OUTPUT_URI']} but stack {name} output OutputUri is " in err
    assert "(pass --output to choose, or unset $OUTPUT_URI)" in err
    assert backfill.main(argv, env={}) == 0
    args = json.loads(capsys.readouterr().out)["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert args[args.index("--output") + 1] == stack.environment["OUTPUT_URI"].rstrip("/")
    assert job_runs(stack) == []
