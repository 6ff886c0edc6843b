"""``python -m emr_emulator``: run one job run here, as EMR Serverless would, and print its end.

The request is either a JSON file of StartJobRun's parameters (what
``python -m fruits_ops.backfill ... --print-request`` writes) or a job run already
submitted to an EMR Serverless API (``--application-id`` and ``--job-run-id``, read back with
GetJobRun; with ``--endpoint-url`` a moto server on loopback). S3 is whatever the endpoint
serves. Exit 0 on SUCCESS, 1 on FAILED or CANCELLED or when the emulator could not finish
the run (S3 unreadable, disk full), 2 when the request cannot be run.

The endpoint must be on loopback: a real account's buckets (growers' photos) would be
copied to this machine, so AWS itself, or any other host, takes ``--allow-remote-endpoint``.
S3 is only read unless ``--push``: then the run's own output partitions
(``OUTPUT/*/run_id=RUN/``), the prefixes given with ``--push-also`` and the logs are written
back, new objects only.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emr_emulator.run import SUCCESS, run_job
from emr_emulator.submit import RequestError
from fruits_contract import cli as convention
from lambda_trigger.request import request_from_job_run

EXIT_FAILED = convention.EXIT_FAILED
EXIT_BAD_REQUEST = convention.EXIT_USAGE


def is_loopback(endpoint: str | None) -> bool:
    """Whether ``endpoint`` (None: AWS itself) is served on this machine's loopback."""
    host = urlsplit(endpoint).hostname if endpoint else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_request_flags(parser: argparse.ArgumentParser) -> None:
    """Which job run to run, and the endpoint and region it is read from."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--request", type=Path, help="JSON file of StartJobRun's parameters")
    source.add_argument("--job-run-id", help="a job run submitted to the EMR Serverless API")
    parser.add_argument(
        "--application-id", help="the job run's application (needed with --job-run-id)"
    )
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 and EMR Serverless endpoint, on loopback (default: $AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--region", help="AWS region (default: the AWS CLI's, from AWS_REGION or ~/.aws/config)"
    )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Where the run works, what it may write back, and whether a remote endpoint is allowed."""
    parser.add_argument(
        "--workdir",
        type=Path,
        help="the run's working directory, kept for inspection (default: a temporary one, "
        "removed at the end)",
    )
    parser.add_argument(
        "--push",
        action="store_true",
        help="write back what the run created under its own output partitions, and its logs",
    )
    parser.add_argument(
        "--push-also",
        action="append",
        default=[],
        metavar="S3_PREFIX",
        help="with --push, also what the run created under this s3:// prefix (repeatable)",
    )
    parser.add_argument(
        "--allow-remote-endpoint",
        action="store_true",
        help="run against AWS or a non-loopback endpoint: copies the buckets the request "
        "names to this machine",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line, its flags in the order --help lists them."""
    parser = convention.parser(
        "python -m emr_emulator", __doc__, "the job run ended FAILED or CANCELLED"
    )
    add_request_flags(parser)
    add_run_flags(parser)
    return parser


def remote_refusal(args: argparse.Namespace) -> str | None:
    """Why the endpoint is refused (a real account's buckets would be copied here), if it is."""
    if is_loopback(args.endpoint_url) or args.allow_remote_endpoint:
        return None
    shown = f"--endpoint-url {args.endpoint_url}" if args.endpoint_url else "AWS"
    return (
        f"{shown}: not a loopback endpoint (no --endpoint-url means AWS itself): the "
        "emulator would copy every bucket the request names to this machine. "
        "Use a moto server on 127.0.0.1, or say --allow-remote-endpoint"
    )


def emulate(args: argparse.Namespace, request: dict[str, Any], release: str | None, s3: Any) -> int:
    """Run the request and print its end; a run that could not finish is a failed run."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        result = run_job(
            request,
            s3,
            job_run_id=args.job_run_id,
            release_label=release,
            workdir=args.workdir,
            keep=args.workdir is not None,
            push=args.push,
            push_also=tuple(args.push_also),
        )
    except RequestError as error:
        return convention.refuse(str(error))
    except (ValueError, OSError, BotoCoreError, ClientError) as error:
        # The request was accepted: what failed is the run (S3 unreadable, disk full), not the
        # command line, so it ends as a failed run, not as a usage error.
        print(f"the emulator could not finish the run: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["state"] == SUCCESS else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Refuse what cannot be run (a remote endpoint, a bad request) before any run starts."""
    parser = build_parser()
    args = parser.parse_args(argv)
    refusal = remote_refusal(args)
    if refusal is not None:
        return convention.refuse(refusal)
    if args.push_also and not args.push:
        parser.error("--push-also needs --push")
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session(region_name=args.region)
    s3 = session.client("s3", endpoint_url=args.endpoint_url)
    try:
        request, release = _request(args, session, parser)
    except (RequestError, ValueError, OSError, BotoCoreError, ClientError) as error:
        return convention.refuse(str(error))
    return emulate(args, request, release, s3)


def _request(
    args: argparse.Namespace, session: Any, parser: argparse.ArgumentParser
) -> tuple[dict[str, Any], str | None]:
    """The StartJobRun parameters to run, and the application's release when read back."""
    if args.request:
        try:
            return json.loads(args.request.read_text()), None
        except (OSError, ValueError) as error:
            raise ValueError(convention.flag_error("--request", args.request, error)) from None
    if not args.application_id:
        parser.error("--job-run-id needs --application-id")
    emr = session.client("emr-serverless", endpoint_url=args.endpoint_url)
    job_run = emr.get_job_run(applicationId=args.application_id, jobRunId=args.job_run_id)
    application = emr.get_application(applicationId=args.application_id)
    return request_from_job_run(job_run["jobRun"]), application["application"].get("releaseLabel")


if __name__ == "__main__":
    sys.exit(main())
