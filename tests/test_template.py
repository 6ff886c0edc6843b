"""template.yaml: cfn-lint clean, transformed by the SAM translator, and its security properties
asserted on the transformed (plain CloudFormation) template."""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fruits_contract import (
    ARTIFACTS_MANIFEST,
    ENTRY_POINT,
    ERASURES_TABLE,
    ERRORS_TABLE,
    FEATURES_TABLE,
    IMAGE_SUFFIXES,
    JOB_PACKAGE,
    MODEL_FILE,
    PCA_MODEL_FOLDER,
    PCA_POINTER_FILE,
    PCA_VERSIONS_FOLDER,
    PREFLIGHT_MARKER_FOLDER,
    PREFLIGHT_REPORT,
    REPORTS_FOLDER,
    RUNTIMES,
    VENV_ARCHIVE,
)
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
# S3 filters are case-sensitive: each suffix the job reads, in both of its usual spellings.
SUFFIX_SPELLINGS = {
    spelling for suffix in IMAGE_SUFFIXES for spelling in (suffix.lower(), suffix.upper())
}
# eu-south-1 (Milan) and eu-south-2 (Spain) launched after 20 March 2019: opt-in Regions.
OPT_IN_REGIONS = {"eu-south-1", "eu-south-2"}


@pytest.fixture(scope="module")
def transformed(monkeypatch_module):
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    doc = template()
    # What `sam package` does before the transform: code is an S3 object by then.
    for function in ("TriggerFunction", "WatcherFunction"):
        doc["Resources"][function]["Properties"]["CodeUri"] = "s3://artifacts/functions.zip"
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


def test_opt_in_regions_are_named_where_the_region_is_refused_and_described(transformed):
    (rule,) = transformed["Rules"].values()
    (assertion,) = rule["Assertions"]
    allowed = set(assertion["Assert"]["Fn::Contains"][0])
    assert allowed & OPT_IN_REGIONS  # the check below is not vacuous
    for text in (assertion["AssertDescription"], transformed["Description"]):
        assert "opt-in" in text and "enable" in text
        for region in allowed & OPT_IN_REGIONS:
            assert region in text


def test_a_first_deploy_that_rolls_back_leaves_no_bucket_to_block_the_retry(transformed):
    bucket = transformed["Resources"]["DataBucket"]
    assert "BucketName" in bucket["Properties"]  # a fixed name: a leftover blocks the retry
    assert bucket["DeletionPolicy"] == "RetainExceptOnCreate"  # kept on every later operation
    assert bucket["UpdateReplacePolicy"] == "Retain"


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
    assert expiring == {"manifests/", "manifests/erase-", "logs/"}


def test_only_image_uploads_under_raw_reach_the_queue(transformed):
    bucket = transformed["Resources"]["DataBucket"]
    configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    suffixes = set()
    for config in configs:
        assert config["Event"] in ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")
        assert config["Queue"] == {"Fn::GetAtt": ["UploadsQueue", "Arn"]}
        rules = {r["Name"]: r["Value"] for r in config["Filter"]["S3Key"]["Rules"]}
        assert rules["prefix"] == "raw/"
        suffixes.add((config["Event"], rules["suffix"]))
    # Deletions of the same images reach the same queue (erasure, docs/erasure.md).
    assert suffixes == {
        (event, suffix)
        for event in ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")
        for suffix in SUFFIX_SPELLINGS
    }
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
    # AWS: at least 6 x the function timeout; received messages also wait out the window.
    longest_window = transformed["Parameters"]["BatchWindowSeconds"]["MaxValue"]
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"] + longest_window


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


DATA_PREFIXES = ("raw", "artifacts", "manifests", "output", "logs")


def bucket_grants(doc: dict, role: str) -> list[tuple[set[str], list[str]]]:
    """(actions, key patterns) of each Allow statement of ``role`` on the data bucket's objects."""
    grants = []
    for statement in _allowed(doc, role):
        patterns = [
            resource["Fn::Sub"].removeprefix("${DataBucket.Arn}/")
            for resource in as_list(statement["Resource"])
            if isinstance(resource, dict)
            and str(resource.get("Fn::Sub", "")).startswith("${DataBucket.Arn}/")
        ]
        grants.append((set(as_list(statement["Action"])), patterns))
    return grants


def permits(grants: list[tuple[set[str], list[str]]], action: str, key: str) -> bool:
    """IAM's match: ``*`` spans any characters, slashes included (fnmatch does the same)."""
    return any(
        action in actions and any(fnmatch.fnmatchcase(key, p) for p in patterns)
        for actions, patterns in grants
    )


def folder_keys(key: str) -> list[str]:
    """What Hadoop probes (the folder's key, with and without a slash) and EMRFS marks
    (``<folder>_$folder$``) for every folder above ``key``."""
    parts = key.split("/")[:-1]
    folders = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return [k for f in folders for k in (f, f"{f}/", f"{f}_$folder$")]


def job_paths() -> tuple[list[str], list[str]]:
    """The keys one backfill, one batch and one preflight read and write, from the request
    and the job."""
    run_id, preflight = "batch-0123456789abcdef", "preflight-20261202t141502z-1a2b3c4d"
    artifacts = (ENTRY_POINT, JOB_PACKAGE, MODEL_FILE, VENV_ARCHIVE, ARTIFACTS_MANIFEST)
    reads = [
        "raw/Apple Braeburn/0_100.jpg",
        f"manifests/{run_id}.jsonl",
        *(f"artifacts/{name}" for name in artifacts),
        f"output/{PCA_MODEL_FOLDER}/metadata/part-00000",
    ]
    writes = [
        f"output/{FEATURES_TABLE}/run_id={run_id}/part-00000.snappy.parquet",
        f"output/{ERRORS_TABLE}/run_id={run_id}/_SUCCESS",
        f"output/{REPORTS_FOLDER}/run_id={run_id}/report.json",
        f"output/{PCA_MODEL_FOLDER}/stages/1_PCAModel/data/part-00000.parquet",
        f"output/{PREFLIGHT_MARKER_FOLDER}/{preflight}",  # written, read back and deleted
        f"output/{PREFLIGHT_REPORT.format(run_id=preflight)}",
    ]
    return reads, writes


def test_job_role_allows_what_emrfs_does_on_the_jobs_paths_and_nothing_elsewhere(transformed):
    role = transformed["Resources"]["JobRuntimeRole"]["Properties"]
    (principal,) = [s["Principal"] for s in role["AssumeRolePolicyDocument"]["Statement"]]
    assert principal == {"Service": "emr-serverless.amazonaws.com"}
    grants = bucket_grants(transformed, "JobRuntimeRole")
    reads, writes = job_paths()
    for key in reads:
        assert permits(grants, "s3:GetObject", key), key
        for folder in folder_keys(key):  # a probe refused is a 403, which Hadoop treats as fatal
            assert permits(grants, "s3:GetObject", folder), folder
    for key in writes:
        for target in (key, *folder_keys(key)):
            for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
                assert permits(grants, action, target), (action, target)
    assert permits(grants, "s3:PutObject", "logs/applications/app/jobs/run/SPARK_DRIVER/stdout.gz")
    # Nothing else: inputs and artifacts are never written, and no other prefix is reachable.
    for key in ("raw/Kiwi/a.jpg", "artifacts/main.py", "manifests/x.jsonl", "raw"):
        assert not permits(grants, "s3:PutObject", key), key
        assert not permits(grants, "s3:DeleteObject", key), key
    for actions, patterns in grants:
        assert all(a.startswith("s3:") for a in actions)
        for pattern in patterns:
            top = re.split(r"/|_\$folder\$", pattern)[0]
            assert top in DATA_PREFIXES, pattern


def test_the_job_role_is_assumed_only_for_this_accounts_application(transformed):
    role = transformed["Resources"]["JobRuntimeRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Effect"] == "Allow" and trust["Action"] == "sts:AssumeRole"
    assert trust["Principal"] == {"Service": "emr-serverless.amazonaws.com"}
    assert trust["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
        # IfExists: AWS does not document that EMR Serverless sends aws:SourceArn, and a plain
        # ArnLike on an absent key would refuse every run.
        "ArnLikeIfExists": {
            "aws:SourceArn": [
                {"Fn::GetAtt": ["FeaturesApplication", "Arn"]},
                {"Fn::Sub": "${FeaturesApplication.Arn}/*"},
            ]
        },
    }


# --- the job role's ListBucket, against the listings Hadoop makes ------------------------------


def iam_string_like(value: str, pattern: str) -> bool:
    """IAM's StringLike: ``*`` any run of characters (``/`` included), ``?`` one; case-sensitive.
    Nothing else is special (fnmatch would read ``[`` as a class)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def listing_allowed(statements_: list[dict], prefix: str) -> bool:
    """Whether Allow statements grant s3:ListBucket on the data bucket for ``prefix`` (the
    request's s3:prefix). Only the conditions this template uses are understood; any other
    fails the test rather than being guessed."""
    for statement in statements_:
        if statement["Effect"] != "Allow" or "s3:ListBucket" not in as_list(statement["Action"]):
            continue
        if {"Fn::GetAtt": ["DataBucket", "Arn"]} not in as_list(statement["Resource"]):
            continue
        satisfied = True
        for operator, keys in statement.get("Condition", {}).items():
            for key, values in keys.items():
                if key != "s3:prefix" or operator not in ("StringLike", "StringEquals"):
                    pytest.fail(f"the evaluator does not know {operator} {key}: extend it")
                match = iam_string_like if operator == "StringLike" else str.__eq__
                satisfied &= any(match(prefix, value) for value in as_list(values))
        if satisfied:
            return True
    return False


def ancestors(key: str) -> list[str]:
    """``a/b/c`` -> ``["a/", "a/b/"]``: the folders above a key, as listing prefixes."""
    parts = key.split("/")[:-1]
    return ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def job_listings() -> dict[str, list[str]]:
    """The s3:prefix of every listing a backfill, a batch, an erase run and a preflight make.

    From Hadoop's FileSystem contract as S3 filesystems implement it: ``getFileStatus`` of a
    key that is not an object (a folder, or a file not there yet: ``exists``) lists
    ``<key>/``; ``listStatus`` of a folder lists ``<folder>/``; Spark's file index lists each
    folder of a recursive read; a write first probes every folder above its target; the
    FileOutputCommitter lists its ``_temporary`` attempt folders. The folder names are the
    job's own constants, so a table added there is listed here.
    """
    from emr_serverless_job import reduce
    from emr_serverless_job.erase import JOURNAL_SUFFIX, STAGING_PREFIX

    run, erase_run, version = "batch-0123456789abcdef", "erase-0123456789abcdef", "v-1"
    preflight = "preflight-20261202t141502z-1a2b3c4d"
    photo = "raw/Apple Braeburn/0_100.jpg"
    listings: dict[str, list[str]] = {
        # --input s3://BUCKET/raw/: the folder, each label's folder, a deeper one.
        "backfill of raw/": ["raw/", "raw/Apple Braeburn/", "raw/Apple Braeburn/2024/"],
        # --manifest: the manifest, then every key it names is probed before it is read.
        "batch": [f"manifests/{run}.jsonl/", f"{photo}/", *ancestors(photo)],
        "artifacts": [
            f"artifacts/{name}/"
            for name in (ENTRY_POINT, JOB_PACKAGE, MODEL_FILE, VENV_ARCHIVE, ARTIFACTS_MANIFEST)
        ]
        + ["artifacts/"],
        # --preflight s3://BUCKET/raw/: the first photo of a recursive listing, a marker
        # probed, written and deleted, the report probed and written.
        "preflight": [
            "raw/",
            f"output/{PREFLIGHT_MARKER_FOLDER}/{preflight}/",
            f"output/{PREFLIGHT_REPORT.format(run_id=preflight)}/",
        ],
    }
    tables = []
    for table in (FEATURES_TABLE, ERRORS_TABLE, ERASURES_TABLE):
        partition = f"output/{table}/run_id={run}"
        attempt = f"{partition}/_temporary/0/_temporary/attempt_202401010000_0001_m_000000_0"
        tables += [
            f"output/{table}/",  # the whole table: the current view, an erase run's scan
            f"{partition}/",  # overwrite: is it there, then delete it
            f"{partition}/_temporary/0/",
            f"{attempt}/",
            f"{partition}/part-00000.snappy.parquet/",
            f"output/{table}/{STAGING_PREFIX}{erase_run}/",  # an erase run's staged rewrite
            f"output/{table}/{STAGING_PREFIX}{erase_run}{JOURNAL_SUFFIX}/",
        ]
    listings["output tables"] = [
        *tables,
        f"output/{REPORTS_FOLDER}/",
        f"output/{REPORTS_FOLDER}/run_id={run}/",
        f"output/{REPORTS_FOLDER}/run_id={run}/report.json/",
    ]
    model = f"output/{PCA_MODEL_FOLDER}"
    folder = f"{model}/{PCA_VERSIONS_FOLDER}/{version}"
    listings["pca_model/"] = [
        f"{model}/",
        f"{model}/{PCA_POINTER_FILE}/",
        f"{model}/{reduce.METADATA_FILE}/",  # a model saved before versions existed
        f"{model}/{reduce.PROJECTION_FILE}/",
        f"{model}/{PCA_VERSIONS_FOLDER}/",
        f"{folder}/",
        f"{folder}/{reduce.METADATA_FILE}/",
        f"{folder}/{reduce.PROJECTION_FILE}/",
    ]
    for purpose, prefixes in listings.items():  # every write and probe starts at the top
        listings[purpose] = sorted({a for p in prefixes for a in (p, *ancestors(p[:-1]))})
    return listings


def test_job_role_lets_the_job_list_every_folder_it_reads_or_writes_and_nothing_else(
    transformed,
):
    role = _allowed(transformed, "JobRuntimeRole")
    listings = job_listings()
    for purpose, prefixes in listings.items():
        refused = [p for p in prefixes if not listing_allowed(role, p)]
        assert not refused, f"{purpose}: ListBucket refused for s3:prefix {refused}"
    # The bucket's root and neighbours of the job's prefixes are not listable.
    for prefix in ("", "/", "rawx/", "raw-old/", "outputs/", "output-copy/", "other/", "artifact"):
        assert not listing_allowed(role, prefix), prefix
    # The evaluator has teeth: the same statements with a condition one prefix short refuse.
    narrowed = [
        {**s, "Condition": {"StringLike": {"s3:prefix": ["raw/*", "manifests/*"]}}}
        if "s3:ListBucket" in as_list(s["Action"])
        else s
        for s in role
    ]
    assert not all(listing_allowed(narrowed, p) for p in listings["output tables"])
    assert not listing_allowed(narrowed, "artifacts/")
    assert iam_string_like("raw/a[1]/b", "raw/*") and not iam_string_like("raw", "raw/*")


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
    (tagging,) = [s for s in emr if "emr-serverless:TagResource" in as_list(s["Action"])]
    assert as_list(tagging["Resource"]) == [
        {"Fn::GetAtt": ["FeaturesApplication", "Arn"]},
        {"Fn::Sub": "${FeaturesApplication.Arn}/jobruns/*"},
    ]
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
    assert outputs["Architecture"]["Value"] == {"Ref": "Architecture"}  # upload.py checks it
    command = outputs["BackfillCommand"]["Value"]["Fn::Sub"]
    assert command.startswith("python -m fruits_ops.backfill --stack ${AWS::StackName}")
    # Every output the backfill reads through --stack maps to a setting it knows.
    from fruits_ops.resolver import DEPLOYMENT_FLAGS, setting_name

    read = {setting_name(key) for key in outputs} & set(DEPLOYMENT_FLAGS.values())
    required = {"APPLICATION_ID", "JOB_ROLE_ARN", "ARTIFACTS_URI", "OUTPUT_URI", "LOGS_URI"}
    assert required <= read


LAMBDA_RUNTIME = re.compile(r"^python(3\.\d+)$")


def sam_build(code_uri: Path, work: Path, *variables: str) -> subprocess.CompletedProcess:
    """What `sam build` does for a makefile function (aws-lambda-builders' CustomMakeWorkflow):
    copy the CodeUri folder to a scratch folder, then run ``make --makefile <CodeUri>/Makefile
    build-<Function>`` there, with ARTIFACTS_DIR set. Only the CodeUri folder is copied."""
    scratch = work / "scratch"
    shutil.copytree(code_uri, scratch, ignore=shutil.ignore_patterns(".aws-sam", ".git"))
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "--makefile",
            str(code_uri / "Makefile"),
            "build-TriggerFunction",
            f"ARTIFACTS_DIR={work / 'artifacts'}",
            f"PYTHON={sys.executable}",
            *variables,
        ],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def lambda_build(tmp_path_factory) -> Path:
    """`sam build` runs lambda_trigger/Makefile: what it leaves is what the function imports."""
    (code_uri,) = {
        function["Properties"]["CodeUri"]
        for function in resources_of(template(), "AWS::Serverless::Function").values()
    }
    work = tmp_path_factory.mktemp("lambda")
    result = sam_build(TEMPLATE.parent / code_uri, work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "artifacts"


def test_the_lambda_bundle_carries_the_contract_and_imports_it_from_there(lambda_build):
    """The Lambdas import fruits_contract, which lives outside their CodeUri: the build puts the
    one copy at the bundle's root. Imported here with the bundle alone on the path (no site
    packages, no checkout), as the function's runtime imports it."""
    contract = TEMPLATE.parent / "fruits_contract"
    shipped = lambda_build / "fruits_contract"
    assert sorted(p.name for p in shipped.glob("*.py")) == sorted(
        p.name for p in contract.glob("*.py")
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"  # -S: no site-packages
        "import fruits_contract, lambda_trigger.manifest, lambda_trigger.outcomes,"
        " lambda_trigger.submit, lambda_trigger.request;"
        "print(fruits_contract.__file__, lambda_trigger.request.__file__)"
    )
    imported = subprocess.run(
        [sys.executable, "-S", "-B", "-c", probe, str(lambda_build)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        cwd=lambda_build.parent,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    contract_file, request_file = imported.stdout.split()
    assert contract_file == str(shipped / "__init__.py")
    assert request_file.startswith(str(lambda_build / "lambda_trigger"))


def test_the_lambda_bundle_ships_no_operator_command(lambda_build):
    """The operator commands (fruits_ops/) run on an operator's machine, never in a function:
    the bundle holds the Lambdas' package as it is in the repository and the contract, and no
    module in it imports the commands (which would fail there)."""
    assert not (lambda_build / "fruits_ops").exists()
    shipped = lambda_build / "lambda_trigger"
    source = TEMPLATE.parent / "lambda_trigger"
    assert sorted(p.name for p in shipped.glob("*.py")) == sorted(
        p.name for p in source.glob("*.py")
    )
    importing = re.compile(r"^\s*(from|import) fruits_ops\b", re.M)
    assert [p.name for p in shipped.glob("*.py") if importing.search(p.read_text())] == []


def test_a_lambda_build_without_the_contract_stops_and_says_why(tmp_path):
    """A container build (sam build --use-container) mounts only the CodeUri folder: the build
    must fail there, not ship a function whose first import fails."""
    result = sam_build(
        TEMPLATE.parent / "lambda_trigger", tmp_path, f"CONTRACT={tmp_path / 'nowhere'}"
    )
    assert result.returncode != 0
    assert "no fruits_contract at" in result.stderr
    assert not (tmp_path / "artifacts" / "lambda_trigger").exists()


def runtime_version() -> str:
    (version,) = LAMBDA_RUNTIME.match(template()["Globals"]["Function"]["Runtime"]).groups()
    return version


def test_lambda_build_installs_pinned_wheels_for_the_functions_runtime(lambda_build):
    version = runtime_version()
    makefile = (TEMPLATE.parent / "lambda_trigger" / "Makefile").read_text()
    assert f"LAMBDA_PYTHON_VERSION ?= {version}" in makefile
    assert not list(lambda_build.rglob("*.pyc"))  # --no-compile: smaller, nothing stale
    tags = {
        line.split(": ", 1)[1]
        for wheel in lambda_build.glob("*.dist-info/WHEEL")
        for line in wheel.read_text().splitlines()
        if line.startswith("Tag: ")
    }
    compiled = {tag for tag in tags if not tag.startswith("py")}  # pure: py3-none-any, py2-...
    cp = f"cp{version.replace('.', '')}"
    assert compiled and all(tag.startswith(f"{cp}-") for tag in compiled), compiled
    pins = (TEMPLATE.parent / "lambda_trigger" / "requirements.txt").read_text()
    for line in pins.splitlines():
        if "==" in line and not line.startswith("#"):
            name, pinned = line.split("==")
            name = re.sub(r"\[.*\]", "", name).replace("-", "_")
            assert list(lambda_build.glob(f"{name}-{pinned}.dist-info")), name


def interpreter(version: str) -> str | None:
    """A Python of ``version`` on this machine (PATH, then pyenv's versions), if any."""
    candidates = [os.environ.get("LAMBDA_PYTHON"), shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        candidates += sorted(glob.glob(f"{root}/versions/{version}*/bin/python{version}"))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def test_lambda_build_imports_under_the_functions_python(lambda_build):
    version = runtime_version()
    python = interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} here (set LAMBDA_PYTHON); the wheel tags are checked")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import lambda_trigger.handler as h, lambda_trigger.watcher as w, aws_lambda_powertools,"
        " boto3, wrapt, fruits_contract;"
        "assert fruits_contract.__file__.startswith(sys.argv[1]), fruits_contract.__file__;"
        "print(aws_lambda_powertools.__file__, boto3.__version__, h.handler.__name__)"
    )
    env = {"PATH": os.environ["PATH"], "POWERTOOLS_TRACE_DISABLED": "true"}
    imported = subprocess.run(
        [python, "-S", "-B", "-c", probe, str(lambda_build)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    location, boto3_version, _ = imported.stdout.split()
    assert location.startswith(str(lambda_build))
    pins = (TEMPLATE.parent / "lambda_trigger" / "requirements.txt").read_text()
    assert f"boto3=={boto3_version}" in pins


def test_handler_calls_give_up_well_before_the_function_times_out(transformed, monkeypatch):
    from lambda_trigger import handler

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    timeout = transformed["Resources"]["TriggerFunction"]["Properties"]["Timeout"]
    config = settings.CLIENT_CONFIG
    attempts = config.retries["total_max_attempts"]
    assert attempts * (config.connect_timeout + config.read_timeout) <= timeout * 2 / 3
    handler.clients.cache_clear()
    try:
        for client in handler.clients():
            assert client.meta.config.read_timeout == config.read_timeout
    finally:
        handler.clients.cache_clear()


ACCOUNT_VCPU_QUOTA = 16  # a new account's EMR Serverless quota (L-D05C8A75)
# EMR Serverless worker sizes: vCPU -> (least, most) GB of memory + memoryOverhead.
WORKER_MEMORY_GB = {1: (2, 8), 2: (4, 16), 4: (8, 30), 8: (16, 60), 16: (32, 120)}


def backfill_conf(runtime: str, max_executors: int) -> dict[str, str]:
    """The Spark parameters of the default backfill request, as the emulator reads them."""
    from emr_emulator.submit import launch
    from lambda_trigger.request import Deployment, for_backfill, start_job_run_request

    deployment = Deployment(
        application_id="app",
        job_role_arn="arn:aws:iam::111122223333:role/job",
        artifacts_uri="s3://b/artifacts",
        output_uri="s3://b/output",
        logs_uri="s3://b/logs",
        weights_uri="s3://b/artifacts/w.h5",
        model_uri="s3://b/artifacts/m.onnx",
        runtime=runtime,
        max_executors=max_executors,
    )
    return launch(start_job_run_request(deployment, for_backfill("s3://b/raw/"), "t")).conf


def run_vcpu(conf: dict[str, str]) -> int:
    """vCPU of one run at its largest: the driver and every executor it may scale to."""
    executors = int(conf["spark.dynamicAllocation.maxExecutors"])
    return int(conf["spark.driver.cores"]) + executors * int(conf["spark.executor.cores"])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_default_stack_and_request_fit_a_new_accounts_vcpu_quota(transformed, runtime):
    from emr_emulator.submit import memory_mb

    params = {name: p.get("Default") for name, p in transformed["Parameters"].items()}
    max_executors = int(params["MaxExecutors"])
    assert settings.FIELDS[settings.MAX_EXECUTORS][1] == max_executors  # the Lambda's default
    conf = backfill_conf(runtime, max_executors)
    assert int(conf["spark.dynamicAllocation.maxExecutors"]) == max_executors

    def worker(role: str) -> tuple[int, int]:
        cores = int(conf[f"spark.{role}.cores"])
        memory = memory_mb(conf[f"spark.{role}.memory"])
        overhead = memory_mb(conf.get(f"spark.{role}.memoryOverhead", "384m"))
        gigabytes = -(-(memory + overhead) // 1024)
        least, most = WORKER_MEMORY_GB[cores]
        assert least <= gigabytes <= most, (role, cores, gigabytes)
        return cores, gigabytes

    (driver_vcpu, driver_gb), (executor_vcpu, executor_gb) = worker("driver"), worker("executor")
    assert memory_mb(conf["spark.driver.memoryOverhead"]) >= 2048  # pyarrow, moments, threads
    footprint = driver_vcpu + max_executors * executor_vcpu
    assert footprint == run_vcpu(conf) <= int(params["MaxVcpu"]) <= ACCOUNT_VCPU_QUOTA
    # With MaxConcurrentRuns raised, a second run's driver still fits beside a full run.
    assert footprint + driver_vcpu <= int(params["MaxVcpu"])
    assert driver_gb + max_executors * executor_gb + driver_gb <= int(params["MaxMemoryGB"])


def test_the_application_queues_runs_beyond_what_its_capacity_holds_at_full_size(transformed):
    """SchedulerConfiguration: at most as many concurrent runs as MaxVcpu holds at
    MaxExecutors; the rest wait QUEUED, long enough to outlast a run ahead of them."""
    (app,) = resources_of(transformed, "AWS::EMRServerless::Application").values()
    assert app["Properties"]["SchedulerConfiguration"] == {
        "MaxConcurrentRuns": {"Ref": "MaxConcurrentRuns"},
        "QueueTimeoutMinutes": {"Ref": "QueueTimeoutMinutes"},
    }
    params = transformed["Parameters"]
    # The service's ranges (API SchedulerConfiguration): 1-1000 runs, 15-720 minutes.
    assert 1 <= params["MaxConcurrentRuns"]["MinValue"] <= params["MaxConcurrentRuns"]["MaxValue"]
    assert params["MaxConcurrentRuns"]["MaxValue"] <= 1000
    assert params["QueueTimeoutMinutes"]["MinValue"] >= 15
    assert params["QueueTimeoutMinutes"]["MaxValue"] <= 720
    # Supported with release labels emr-7.0.0 and above.
    for label in params["ReleaseLabel"]["AllowedValues"]:
        major, minor, _ = (int(n) for n in label.removeprefix("emr-").split("."))
        assert (major, minor) >= (7, 0), label
    defaults = {name: int(p["Default"]) for name, p in params.items() if name.startswith("Max")}
    widest = max(run_vcpu(backfill_conf(runtime, defaults["MaxExecutors"])) for runtime in RUNTIMES)
    assert defaults["MaxConcurrentRuns"] * widest <= defaults["MaxVcpu"]
    assert defaults["MaxConcurrentRuns"] == defaults["MaxVcpu"] // widest  # and no fewer
    # A queued run that waits out the queue ends CANCELLED; lasting at least the job timeout,
    # the watcher reads it as timed out and resubmits it (an operator's cancel is left alone).
    job_timeout = settings.FIELDS[settings.JOB_TIMEOUT_MINUTES][1]
    assert int(params["QueueTimeoutMinutes"]["Default"]) >= job_timeout
    assert "job timeout" in params["QueueTimeoutMinutes"]["Description"]  # a lower one warned


def test_release_labels_run_the_spark_the_tests_run(transformed):
    import pyspark

    from emr_emulator.releases import spark_version_of

    label = transformed["Parameters"]["ReleaseLabel"]
    assert label["Default"] in label["AllowedValues"]
    assert {spark_version_of(v) for v in label["AllowedValues"]} == {pyspark.__version__}
    spark_pin = (TEMPLATE.parent / "requirements" / "spark.txt").read_text()
    assert f"pyspark=={pyspark.__version__}" in spark_pin


def test_every_alarm_and_the_watcher_alert_through_one_topic(transformed):
    resources = transformed["Resources"]
    (topic,) = resources_of(transformed, "AWS::SNS::Topic")
    alarms = resources_of(transformed, "AWS::CloudWatch::Alarm")
    assert {name: a["Properties"]["AlarmActions"] for name, a in alarms.items()} == {
        name: [{"Ref": topic}]
        for name in ("DeadLetterAlarm", "TriggerErrorsAlarm", "WatcherErrorsAlarm")
    }
    watched = {
        a["Properties"]["Dimensions"][0]["Value"]["Ref"]
        for a in alarms.values()
        if a["Properties"]["MetricName"] == "Errors"
    }
    assert watched == {"TriggerFunction", "WatcherFunction"}
    (subscription,) = resources_of(transformed, "AWS::SNS::Subscription").values()
    assert subscription["Condition"] == "HasAlertEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlertEmail"}
    variables = resources["WatcherFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["ALERTS_TOPIC_ARN"] == {"Ref": topic}
    assert variables["MAX_ATTEMPTS"] == {"Ref": "MaxAttempts"}
    trigger = resources["TriggerFunction"]["Properties"]["Environment"]["Variables"]
    assert trigger["MAX_ATTEMPTS"] == {"Ref": "MaxAttempts"}  # the first attempt's tags


def test_the_watcher_hears_every_end_of_this_applications_runs(transformed):
    (rule,) = resources_of(transformed, "AWS::Events::Rule").values()
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.emr-serverless"]
    assert pattern["detail-type"] == ["EMR Serverless Job Run State Change"]
    assert pattern["detail"]["applicationId"] == [{"Ref": "FeaturesApplication"}]
    assert set(pattern["detail"]["state"]) == {"SUCCESS", "FAILED", "CANCELLED"}
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["WatcherFunction", "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 3


def test_the_watchers_role_reruns_this_application_alerts_its_topic_and_touches_manifests_only(
    transformed,
):
    allowed = _allowed(transformed, "WatcherFunctionRole")
    actions = {a for s in allowed for a in as_list(s["Action"])}
    assert actions == {
        "emr-serverless:StartJobRun",
        "emr-serverless:GetJobRun",
        "emr-serverless:TagResource",
        "iam:PassRole",
        "sns:Publish",
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
    }
    for statement in allowed:
        acts, resources = as_list(statement["Action"]), as_list(statement["Resource"])
        if any(a.startswith("emr-serverless:") for a in acts):
            assert all("FeaturesApplication" in str(r) for r in resources), statement
        if "iam:PassRole" in acts:
            assert resources == [{"Fn::GetAtt": ["JobRuntimeRole", "Arn"]}]
            assert statement["Condition"] == {
                "StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}
            }
        if "sns:Publish" in acts:
            assert resources == [{"Ref": "AlertsTopic"}]
        if {"s3:GetObject", "s3:PutObject"} & set(acts):
            assert _prefixes(resources) == {"manifests/*"}
        if "s3:ListBucket" in acts:
            assert statement["Condition"] == {"StringLike": {"s3:prefix": ["manifests/*"]}}


def test_what_an_erasure_leaves_behind_expires(transformed):
    """docs/erasure.md states these: erasure manifests (deleted key names) go after
    ErasureManifestRetentionDays, a deleted photo's old versions and replaced Parquet files 30
    days after they stopped being current, and then the delete markers that name the keys."""
    doc = template()
    rules = {
        rule["Id"]: rule
        for rule in transformed["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"][
            "Rules"
        ]
    }
    erasures = rules["expire-erasure-manifests"]
    assert erasures["Prefix"] == "manifests/erase-"
    assert erasures["ExpirationInDays"] == {"Ref": "ErasureManifestRetentionDays"}
    default = doc["Parameters"]["ErasureManifestRetentionDays"]["Default"]
    assert default <= doc["Parameters"]["ManifestRetentionDays"]["Default"]
    dead_letters = doc["Resources"]["UploadsDeadLetterQueue"]["Properties"]
    assert default * 86400 >= dead_letters["MessageRetentionPeriod"]  # a redrive still works
    versions = rules["old-versions-and-uploads"]
    assert "Prefix" not in versions and versions["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 30
    }
    assert versions["ExpiredObjectDeleteMarker"] is True
