"""Prove a deployment before its first backfill: ``python -m fruits_ops.preflight --stack S``.

Submits a tiny job run on the stack's EMR Serverless application from the uploaded artifacts:
the request a real run sends (the same builder, entry point, venv archive, job package, model
and Spark parameters), with ``--preflight`` as its source. The job
(``emr_serverless_job/preflight.py``) checks, in seconds, the interpreter and imports of the
driver and of each executor, the CPU and its int8 path, one photo read under ``raw/``, a
marker written and deleted under ``output/``, and the model on the executors' CPUs; it writes
``OUTPUT/reports/preflight/RUN_ID/report.json``. This command follows the run as
``backfill --wait`` does, prints that report, and exits 0 only if the job succeeded and every
check passed; 1 with the cause (the failed check, or the service's state details and where the
driver's log is); 2 for a configuration it refuses before any AWS call is made with it.

Settings as for the backfill (the same resolver, ``fruits_ops.resolver``): each from its flag,
else the Lambda's environment variable of the same name, else the stack's output (``--stack``);
and ``RAW_URI`` (``--raw``), where the photo is read.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from fruits_contract import (
    ARTIFACTS_MANIFEST,
    ENTRY_POINT,
    JOB_PACKAGE,
    PREFLIGHT_REPORT,
    VENV_ARCHIVE,
    preflight_run_id,
)
from fruits_contract import cli as convention
from fruits_contract.cli import say
from fruits_ops import resolver
from fruits_ops.backfill import (
    DEFAULT_POLL_SECONDS,
    POLL_HELP,
    describe_end,
    poll_problems,
    shown_instead,
    wait_for,
)
from lambda_trigger import settings as config
from lambda_trigger.outcomes import driver_log
from lambda_trigger.request import Deployment, for_preflight, start_job_run_request

EXIT_FAILED = convention.EXIT_FAILED
EXIT_CONFIG_ERROR = convention.EXIT_USAGE
EXIT_INTERRUPTED = convention.EXIT_INTERRUPTED
# flag -> setting: the backfill's, and where photos arrive (the preflight reads one there).
PREFLIGHT_SETTINGS = {**resolver.DEPLOYMENT_FLAGS, "raw": config.RAW_URI}
MISSING = ("404", "NoSuchKey", "NotFound")


def build_parser() -> argparse.ArgumentParser:
    parser = convention.parser(
        "python -m fruits_ops.preflight",
        "Run a tiny job on the stack's EMR Serverless application, from the "
        "uploaded artifacts and with a real run's request, that checks the interpreter, "
        "imports, CPU, S3 access and model where the backfill will run; exit 0 only if "
        "every check passed.",
        "a check failed, or the run ended without its report",
        {convention.EXIT_INTERRUPTED: "stopped following (Ctrl-C), the run goes on"},
    )
    resolver.add_stack_flags(parser)
    parser.add_argument(
        "--key",
        help="the photo to read: a key under raw/ (or its s3:// URI); default: the first found",
    )
    parser.add_argument(
        "--reference-model",
        help="s3:// URI of an fp32 .onnx of the same weights (python -m fruits_build.build "
        "--precision fp32, uploaded by hand): the deployed int8 model is compared with it on each "
        "executor's CPU. Without it, the int8 model is compared with itself run operator by "
        "operator, and the build's int8-to-fp32 cosine is reported from artifacts.json",
    )
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, help=POLL_HELP)
    follow = parser.add_mutually_exclusive_group()
    follow.add_argument(
        "--no-wait",
        action="store_true",
        help="start the run, print its id and exit 0 (submitted, not checked); follow it "
        "later with --job-run-id",
    )
    follow.add_argument(
        "--job-run-id", help="follow a preflight already started and read its report"
    )
    follow.add_argument(
        "--dry-run",
        action="store_true",
        help="print the equivalent `aws emr-serverless start-job-run` command; start nothing",
    )
    follow.add_argument(
        "--print-request",
        action="store_true",
        help="print the StartJobRun request as JSON (for python -m emr_emulator); start nothing",
    )
    resolver.add_setting_flags(parser, PREFLIGHT_SETTINGS)
    return parser


def flag_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the flags themselves, known before any setting is read."""
    problems = poll_problems(args.poll_seconds)
    if args.reference_model is not None:
        try:
            location = config.parse_s3_location(args.reference_model)
        except config.BadValue as error:
            problems.append(
                convention.flag_error("--reference-model", args.reference_model, error.problem)
            )
        else:
            if not location.prefix.rstrip("/").endswith(".onnx"):
                problems.append(
                    convention.flag_error(
                        "--reference-model", args.reference_model, "not an .onnx file"
                    )
                )
    if args.key is not None:
        key = args.key.removeprefix("s3://").split("/", 1)[-1] if "://" in args.key else args.key
        if key.endswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
            problems.append(convention.flag_error("--key", args.key, "not the key of one object"))
    return problems


def photo_location(raw: config.S3Location, key: str | None) -> str:
    """``raw/`` itself (the job reads the first photo under it), or the object ``key`` names:
    a key under raw/ (with or without the prefix) or its s3:// URI; raises ``SettingsError``
    for any other object."""
    if key is None:
        return raw.uri
    if key.startswith("s3://"):
        bucket, _, name = key[len("s3://") :].partition("/")
        if bucket != raw.bucket or not name.startswith(raw.prefix):
            raise config.SettingsError(convention.flag_error("--key", key, f"not under {raw.uri}"))
    else:
        name = key if key.startswith(raw.prefix) else f"{raw.prefix}{key.lstrip('/')}"
    return f"s3://{raw.bucket}/{name}"


def artifacts_to_check(deployment: Deployment, reference_model: str | None) -> list[str]:
    """The objects the run reads before its first check: missing ones fail it obscurely."""
    names = [ENTRY_POINT, JOB_PACKAGE, VENV_ARCHIVE, ARTIFACTS_MANIFEST]
    uris = [deployment.artifact(name) for name in names]
    if deployment.runtime == "onnx":
        uris.append(deployment.model_uri)
    elif deployment.weights_uri.startswith("s3://"):
        uris.append(deployment.weights_uri)
    return [*uris, *([reference_model] if reference_model else [])]


def missing_objects(s3: Any, uris: list[str], say: Callable[[str], None]) -> list[str]:
    """Which of ``uris`` are not in S3, asked before the run starts since a missing one fails it
    obscurely; one that cannot be checked (another error code) is warned about, not refused."""
    missing = []
    for uri in uris:
        location = config.parse_s3_location(uri)
        key = location.prefix.rstrip("/")
        try:
            s3.head_object(Bucket=location.bucket, Key=key)
        except s3.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in MISSING:
                missing.append(uri)
            else:
                say(f"warning: could not check {uri} ({code}); the run will say")
    return missing


def argument(job_run: dict[str, Any], flag: str) -> str | None:
    arguments = job_run.get("jobDriver", {}).get("sparkSubmit", {}).get("entryPointArguments", [])
    for index, token in enumerate(arguments[:-1]):
        if token == flag:
            return arguments[index + 1]
    return None


def report_uri(job_run: dict[str, Any]) -> str | None:
    """Where the job wrote this preflight's report (from the run's own arguments)."""
    output, run_id = argument(job_run, "--output"), argument(job_run, "--run-id")
    if not output or not run_id or argument(job_run, "--preflight") is None:
        return None
    return f"{output.rstrip('/')}/{PREFLIGHT_REPORT.format(run_id=run_id)}"


def read_report(s3: Any, uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """The report, or None and why not."""
    location = config.parse_s3_location(uri)
    try:
        body = s3.get_object(Bucket=location.bucket, Key=location.prefix.rstrip("/"))["Body"]
        return json.loads(body.read()), None
    except s3.exceptions.ClientError as error:
        return None, error.response.get("Error", {}).get("Code", str(error))
    except ValueError as error:
        return None, f"not JSON: {error}"


def verdict(
    job_run: dict[str, Any], report: dict[str, Any] | None, unread: str | None, uri: str | None
) -> tuple[int, list[str]]:
    """The exit code and what to print, from how the run ended and what its report says."""
    lines = [describe_end(job_run)]
    if report is not None:
        lines += [f"  {c['status']:4}  {c['name']}: {c['detail']}" for c in report["checks"]]
        lines.append(f"report: {uri}")
    # The driver's Python output (fruits_contract.DRIVER_STDOUT_LOG), the JVM's beside it.
    driver = driver_log(job_run)
    log = f"{driver} (and stderr.gz)" if driver else ""
    if report is not None and not report.get("ok"):
        lines.append(f"preflight failed: {report['failed']}: {report['cause']}")
        return EXIT_FAILED, lines
    if job_run["state"] != "SUCCESS":
        if report is None:
            lines.append(
                f"preflight failed before its report was written ({uri}: {unread}): "
                f"{job_run.get('stateDetails') or job_run['state']}; driver log: {log}"
            )
        else:
            lines.append(f"preflight failed: the run ended {job_run['state']}; driver log: {log}")
        return EXIT_FAILED, lines
    if report is None:
        lines.append(
            f"preflight failed: the run succeeded but its report is unreadable ({uri}: "
            f"{unread}); driver log: {log}"
        )
        return EXIT_FAILED, lines
    warned = [c["name"] for c in report["checks"] if c["status"] == "warn"]
    lines.append(
        "preflight passed"
        + (f" with warnings ({', '.join(warned)})" if warned else "")
        + ": the backfill can run on this application"
    )
    return 0, lines


def start(
    session: Any, deployment: Deployment, request: dict[str, Any], args: argparse.Namespace
) -> str | int:
    """Start the preflight once its artifacts are uploaded: its job run id, or the exit code
    of a refusal (an artifact missing) or of ``--no-wait``."""
    s3 = session.client("s3")
    missing = missing_objects(s3, artifacts_to_check(deployment, args.reference_model), say)
    if missing:
        return convention.refuse(
            f"not uploaded: {', '.join(missing)} (run ./dev package and "
            f"./dev upload --stack {args.stack or 'NAME'} first)"
        )
    job_run_id = session.client("emr-serverless").start_job_run(**request)["jobRunId"]
    print(job_run_id)
    run_id = request["name"]
    say(
        f"preflight {run_id}: report at {deployment.output_uri}/"
        f"{PREFLIGHT_REPORT.format(run_id=run_id)}"
    )
    if args.no_wait:
        say(f"follow it with: python -m fruits_ops.preflight --job-run-id {job_run_id} ...")
        return 0
    return job_run_id


def deployment_and_photo(
    key: str | None, values: dict[str, str], sources: config.Sources
) -> tuple[config.Deployment, str]:
    """The deployment and the photo to try, both checked before anything is said or started."""
    deployment, raw = config.preflight_from_environment(values, sources)
    return deployment, photo_location(raw, key)


@convention.refusing
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = convention.checked_args(build_parser(), argv, flag_problems)
    session, (deployment, source) = resolver.open_settings(
        args, env, partial(deployment_and_photo, args.key), PREFLIGHT_SETTINGS
    )
    run_id = preflight_run_id(datetime.now(UTC), uuid.uuid4().hex)
    job_source = for_preflight(deployment, source, run_id, args.reference_model)
    request = start_job_run_request(deployment, job_source, client_token=run_id)
    if shown_instead(request, args):
        return 0
    job_run_id = args.job_run_id or start(session, deployment, request, args)
    if isinstance(job_run_id, int):
        return job_run_id
    emr = session.client("emr-serverless")
    try:
        job_run = wait_for(emr, deployment.application_id, job_run_id, args.poll_seconds, say)
    except KeyboardInterrupt:
        say(f"stopped following {job_run_id}; it goes on: follow it again with --job-run-id")
        return EXIT_INTERRUPTED
    uri = report_uri(job_run)
    report, unread = (
        read_report(session.client("s3"), uri) if uri else (None, "not a preflight run")
    )
    code, lines = verdict(job_run, report, unread, uri)
    for line in lines:
        print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
