"""Compact the tables by hand: ``python -m fruits_ops.compact --stack NAME [--dry-run]``.

Starts one EMR Serverless job run of the job's compaction mode (``--compact MIN_AGE_DAYS``,
emr_serverless_job/compact.py), built by the same request builder as every other run: it
merges the ``features`` and ``errors`` partitions of batches older than ``--older-than-days``
into few files of at most 128 MiB, and every reader answers the same afterwards.

``--dry-run`` submits the same run with the job's ``--dry-run``: it lists the tables and prints
the plan (partitions, files, bytes and rows before and after) in the driver's stdout, and
writes nothing. The plan needs the tables' listing and row counts, which the job reads where
it runs; this command needs no access to the data. ``--print-request`` prints the request as
JSON and starts nothing. Settings come from their flags, else the Lambda's environment
variable names, else the stack's outputs (``--stack``): ``fruits_ops.resolver``.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fruits_contract import (
    COMPACT_MIN_AGE_DAYS,
    DRIVER_STDOUT_LOG,
    compaction_run_id,
    job_run_logs,
    report_path,
)
from fruits_contract import cli as convention
from fruits_contract.cli import say
from fruits_ops import resolver
from fruits_ops.backfill import (
    DEFAULT_POLL_SECONDS,
    POLL_HELP,
    describe_end,
    poll_problems,
    wait_for,
)
from lambda_trigger import settings as config
from lambda_trigger.request import (
    Attempt,
    Deployment,
    for_compaction,
    start_job_run_request,
)

EXIT_RUN_FAILED = convention.EXIT_FAILED
EXIT_CONFIG_ERROR = convention.EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = convention.parser(
        "python -m fruits_ops.compact",
        "Merge old batch partitions of the features and errors tables into few files, "
        "with one EMR Serverless job run (docs/operating.md, 'Compaction').",
        "with --wait, the run ended FAILED or CANCELLED",
    )
    resolver.add_stack_flags(parser)
    parser.add_argument(
        "--older-than-days",
        type=float,
        default=COMPACT_MIN_AGE_DAYS,
        help="merge only batch partitions whose newest file is at least this old",
    )
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument(
        "--dry-run",
        action="store_true",
        help="start a dry-run job run (billed like any run, unlike other commands' --dry-run, "
        "which start nothing): it prints the plan in the driver's stdout and writes nothing",
    )
    shown.add_argument(
        "--print-request",
        action="store_true",
        help="print the StartJobRun request as JSON (for python -m emr_emulator); start nothing",
    )
    parser.add_argument("--wait", action="store_true", help="follow the run until it ends")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, help=POLL_HELP)
    resolver.add_setting_flags(parser, resolver.DEPLOYMENT_FLAGS)
    return parser


def compaction_request(
    deployment: Deployment, min_age_days: float, dry_run: bool, now: datetime, nonce: str
) -> dict[str, Any]:
    """The StartJobRun request of one compaction run (pure: time and nonce are given)."""
    run_id = compaction_run_id(now, nonce)
    source = for_compaction(min_age_days, run_id, dry_run=dry_run)
    return start_job_run_request(deployment, source, client_token=run_id, attempt=Attempt(1, 1))


def driver_stdout(job_run: dict[str, Any]) -> str:
    """Where the service puts the driver's stdout (the plan of a dry run)."""
    log_uri = job_run["configurationOverrides"]["monitoringConfiguration"][
        "s3MonitoringConfiguration"
    ]["logUri"]
    folder = job_run_logs(log_uri, job_run["applicationId"], job_run["jobRunId"])
    return f"{folder}/{DRIVER_STDOUT_LOG}"


def report_lines(s3: Any, output_uri: str, run_id: str) -> list[str]:
    """Before and after per table, from the run's report."""
    location = config.parse_s3_location(output_uri.rstrip("/") + "/")
    key = location.key(report_path(run_id))
    report = json.loads(s3.get_object(Bucket=location.bucket, Key=key)["Body"].read())
    return [
        f"{table}: partitions {t['partitions']} -> {t['partitions_after']}, "
        f"files {t['files']} -> {t['files_after']} ({t['merged_rows']} rows merged)"
        for table, t in report["tables"].items()
    ]


def flag_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the flags themselves, all at once, before any run is started."""
    problems = poll_problems(args.poll_seconds)
    if not 0 <= args.older_than_days < float("inf"):
        problems.append(
            convention.flag_error("--older-than-days", args.older_than_days, "0 or more")
        )
    return problems


@convention.refusing
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = convention.checked_args(build_parser(), argv, flag_problems)
    session, deployment = resolver.open_settings(args, env, config.deployment_from_environment)
    request = compaction_request(
        deployment, args.older_than_days, args.dry_run, datetime.now(UTC), uuid.uuid4().hex
    )
    if args.print_request:
        print(json.dumps(request, indent=2))
        return 0
    emr = session.client("emr-serverless")
    job_run_id = emr.start_job_run(**request)["jobRunId"]
    run_id = request["name"]
    print(job_run_id)
    kind = "dry run (writes nothing)" if args.dry_run else "run"
    say(f"compaction {kind} {run_id} of {deployment.output_uri} started")
    if not args.wait:
        return 0
    run = wait_for(emr, deployment.application_id, job_run_id, args.poll_seconds, say)
    say(describe_end(run))
    if run["state"] != "SUCCESS":
        return EXIT_RUN_FAILED
    if args.dry_run:
        say(f"the plan is in {driver_stdout(run)}")
    else:
        for line in report_lines(session.client("s3"), deployment.output_uri, run_id):
            say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
