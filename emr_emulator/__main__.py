"""``python -m emr_emulator``: run one job run here, as EMR Serverless would, and print its end.

The request is either a JSON file of StartJobRun's parameters (what
``python -m lambda_trigger.backfill ... --print-request`` writes) or a job run already
submitted to an EMR Serverless API (``--application-id`` and ``--job-run-id``, read back with
GetJobRun; with ``--endpoint-url`` a moto server on loopback). S3 is whatever the endpoint
serves. Exit 0 on SUCCESS, 1 on FAILED or CANCELLED, 2 when the request cannot be run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from emr_emulator.run import run_job
from emr_emulator.submit import RequestError
from lambda_trigger.request import request_from_job_run

EXIT_FAILED = 1
EXIT_BAD_REQUEST = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emr_emulator", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--request", type=Path, help="JSON file of StartJobRun's parameters")
    source.add_argument("--job-run-id", help="a job run submitted to the EMR Serverless API")
    parser.add_argument("--application-id", help="with --job-run-id")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    parser.add_argument("--region")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    args = parser.parse_args(argv)
    import boto3

    session = boto3.session.Session(region_name=args.region)
    s3 = session.client("s3", endpoint_url=args.endpoint_url)
    release = None
    try:
        if args.request:
            request = json.loads(args.request.read_text())
        else:
            if not args.application_id:
                parser.error("--job-run-id needs --application-id")
            emr = session.client("emr-serverless", endpoint_url=args.endpoint_url)
            job_run = emr.get_job_run(applicationId=args.application_id, jobRunId=args.job_run_id)
            request = request_from_job_run(job_run["jobRun"])
            application = emr.get_application(applicationId=args.application_id)
            release = application["application"].get("releaseLabel")
        result = run_job(
            request,
            s3,
            job_run_id=args.job_run_id,
            release_label=release,
            workdir=args.workdir,
            keep=args.workdir is not None,
        )
    except (RequestError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["state"] == "SUCCESS" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
