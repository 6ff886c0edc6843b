"""Start a backfill by hand: ``python -m fruits_ops.backfill --stack NAME --input s3://.../raw/``.

The request comes from the same builder the Lambda uses; only the input flag, the run id
and the client token differ. Each setting comes from its flag, else the Lambda's environment
variable of the same name, else the stack's output (``--stack``): the one order of every
operator command, ``fruits_ops.resolver``. This module also holds what the commands that start
a run share: following it (``wait_for``), describing its end, and printing it instead.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from emr_serverless_job.model import FEATURE_DIM
from fruits_contract import PCA_SCALINGS, logs
from fruits_contract import cli as convention
from fruits_contract.cli import say
from fruits_ops import listing, resolver
from lambda_trigger import settings as config
from lambda_trigger import sizing
from lambda_trigger.request import Attempt, for_backfill, start_job_run_request

TERMINAL_STATES = ("SUCCESS", "FAILED", "CANCELLED")
DEFAULT_POLL_SECONDS = 30.0
EXIT_RUN_FAILED = convention.EXIT_FAILED
EXIT_CONFIG_ERROR = convention.EXIT_USAGE
MAX_RETRIES = 9
POLL_HELP = "seconds between two GetJobRun calls while following the run, 0 or more"


def poll_problems(seconds: float) -> list[str]:
    """``--poll-seconds``: a wait between two calls, checked before a run is started (a negative
    or endless one would only fail once the run is already billed)."""
    if 0 <= seconds < math.inf:
        return []
    return [convention.flag_error("--poll-seconds", seconds, "0 or more seconds")]


def pca_problems(variance: float | None, k: int | None) -> list[str]:
    """The job's own bounds for ``--pca-variance`` and ``--pca-k``, checked here so that a value
    the job would refuse never starts a run that fails after its workers are billed."""
    problems = []
    if variance is not None and not 0 < variance <= 1:
        problems.append(convention.flag_error("--pca-variance", variance, "not in (0, 1]"))
    if k is not None and not 1 <= k <= FEATURE_DIM:
        problems.append(convention.flag_error("--pca-k", k, f"not between 1 and {FEATURE_DIM}"))
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = convention.parser(
        "python -m fruits_ops.backfill",
        "Start one EMR Serverless job run over every image under an S3 prefix.",
        "with --wait, the run ended FAILED or CANCELLED",
    )
    parser.add_argument(
        "--input", required=True, help="s3:// prefix of the photos to featurize (recursive)"
    )
    resolver.add_stack_flags(parser)
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
        help="the job's --pca-variance: share of variance the PCA keeps, in (0, 1] "
        "(default: the job's)",
    )
    pca.add_argument(
        "--pca-k",
        type=int,
        help=f"the job's --pca-k: exactly this many components, 1 to {FEATURE_DIM} "
        "(default: chosen by --pca-variance)",
    )
    parser.add_argument(
        "--pca-scaling",
        choices=PCA_SCALINGS,
        help="the job's --pca-scaling: none (centred) or standard (default: the job's, none)",
    )
    resolver.add_setting_flags(parser, resolver.DEPLOYMENT_FLAGS)
    return parser


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
    """One line on how a run ended: its state, the service's reason, and the resources it used
    (the service's totals, not a bill). The compact and preflight commands print it too."""
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
        say(
            f"could not count the photos under {input_uri} ({error}): the run is sized as "
            "wide as the stack allows",
            logs.WARNING,
        )
        return None, None
    if not found.complete:
        return None, None
    say(
        f"{found.photos} photos, {found.total_bytes / 1e6:.1f} MB under {input_uri}: the run is "
        "sized to them",
        photos=found.photos,
        bytes=found.total_bytes,
    )
    return found.photos, found.total_bytes


def flag_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the flags themselves, all at once, before a setting is read or AWS
    is asked anything."""
    problems = []
    try:
        config.parse_s3_location(args.input)
    except config.BadValue as error:
        problems.append(convention.flag_error("--input", args.input, error.problem))
    if not 0 <= args.retries <= MAX_RETRIES:
        problems.append(convention.flag_error("--retries", args.retries, f"0 to {MAX_RETRIES}"))
    return problems + poll_problems(args.poll_seconds) + pca_problems(args.pca_variance, args.pca_k)


def job_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The job's own flags this command passes through (the PCA's), as the job reads them."""
    extra: tuple[str, ...] = ()
    if args.pca_variance is not None:
        extra = ("--pca-variance", str(args.pca_variance))
    elif args.pca_k is not None:
        extra = ("--pca-k", str(args.pca_k))
    if args.pca_scaling is not None:
        extra += ("--pca-scaling", args.pca_scaling)
    return extra


@convention.refusing
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = convention.checked_args(build_parser(), argv, flag_problems)
    session, deployment = resolver.open_settings(args, env, config.deployment_from_environment)
    source = for_backfill(args.input, job_flags(args), *counted(session, args.input, deployment))
    request = start_job_run_request(
        deployment, source, client_token=str(uuid.uuid4()), attempt=Attempt(1, 1 + args.retries)
    )
    if shown_instead(request, args):
        return 0
    emr = session.client("emr-serverless")
    job_run_id = emr.start_job_run(**request)["jobRunId"]
    print(job_run_id)
    say(f"run {source.run_id}: features at {deployment.output_uri}/features/run_id={source.run_id}")
    if not args.wait:
        return 0
    run = wait_for(emr, deployment.application_id, job_run_id, args.poll_seconds, say)
    say(describe_end(run))
    return 0 if run["state"] == "SUCCESS" else EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
