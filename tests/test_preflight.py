"""The preflight: its request is a real run's with ``--preflight`` as the source (pure), the
command refuses a bad configuration before any AWS call, the job's checks name their causes
(a marker that cannot be written, on this machine's Spark), and the job run under the emulator
with the built archive reports the interpreter inside each process's ``./environment`` and
fails, naming the check, when executors cannot import onnxruntime."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from emr_emulator.run import run_job
from emr_serverless_job import preflight as job_preflight
from emr_serverless_job.config import parse_args
from emr_serverless_job.main import is_preflight
from fruits_build import upload
from fruits_contract import MODEL_FILE, PREFLIGHT_MARKER_FOLDER, RUN_ID_PATTERN, preflight_run_id
from fruits_ops import preflight
from lambda_trigger.outcomes import decide
from lambda_trigger.request import (
    PREFLIGHT_TAG,
    PREFLIGHT_TIMEOUT_MINUTES,
    for_backfill,
    for_preflight,
    request_from_job_run,
    start_job_run_request,
)
from lambda_trigger.settings import parse_s3_location
from tests.conftest import REAL_SAMPLE, needs_real_data
from tests.loopback import end_job_run, job_runs
from tests.test_emulator_reads import deployment

BUCKET = "fruits-prod-111122223333-eu-west-1"
DEPLOYMENT = deployment(BUCKET)
RUN_ID = preflight_run_id(datetime(2026, 12, 2, 14, 15, 2, tzinfo=UTC), "1a2b3c4d5e6f")
SETTINGS = {
    "APPLICATION_ID": "00fapp",
    "JOB_ROLE_ARN": "arn:aws:iam::111122223333:role/job",
    "ARTIFACTS_URI": f"s3://{BUCKET}/artifacts",
    "OUTPUT_URI": f"s3://{BUCKET}/output",
    "LOGS_URI": f"s3://{BUCKET}/logs",
    "RAW_URI": f"s3://{BUCKET}/raw/",
}


# --- the request (pure) ---------------------------------------------------------------------


def test_the_preflight_request_is_a_real_runs_with_preflight_as_its_source():
    raw = f"s3://{BUCKET}/raw/"
    ours = start_job_run_request(DEPLOYMENT, for_preflight(DEPLOYMENT, raw, RUN_ID), RUN_ID)
    real = start_job_run_request(DEPLOYMENT, for_backfill(raw), "token")
    ours_driver, real_driver = ours["jobDriver"]["sparkSubmit"], real["jobDriver"]["sparkSubmit"]
    # The same entry point, archive, job package, model and Spark parameters as a real run.
    assert ours_driver["entryPoint"] == real_driver["entryPoint"]
    assert ours_driver["sparkSubmitParameters"] == real_driver["sparkSubmitParameters"]
    assert ours["configurationOverrides"] == real["configurationOverrides"]
    assert ours["executionRoleArn"] == real["executionRoleArn"]
    arguments = ours_driver["entryPointArguments"]
    assert arguments[:2] == ["--preflight", raw]
    shared = real_driver["entryPointArguments"][2:]  # --output ... --model ... --run-id
    assert arguments[2 : 2 + len(shared)][:-1] == shared[:-1]  # all but the run id's value
    assert arguments[arguments.index("--run-id") + 1] == RUN_ID
    assert arguments[-2:] == ["--preflight-artifacts", f"{DEPLOYMENT.artifacts_uri}/artifacts.json"]
    # Its own run, tagged so that the watcher leaves it alone, with a short timeout.
    assert ours["name"] == RUN_ID and ours["clientToken"] == RUN_ID
    assert RUN_ID == "preflight-20261202t141502z-1a2b3c4d" and RUN_ID_PATTERN.match(RUN_ID)
    assert ours["tags"]["pipeline"] == PREFLIGHT_TAG
    assert decide("failed", ours["tags"]).decision == "ignore"
    assert ours["executionTimeoutMinutes"] == PREFLIGHT_TIMEOUT_MINUTES
    # The job accepts exactly what the builder sends.
    config = parse_args(arguments)
    assert config.preflight == raw.rstrip("/") and config.run_id == RUN_ID
    assert config.model == DEPLOYMENT.model_uri and config.runtime == "onnx"
    assert config.preflight_artifacts == f"{DEPLOYMENT.artifacts_uri}/artifacts.json"
    assert is_preflight(arguments) and not is_preflight(real_driver["entryPointArguments"])


def test_a_reference_model_and_a_photo_key_reach_the_job():
    reference = f"s3://{BUCKET}/artifacts/mobilenet_v2_fp32.onnx"
    raw = parse_s3_location(SETTINGS["RAW_URI"])
    photo = preflight.photo_location(raw, "Kiwi/a.jpg")
    assert photo == f"s3://{BUCKET}/raw/Kiwi/a.jpg"
    assert preflight.photo_location(raw, "raw/Kiwi/a.jpg") == photo
    assert preflight.photo_location(raw, photo) == photo
    with pytest.raises(ValueError, match="not under"):
        preflight.photo_location(raw, f"s3://{BUCKET}/output/x.jpg")
    source = for_preflight(DEPLOYMENT, photo, RUN_ID, reference)
    request = start_job_run_request(DEPLOYMENT, source, RUN_ID)
    config = parse_args(request["jobDriver"]["sparkSubmit"]["entryPointArguments"])
    assert config.preflight == photo and config.preflight_reference == reference


# --- the command: help, and refusals before any AWS call ------------------------------------


def test_help_names_the_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        preflight.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--stack", "--key", "--reference-model", "--job-run-id", "--raw", "--no-wait"):
        assert flag in out


@pytest.fixture
def no_aws(monkeypatch):
    """Fails the test on any AWS client: a refusal must come before anything is asked."""
    import boto3

    def client(self, service, *args, **kwargs):
        raise AssertionError(f"an AWS client ({service}) was made before the refusal")

    monkeypatch.setattr(boto3.session.Session, "client", client)


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        ([], {}, "APPLICATION_ID is not set"),
        ([], {k: v for k, v in SETTINGS.items() if k != "RAW_URI"}, "RAW_URI is not set"),
        (["--raw", "/local/photos"], SETTINGS, "--raw /local/photos: not an s3://"),
        (["--reference-model", "model.onnx"], SETTINGS, "--reference-model"),
        (["--reference-model", f"s3://{BUCKET}/a.h5"], SETTINGS, "not an .onnx file"),
        (["--key", "Kiwi/../a.jpg"], SETTINGS, "not the key of one object"),
        (["--key", f"s3://{BUCKET}/manifests/a.jpg"], SETTINGS, "not under s3://"),
        (["--poll-seconds", "-1"], SETTINGS, "--poll-seconds"),
    ],
)
def test_a_bad_configuration_exits_2_before_any_aws_call(argv, env, said, no_aws, capsys):
    assert preflight.main(argv, env=env) == preflight.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.startswith("configuration error:") and said in err
    if not env:  # every missing setting is named at once
        assert "JOB_ROLE_ARN is not set" in err and "RAW_URI is not set" in err


def test_dry_run_and_print_request_need_no_aws(no_aws, capsys):
    assert preflight.main(["--print-request"], env=SETTINGS) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["jobDriver"]["sparkSubmit"]["entryPointArguments"][:2] == [
        "--preflight",
        SETTINGS["RAW_URI"],
    ]
    assert preflight.main(["--dry-run"], env=SETTINGS) == 0
    assert "aws emr-serverless start-job-run" in capsys.readouterr().out


def test_missing_artifacts_are_named_before_a_run_is_started(stack, capsys):
    assert preflight.main([], env=stack.environment) == preflight.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"s3://{stack.bucket}/artifacts/main.py" in err and "./dev upload" in err
    assert job_runs(stack) == []


# --- the verdict (pure) ---------------------------------------------------------------------

JOB_RUN = {
    "applicationId": "00fapp",
    "jobRunId": "00fjob",
    "state": "SUCCESS",
    "configurationOverrides": {
        "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": "s3://b/logs/"}}
    },
}


def report_of(*checks: tuple[str, str, str]) -> dict:
    failed = next((c for c in checks if c[1] == "fail"), None)
    return {
        "ok": failed is None,
        "failed": failed[0] if failed else None,
        "cause": failed[2] if failed else None,
        "checks": [{"name": n, "status": s, "detail": d} for n, s, d in checks],
    }


def test_the_verdict_is_0_only_for_a_successful_run_whose_checks_passed():
    passed = report_of(("driver_python", "pass", "ok"), ("raw_read", "warn", "no photo"))
    code, lines = preflight.verdict(JOB_RUN, passed, None, "s3://b/r.json")
    assert code == 0 and lines[-1].startswith("preflight passed with warnings (raw_read)")
    failed = report_of(("driver_python", "pass", "ok"), ("executors", "fail", "no onnxruntime"))
    code, lines = preflight.verdict({**JOB_RUN, "state": "FAILED"}, failed, None, "s3://b/r.json")
    assert code == 1 and lines[-1] == "preflight failed: executors: no onnxruntime"
    details = 'Job failed ... Cannot run program "./environment/bin/python"'
    ended = {**JOB_RUN, "state": "FAILED", "stateDetails": details}
    code, lines = preflight.verdict(ended, None, "NoSuchKey", "s3://b/r.json")
    assert code == 1 and details in lines[-1]
    assert "s3://b/logs/applications/00fapp/jobs/00fjob/SPARK_DRIVER/stdout.gz" in lines[-1]
    code, lines = preflight.verdict(JOB_RUN, None, "NoSuchKey", "s3://b/r.json")
    assert code == 1 and "report is unreadable" in lines[-1]


# --- the job's checks (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "path"),
    [
        ("fma avx2 avx512f avx512bw avx512dq avx512vl avx512_vnni", "AVX-512 VNNI"),
        ("fma avx2 avx512f avx512bw avx512dq avx512vl", "AVX-512 core without VNNI"),
        ("fma avx2 avx_vnni", "AVX-VNNI"),
        ("fma avx2", "AVX2 without VNNI"),
        ("sse4_1", "SSE"),
        ("fma avx2 avx512f avx512bw avx512dq avx512vl avx512_vnni amx_tile amx_int8", "AMX"),
    ],
)
def test_the_int8_path_follows_mlas_dispatch_order(flags, path):
    assert job_preflight.int8_path("x86_64", set(flags.split())).startswith(path)


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(job_preflight.platform, "machine", lambda: "x86_64")
    cpuinfo = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C\n"
        "flags\t\t: fpu sse4_1 fma avx2 avx512f avx512bw avx512dq avx512vl avx512_vnni\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C\nflags\t\t: fpu\n"
    )
    facts = job_preflight.cpu_facts(cpuinfo)
    assert facts["model"] == "Intel(R) Xeon(R) Platinum 8375C" and facts["processors"] == 2
    assert facts["flags"]["avx512_vnni"] and not facts["flags"]["avx_vnni"]
    assert facts["int8_path"].startswith("AVX-512 VNNI")
    assert "does not report" in facts["int8_path_source"]


def facts_of(executable: str, realpath: str, **overrides) -> dict:
    environment = str(Path(executable).parent.parent)
    return {
        "executable": executable,
        "realpath": realpath,
        "version": "3.11.2",
        "prefix": environment,
        "environment": environment,
        "site_packages_on_path": True,
        "archive_pythons": ["python3.11"],
        **overrides,
    }


def test_the_interpreter_must_be_the_archives_with_its_packages(tmp_path):
    python = tmp_path / "python3.11"
    python.write_text("")
    ours = str(tmp_path / "environment" / "bin" / "python")
    assert job_preflight.judge_interpreter(facts_of(ours, str(python)))[0] == "pass"
    status, detail = job_preflight.judge_interpreter(facts_of("/usr/bin/python3", str(python)))
    assert status == "fail" and "not the archive's ./environment/bin/python" in detail
    status, detail = job_preflight.judge_interpreter(facts_of(ours, "/usr/bin/python3.11x"))
    assert status == "fail" and "resolves to nothing" in detail
    wrong = facts_of(ours, str(python), version="3.9.16", site_packages_on_path=False)
    status, detail = job_preflight.judge_interpreter(wrong)
    assert status == "fail" and "Python 3.9.16" in detail and "python3.11" in detail


def test_model_gates_and_the_build_comparison_name_what_differs():
    good = {"precision": "int8", "images": ["a", "b"], "int8_kernels_vs_op_by_op": {"min": 0.998}}
    assert job_preflight.judge_model(good)[0] == "pass"
    saturated = {**good, "int8_kernels_vs_op_by_op": {"min": 0.71}}
    status, detail = job_preflight.judge_model(saturated)
    assert status == "fail" and "int8 kernels vs op by op: cosine min 0.7100" in detail
    far = {**good, "vs_fp32_reference": {"min": 0.95}}
    assert "vs the fp32 reference" in job_preflight.judge_model(far)[1]
    built = {
        "files": {"main.py": {"sha256": "m"}, "emr_serverless_job.zip": {"sha256": "z"}},
        "archive": {"interpreter": "/usr/bin/python3.11", "packages": {"numpy": "2.4.6"}},
        "runtime": "onnx",
        "model": {"int8_min_cosine": 0.993, "parity_images": 32},
    }
    running = {"main.py": "m", "emr_serverless_job.zip": "z"}
    args = ("/usr/bin/python3.11", "/env", {"numpy": "2.4.6"}, "onnx")
    status, detail, _ = job_preflight.compare_with_build(built, running, None, None, *args)
    assert status == "pass" and "cosine min 0.9930 on 32 parity photos" in detail
    renamed = {"main.py": "m", "pyfiles-1.zip": "other"}
    status, detail, _ = job_preflight.compare_with_build(built, renamed, None, None, *args)
    assert status == "fail" and "pyfiles-1.zip is not the emr_serverless_job.zip" in detail
    other = ("/usr/bin/python3.9", "/env", {"numpy": "1.26.4"}, "onnx")
    status, detail, _ = job_preflight.compare_with_build(built, running, None, None, *other)
    assert "built for /usr/bin/python3.11" in detail and "numpy 1.26.4 runs" in detail


# --- the job on Spark here, and under the emulator with the built archive ---------------------


@needs_real_data()
def test_the_marker_that_cannot_be_written_fails_its_check_naming_the_uri(
    spark, onnx_dist, tmp_path
):
    """The job's checks on this session (local[2]: this Python, no ./environment)."""
    raw = tmp_path / "raw" / "Kiwi"
    raw.mkdir(parents=True)
    shutil.copyfile(sorted(REAL_SAMPLE.rglob("*.jpg"))[0], raw / "a.jpg")
    output = tmp_path / "output"
    output.mkdir()
    (output / PREFLIGHT_MARKER_FOLDER).write_text("a file where the marker's folder goes")
    model = tmp_path / "preflight-model.onnx"  # Spark ships a file by name, once per session
    shutil.copyfile(onnx_dist / MODEL_FILE, model)
    args = job_preflight.parse(
        ["--preflight", str(tmp_path / "raw"), "--output", str(output), "--model", str(model)]
    )
    report = job_preflight.run(args, spark)
    checks = {c.name: c for c in report.checks}
    assert checks["output_marker"].status == "fail"
    assert checks["output_marker"].detail.startswith(
        f"could not write {output}/_preflight/{args.run_id}:"
    )
    assert (
        checks["raw_read"].status == "pass"
        and "a.jpg read and decoded" in checks["raw_read"].detail
    )
    assert checks["driver_python"].status == "fail"  # this Python is not an archive's
    assert checks["model_on_executors"].status == "pass", checks["model_on_executors"].detail
    assert "int8 kernels vs op by op" in checks["model_on_executors"].detail
    assert job_preflight.publish(spark, report) is None
    written = json.loads(Path(report.report).read_text())
    assert written["ok"] is False and written["failed"] == "driver_python"
    assert written["not_checked"] and written["report"] == report.report


def run_as_the_service(stack, job_run_id: str) -> dict:
    """The emulator runs the submitted request, writing back only its report (and logs);
    the moto run then ends as the service's would."""
    emr = stack.client("emr-serverless")
    submitted = emr.get_job_run(applicationId=stack.application_id, jobRunId=job_run_id)["jobRun"]
    result = run_job(
        request_from_job_run(submitted),
        stack.client("s3"),
        application_id=stack.application_id,
        job_run_id=job_run_id,
        release_label=submitted.get("releaseLabel"),
        push=True,  # the run's report folder is in its own scope: nothing else is asked for
    )
    end_job_run(stack, job_run_id, result["state"], result["stateDetails"])
    return result


@needs_real_data()
def test_the_preflight_under_the_emulator_reports_each_processs_environment_and_its_failures(
    stack, onnx_dist, tmp_path, capsys
):
    bucket, s3 = stack.bucket, stack.client("s3")
    assert upload.main(["--artifacts", f"s3://{bucket}/artifacts", "--dist", str(onnx_dist)]) == 0
    photo = sorted(REAL_SAMPLE.rglob("*.jpg"))[0]
    s3.put_object(Bucket=bucket, Key="raw/Kiwi/a.jpg", Body=photo.read_bytes())
    built = json.loads((onnx_dist / "artifacts.json").read_text())["archive"]["interpreter"]
    env = stack.environment
    capsys.readouterr()

    # 1. Started as an operator would, run as the service would, followed to its report.
    assert preflight.main(["--no-wait"], env=env) == 0
    job_run_id = capsys.readouterr().out.strip().splitlines()[-1]
    result = run_as_the_service(stack, job_run_id)
    assert result["state"] == "SUCCESS", result["stateDetails"]
    follow = ["--job-run-id", job_run_id, "--poll-seconds", "0"]
    assert preflight.main(follow, env=env) == 0
    out = capsys.readouterr().out
    assert "preflight passed" in out
    (key,) = [k["Key"] for k in s3.list_objects_v2(Bucket=bucket, Prefix="output/")["Contents"]]
    assert key.startswith("output/reports/preflight/") and key.endswith("/report.json")
    report = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] and not [c for c in checks.values() if c["status"] == "fail"]
    driver = checks["driver_python"]["data"]
    assert driver["executable"].endswith("/driver/environment/bin/python")
    if built.startswith("/"):  # the image's interpreter, which the archive links to
        assert driver["realpath"] == built
    else:  # one the archive carries
        assert Path(driver["realpath"]).is_relative_to(Path(driver["executable"]).parents[1])
    executors = checks["executors"]["data"]["executors"]
    assert len(executors) == 2, checks["executors"]["detail"]  # each executor JVM
    folders = {Path(e["python"]).parents[2] for e in executors.values()}
    assert len(folders) == 2 and folders.isdisjoint({Path(driver["executable"]).parents[2]})
    for probe in executors.values():
        assert Path(probe["python"]).parts[-3:] == ("environment", "bin", "python")
        own = Path(probe["python"]).parents[1]
        assert probe["python_resolved"] == built or Path(probe["python_resolved"]).is_relative_to(
            own
        )
        assert probe["onnxruntime"]["version"] == built_version(onnx_dist, "onnxruntime")
        assert probe["cpu"]["int8_path"]
    assert checks["raw_read"]["data"]["uri"] == f"s3://{bucket}/raw/Kiwi/a.jpg"
    assert checks["output_marker"]["status"] == "pass"  # written and deleted: nothing pushed
    assert checks["artifacts"]["status"] in ("pass", "warn"), checks["artifacts"]["detail"]
    assert "emr_serverless_job.zip" in checks["artifacts"]["data"]["compared"]
    models = checks["model_on_executors"]
    assert (
        models["status"] == "pass"
        and "this is not a comparison with the fp32" in models["data"]["compared"]
    )
    for on_executor in models["data"]["executors"].values():
        assert (
            on_executor["int8_kernels_vs_op_by_op"]["min"] >= job_preflight.INT8_KERNEL_MIN_COSINE
        )
        assert "the raw photo" in on_executor["images"]

    # 2. The same request where the executors cannot import onnxruntime (a PYTHONPATH that
    #    only they get, as spark.executorEnv gives it on the service).
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "onnxruntime.py").write_text("raise ImportError('no onnxruntime here (test)')\n")
    assert preflight.main(["--print-request"], env=env) == 0
    request = json.loads(capsys.readouterr().out)
    request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"] += (
        f" --conf spark.executorEnv.PYTHONPATH={shadow}"
    )
    emr = stack.client("emr-serverless")
    broken = emr.start_job_run(**request)["jobRunId"]
    result = run_as_the_service(stack, broken)
    assert result["state"] == "FAILED"
    # Spark's PythonRunner sends the driver's stderr to its stdout: the log an operator reads.
    (stdout,) = [u for u in result["emulator"]["logs"] if u.endswith("SPARK_DRIVER/stdout.gz")]
    key = stdout.removeprefix(f"s3://{bucket}/")
    log = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).decode()
    cause = "onnxruntime: ImportError: no onnxruntime here (test)"
    assert "PreflightError: executors: executor " in log and cause in log
    assert preflight.main(["--job-run-id", broken, "--poll-seconds", "0"], env=env) == 1
    out = capsys.readouterr().out
    assert "preflight failed: executors: executor " in out and cause in out
    assert "pass  driver_imports" in out  # the driver never saw the executors' PYTHONPATH
    assert "pass  output_marker" in out and "pass  raw_read" in out
    assert "skip  model_on_executors" in out  # no executor could load the model


def built_version(dist: Path, package: str) -> str:
    return json.loads((dist / "artifacts.json").read_text())["archive"]["packages"][package]
