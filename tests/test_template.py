"""template.yaml: cfn-lint clean, transformed by the SAM translator, and its security properties
asserted on the transformed (plain CloudFormation) template."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_trigger import settings
from tests.loopback import TEMPLATE, template

EU_MEMBER_REGIONS = {
    "eu-west-1",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"}


@pytest.fixture(scope="module")
def transformed(monkeypatch_module):
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    doc = template()
    # What `sam package` does before the transform: code is an S3 object by then.
    doc["Resources"]["TriggerFunction"]["Properties"]["CodeUri"] = "s3://artifacts/trigger.zip"
    monkeypatch_module.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    return transform(doc, {}, NoManagedPolicies())


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def resources_of(doc: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in doc["Resources"].items() if r["Type"] == kind}


def statements(doc: dict) -> list[tuple[str, dict]]:
    """Every policy statement in the template: role policies, bucket and queue policies."""
    found = []
    for name, resource in doc["Resources"].items():
        props = resource.get("Properties", {})
        for policy in props.get("Policies", []):
            found += [(name, s) for s in policy["PolicyDocument"]["Statement"]]
        if "PolicyDocument" in props:
            found += [(name, s) for s in props["PolicyDocument"]["Statement"]]
    return found


def as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_is_clean():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)],
        capture_output=True,
        text=True,
        env={**os.environ, "AWS_DEFAULT_REGION": "eu-west-1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_refuses_regions_outside_the_eu(transformed):
    (rule,) = transformed["Rules"].values()
    (assertion,) = rule["Assertions"]
    allowed, region = assertion["Assert"]["Fn::Contains"]
    assert region == {"Ref": "AWS::Region"}
    assert set(allowed) == EU_MEMBER_REGIONS  # London and Zurich are not in the EU
    assert "GDPR" in assertion["AssertDescription"]


def test_bucket_is_private_encrypted_tls_only_and_expires_manifests_and_logs(transformed):
    bucket = transformed["Resources"]["DataBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    (encryption,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    (policy,) = resources_of(transformed, "AWS::S3::BucketPolicy").values()
    (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Action"] == "s3:*" and deny["Principal"] == "*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert len(deny["Resource"]) == 2  # the bucket and every object in it
    expiring = {
        rule["Prefix"]
        for rule in bucket["LifecycleConfiguration"]["Rules"]
        if "ExpirationInDays" in rule
    }
    assert expiring == {"manifests/", "logs/"}


def test_only_image_uploads_under_raw_reach_the_queue(transformed):
    bucket = transformed["Resources"]["DataBucket"]
    configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    suffixes = set()
    for config in configs:
        assert config["Event"].startswith("s3:ObjectCreated:")
        assert config["Queue"] == {"Fn::GetAtt": ["UploadsQueue", "Arn"]}
        rules = {r["Name"]: r["Value"] for r in config["Filter"]["S3Key"]["Rules"]}
        assert rules["prefix"] == "raw/"
        suffixes.add(rules["suffix"])
    assert suffixes == IMAGE_SUFFIXES
    # The queue policy must exist before S3 validates the notification target.
    assert bucket["DependsOn"] == "UploadsQueuePolicy"
    (policy,) = resources_of(transformed, "AWS::SQS::QueuePolicy").values()
    allow = policy["Properties"]["PolicyDocument"]["Statement"][0]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert "aws:SourceArn" in allow["Condition"]["ArnEquals"]


def test_queue_has_a_dead_letter_queue_and_outlives_the_function(transformed):
    queue = transformed["Resources"]["UploadsQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["UploadsDeadLetterQueue", "Arn"]
    }
    assert 1 <= queue["RedrivePolicy"]["maxReceiveCount"] <= 10
    function = transformed["Resources"]["TriggerFunction"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"]


def test_lambda_reads_the_queue_in_batches_with_partial_failures(transformed):
    (mapping,) = resources_of(transformed, "AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["MaximumBatchingWindowInSeconds"] == {"Ref": "BatchWindowSeconds"}
    params = transformed["Parameters"]
    assert params["BatchWindowSeconds"]["MinValue"] >= 1  # SQS: batches over 10 need a window
    assert params["BatchSize"]["Default"] > 10


def test_emr_application_is_spark_7x_with_auto_start_stop_and_a_capacity_cap(transformed):
    (app,) = resources_of(transformed, "AWS::EMRServerless::Application").values()
    props = app["Properties"]
    assert props["Type"] == "Spark"
    assert props["ReleaseLabel"] == {"Ref": "ReleaseLabel"}
    assert transformed["Parameters"]["ReleaseLabel"]["Default"].startswith("emr-7.")
    assert props["AutoStartConfiguration"]["Enabled"] is True
    assert props["AutoStopConfiguration"]["Enabled"] is True
    assert props["MaximumCapacity"]["Cpu"] == {"Fn::Sub": "${MaxVcpu} vCPU"}


def test_no_wildcard_action_on_a_wildcard_resource_anywhere(transformed):
    for owner, statement in statements(transformed):
        if statement["Effect"] != "Allow":
            continue
        actions = as_list(statement.get("Action", []))
        resources = as_list(statement.get("Resource", []))
        wildcard_action = any(a == "*" or a.endswith(":*") for a in actions)
        assert not (wildcard_action and "*" in resources), (owner, statement)
        assert "*" not in actions, (owner, statement)


def _allowed(doc: dict, role: str) -> list[dict]:
    return [s for owner, s in statements(doc) if owner == role and s["Effect"] == "Allow"]


def _prefixes(resources: list) -> set[str]:
    """``${DataBucket.Arn}/raw/*`` -> ``raw/*``; a bare bucket ARN -> ``(bucket)``."""
    found = set()
    for resource in resources:
        if isinstance(resource, dict) and "Fn::Sub" in resource:
            found.add(resource["Fn::Sub"].split("}/", 1)[1])
        else:
            found.add("(bucket)")
    return found


def test_job_role_reads_inputs_and_writes_only_output_and_logs(transformed):
    role = transformed["Resources"]["JobRuntimeRole"]["Properties"]
    (principal,) = [s["Principal"] for s in role["AssumeRolePolicyDocument"]["Statement"]]
    assert principal == {"Service": "emr-serverless.amazonaws.com"}
    writes, reads = set(), set()
    for statement in _allowed(transformed, "JobRuntimeRole"):
        actions = set(as_list(statement["Action"]))
        assert all(a.startswith("s3:") for a in actions), statement
        targets = _prefixes(as_list(statement["Resource"]))
        if actions & {"s3:PutObject", "s3:DeleteObject"}:
            writes |= targets
        if "s3:GetObject" in actions:
            reads |= targets
    assert writes == {"output/*", "logs/*"}
    assert reads == {"raw/*", "artifacts/*", "manifests/*", "output/*"}


def test_lambda_role_starts_runs_on_its_application_and_passes_only_the_job_role(transformed):
    allowed = _allowed(transformed, "TriggerFunctionRole")
    emr = [s for s in allowed if any(a.startswith("emr-serverless:") for a in as_list(s["Action"]))]
    assert {a for s in emr for a in as_list(s["Action"])} == {
        "emr-serverless:StartJobRun",
        "emr-serverless:GetJobRun",
        "emr-serverless:TagResource",
    }
    for statement in emr:
        for resource in as_list(statement["Resource"]):
            text = str(resource)
            assert "FeaturesApplication" in text, statement
    (passrole,) = [s for s in allowed if "iam:PassRole" in as_list(s["Action"])]
    assert passrole["Resource"] == {"Fn::GetAtt": ["JobRuntimeRole", "Arn"]}
    assert passrole["Condition"] == {
        "StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}
    }
    s3 = [s for s in allowed if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    puts = [s for s in s3 if "s3:PutObject" in as_list(s["Action"])]
    assert {p for s in puts for p in _prefixes(as_list(s["Resource"]))} == {"manifests/*"}


def test_lambda_environment_is_what_the_trigger_reads(transformed):
    variables = transformed["Resources"]["TriggerFunction"]["Properties"]["Environment"][
        "Variables"
    ]
    required = {name for name, (_, default) in settings.FIELDS.items() if default is None}
    assert required <= set(variables)
    unknown = (
        set(variables)
        - set(settings.FIELDS)
        - {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"}
    )
    assert not unknown


def test_outputs_give_names_ids_and_the_backfill_command(transformed):
    outputs = transformed["Outputs"]
    for name in ("DataBucketName", "ApplicationId", "QueueUrl", "JobRoleArn", "OutputUri"):
        assert name in outputs
    command = outputs["BackfillCommand"]["Value"]["Fn::Sub"]
    assert command.startswith("python -m lambda_trigger.backfill --stack ${AWS::StackName}")
    # Every output the backfill reads through --stack maps to a setting it knows.
    from lambda_trigger.backfill import FLAG_SETTINGS, setting_name

    read = {setting_name(key) for key in outputs} & set(FLAG_SETTINGS.values())
    required = {"APPLICATION_ID", "JOB_ROLE_ARN", "ARTIFACTS_URI", "OUTPUT_URI", "LOGS_URI"}
    assert required <= read


def test_lambda_build_installs_pinned_linux_wheels_and_imports(tmp_path):
    """`sam build` runs lambda_trigger/Makefile; the result must import with nothing else."""
    artifacts = tmp_path / "artifacts"
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            "lambda_trigger",
            "build-TriggerFunction",
            f"ARTIFACTS_DIR={artifacts}",
            f"PYTHON={sys.executable}",
        ],
        cwd=TEMPLATE.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(artifacts.rglob("*.pyc"))  # --no-compile: smaller, nothing stale
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import lambda_trigger.handler as h, aws_lambda_powertools, boto3;"
        "print(aws_lambda_powertools.__file__, boto3.__version__, h.handler.__name__)"
    )
    env = {"PATH": os.environ["PATH"], "POWERTOOLS_TRACE_DISABLED": "true"}
    imported = subprocess.run(
        [sys.executable, "-S", "-B", "-c", probe, str(artifacts)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    location, boto3_version, _ = imported.stdout.split()
    assert location.startswith(str(artifacts))
    pins = (TEMPLATE.parent / "lambda_trigger" / "requirements.txt").read_text()
    assert f"boto3=={boto3_version}" in pins
