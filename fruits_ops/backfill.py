"""Start a backfill by hand: ``python -m fruits_ops.backfill --stack NAME --input s3://.../raw/``.

The request comes from the same builder the Lambda uses; only the input flag, the run id
and the client token differ. Each setting comes from its flag, else the stack's output
(``--stack``), else the Lambda's environment variable of the same name (``SETTINGS_ORDER``,
which every operator command shares with this one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fruits_contract import PCA_SCALINGS
from fruits_contract import cli as convention
from fruits_ops import listing
from lambda_trigger import settings as config
from lambda_trigger import sizing
from lambda_trigger.request import Attempt, for_backfill, start_job_run_request

TERMINAL_STATES = ("SUCCESS", "FAILED", "CANCELLED")
DEFAULT_POLL_SECONDS = 30.0
EXIT_RUN_FAILED = convention.EXIT_FAILED
EXIT_CONFIG_ERROR = convention.EXIT_USAGE
MAX_RETRIES = 9
# Said once, in the epilog of every command that takes the settings flags.
SETTINGS_ORDER = (
    "Each deployment setting (the flags whose help says 'default: stack output ...') is taken "
    "from its flag, else from the stack's output with --stack, else from the environment "
    "variable of the same name as the Lambda's (APPLICATION_ID, OUTPUT_URI, ...), else its "
    "built-in default; a bad value is refused (exit 2) naming the flag, output or variable "
    "it came from."
)
REGION_HELP = "AWS region (default: the AWS CLI's, from AWS_REGION or ~/.aws/config)"
STACK_HELP = "read the deployment settings from this CloudFormation stack's outputs"
POLL_HELP = "seconds between two GetJobRun calls while following the run"

# flag -> the environment variable (and stack output, in CamelCase) it stands for
FLAG_SETTINGS = {
    "application_id": config.APPLICATION_ID,
    "job_role_arn": config.JOB_ROLE_ARN,
    "artifacts": config.ARTIFACTS_URI,
    "output": config.OUTPUT_URI,
    "logs": config.LOGS_URI,
    "weights": config.WEIGHTS_URI,
    "model": config.MODEL_URI,
    "runtime": config.RUNTIME,
    "image_size": config.IMAGE_SIZE,
    "max_executors": config.MAX_EXECUTORS,
    "timeout_minutes": config.JOB_TIMEOUT_MINUTES,
}


def setting_name(output_key: str) -> str:
    """A stack output key (``ApplicationId``) as the setting it carries (``APPLICATION_ID``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", output_key).upper()


def stack_settings(cloudformation: Any, stack: str) -> dict[str, str]:
    outputs = cloudformation.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    return {setting_name(o["OutputKey"]): o["OutputValue"] for o in outputs}


def setting_help(name: str) -> str:
    """A settings flag's help: what the setting is and where its value comes from otherwise."""
    origins = []
    if name in config.STACK_OUTPUTS:
        origins.append(f"stack output {config.output_key(name)}")
    origins.append(f"${name}")
    default = config.FIELDS[name][1] or config.DERIVED_DEFAULTS.get(name)
    if default is not None:
        origins.append(str(default))
    return f"{config.DESCRIPTIONS[name]} (default: {', else '.join(origins)})"


def flag_name(dest: str) -> str:
    return f"--{dest.replace('_', '-')}"


def add_setting_flags(parser: argparse.ArgumentParser, flags: Mapping[str, str]) -> None:
    """One flag per setting (flag dest -> setting name), each saying where else it comes from."""
    settings = parser.add_argument_group("deployment settings", textwrap.fill(SETTINGS_ORDER))
    for flag, name in flags.items():
        settings.add_argument(
            flag_name(flag), dest=flag, metavar=name.rsplit("_", 1)[-1], help=setting_help(name)
        )


def setting_sources(
    args: argparse.Namespace,
    stack: Mapping[str, str],
    flags: Mapping[str, str] = FLAG_SETTINGS,
) -> config.Sources:
    """How the user gave each setting (``merged_settings``' order), for errors that name it."""
    given: dict[str, str] = {}
    for flag, name in flags.items():
        if getattr(args, flag) is not None:
            given[name] = flag_name(flag)
        elif stack.get(name):
            given[name] = f"stack {args.stack} output {config.output_key(name)}"
    return config.Sources(given=given, flags={name: flag_name(f) for f, name in flags.items()})


def build_parser() -> argparse.ArgumentParser:
    parser = convention.parser(
        "python -m fruits_ops.backfill",
        "Start one EMR Serverless job run over every image under an S3 prefix.",
        "with --wait, the run ended FAILED or CANCELLED",
    )
    parser.add_argument(
        "--input", required=True, help="s3:// prefix of the photos to featurize (recursive)"
    )
    parser.add_argument("--stack", help=STACK_HELP)
    parser.add_argument("--region", help=REGION_HELP)
    parser.add_argument("--wait", action="store_true", help="follow the run until it ends")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, help=POLL_HELP)
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument(
        "--dry-run",
        action="store_true",
        help="print the equivalent `aws emr-serverless start-job-run` command; start nothing",
    )
    shown.add_argument(
        "--print-request",
        action="store_true",
        help="print the StartJobRun request as JSON (for python -m emr_emulator); start nothing",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help=f"resubmit a failed or cancelled run this many times, 0 to {MAX_RETRIES} (the "
        "watcher does it; a backfill by hand is not retried unless asked)",
    )
    pca = parser.add_mutually_exclusive_group()
    pca.add_argument(
        "--pca-variance",
        type=float,
        help="the job's --pca-variance: share of variance the PCA keeps (default: the job's)",
    )
    pca.add_argument("--pca-k", type=int, help="the job's --pca-k: exactly this many components")
    parser.add_argument(
        "--pca-scaling",
        choices=PCA_SCALINGS,
        help="the job's --pca-scaling: none (centred) or standard (default: the job's, none)",
    )
    add_setting_flags(parser, FLAG_SETTINGS)
    return parser


def resolve_settings(
    session: Any,
    args: argparse.Namespace,
    env: Mapping[str, str],
    flags: Mapping[str, str] = FLAG_SETTINGS,
) -> tuple[dict[str, str], config.Sources]:
    """The one settings resolver of the operator commands: the settings a command runs with
    and where each came from, flag > stack output > environment (docs/cli.md); the stack's
    outputs are read only when ``--stack`` is given. (The erase command merges its own two
    settings over the environment's: ``erase.merged_settings``.)"""
    try:
        stack = stack_settings(session.client("cloudformation"), args.stack) if args.stack else {}
    except (BotoCoreError, ClientError) as error:  # no such stack, no region, no credentials
        raise config.SettingsError(f"--stack {args.stack}: {error}") from None
    return merged_settings(args, env, stack, flags), setting_sources(args, stack, flags)


def merged_settings(
    args: argparse.Namespace,
    env: Mapping[str, str],
    stack: Mapping[str, str],
    flags: Mapping[str, str] = FLAG_SETTINGS,
) -> dict[str, str]:
    """The environment's values of the settings ``flags`` name (flag -> setting), then every
    stack output, then the flags given, each over the one before (the preflight adds --raw)."""
    merged = {name: env[name] for name in flags.values() if env.get(name)}
    merged.update(stack)
    for flag, name in flags.items():
        value = getattr(args, flag)
        if value is not None:
            merged[name] = str(value)
    return merged


def wait_for(
    emr: Any,
    application_id: str,
    job_run_id: str,
    poll_seconds: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Follow a run until it ends, saying each state once; returns the final job run."""
    last = None
    while True:
        run = emr.get_job_run(applicationId=application_id, jobRunId=job_run_id)["jobRun"]
        if run["state"] != last:
            last = run["state"]
            say(f"{time.strftime('%H:%M:%S')} {job_run_id} {last}")
        if last in TERMINAL_STATES:
            return run
        time.sleep(poll_seconds)


def shown_instead(request: dict[str, Any], args: argparse.Namespace) -> bool:
    """``--dry-run`` prints the request as an ``aws`` command, ``--print-request`` as JSON
    (the emulator's input): either instead of starting it."""
    if args.dry_run:
        print(aws_cli_command(request))
    elif args.print_request:
        print(json.dumps(request, indent=2))
    return bool(args.dry_run or args.print_request)


def aws_cli_command(request: dict[str, Any]) -> str:
    """The same StartJobRun as an AWS CLI command, one option per line, to read or paste.

    The client token is left to the CLI, which makes a fresh one, as a backfill wants.
    """

    def quoted(value: object) -> str:
        text = value if isinstance(value, str) else json.dumps(value, indent=2)
        return shlex.quote(text)

    options = [
        ("--application-id", request["applicationId"]),
        ("--execution-role-arn", request["executionRoleArn"]),
        ("--name", request["name"]),
        ("--execution-timeout-minutes", str(request["executionTimeoutMinutes"])),
        ("--job-driver", request["jobDriver"]),
        ("--configuration-overrides", request["configurationOverrides"]),
        ("--tags", request["tags"]),
    ]
    lines = ["aws emr-serverless start-job-run"]
    lines += [f"  {flag} {quoted(value)}" for flag, value in options]
    return " \\\n".join(lines)


def describe_end(run: dict[str, Any]) -> str:
    usage = run.get("totalResourceUtilization") or {}
    parts = [f"state {run['state']}"]
    if run.get("stateDetails"):
        parts.append(f"reason: {run['stateDetails']}")
    if usage:
        parts.append(
            f"used {usage.get('vCPUHour', 0):.3f} vCPU-hours, "
            f"{usage.get('memoryGBHour', 0):.3f} GB-hours"
        )
    return "; ".join(parts)


def counted(session: Any, input_uri: str, deployment: Any) -> tuple[int | None, int | None]:
    """The photos and bytes under the prefix, for the run's size (``listing.py``); none when
    there are enough for the widest size, or when the prefix cannot be listed from here (then
    said, and the run is as wide as the stack allows)."""
    location = config.parse_s3_location(input_uri)
    threshold = sizing.widest_work_vcpu_s(deployment.max_executors, deployment.runtime)

    def enough(photos: int, total_bytes: int) -> bool:
        return sizing.work_vcpu_s(photos, total_bytes) >= threshold

    try:
        found = listing.count_photos(session.client("s3"), location.bucket, location.prefix, enough)
    except (BotoCoreError, ClientError) as error:
        print(
            f"warning: could not count the photos under {input_uri} ({error}): the run is "
            "sized as wide as the stack allows",
            file=sys.stderr,
        )
        return None, None
    if not found.complete:
        return None, None
    print(
        f"{found.photos} photos, {found.total_bytes / 1e6:.1f} MB under {input_uri}: the run is "
        "sized to them",
        file=sys.stderr,
    )
    return found.photos, found.total_bytes


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if env is None else env
    try:
        config.parse_s3_location(args.input)
    except config.BadValue as error:
        return convention.refuse(convention.flag_error("--input", args.input, error.problem))
    if not 0 <= args.retries <= MAX_RETRIES:
        return convention.refuse(
            convention.flag_error("--retries", args.retries, f"0 to {MAX_RETRIES}")
        )
    import boto3

    session = boto3.session.Session(region_name=args.region)
    try:
        deployment = config.deployment_from_environment(*resolve_settings(session, args, env))
    except config.SettingsError as error:
        return convention.refuse(str(error))
    extra: tuple[str, ...] = ()
    if args.pca_variance is not None:
        extra = ("--pca-variance", str(args.pca_variance))
    elif args.pca_k is not None:
        extra = ("--pca-k", str(args.pca_k))
    if args.pca_scaling is not None:
        extra += ("--pca-scaling", args.pca_scaling)
    source = for_backfill(args.input, extra, *counted(session, args.input, deployment))
    request = start_job_run_request(
        deployment, source, client_token=str(uuid.uuid4()), attempt=Attempt(1, 1 + args.retries)
    )
    if shown_instead(request, args):
        return 0
    emr = session.client("emr-serverless")
    job_run_id = emr.start_job_run(**request)["jobRunId"]
    print(job_run_id)
    print(
        f"run {source.run_id}: features at {deployment.output_uri}/features/run_id={source.run_id}",
        file=sys.stderr,
    )
    if not args.wait:
        return 0
    run = wait_for(
        emr,
        deployment.application_id,
        job_run_id,
        args.poll_seconds,
        lambda line: print(line, file=sys.stderr),
    )
    print(describe_end(run), file=sys.stderr)
    return 0 if run["state"] == "SUCCESS" else EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
