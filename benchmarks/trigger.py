"""The Lambda handler's time and memory for 5,000 upload events, on loopback.

Starts a moto server, deploys the template's resources on it, and hands the handler
5,000 S3 notifications (shaped after a real one from the server) in batches of 1,000,
as the SQS event source mapping would. Prints, per invocation: wall time, Python heap
peak (tracemalloc) and the process's peak RSS; and the cold import of the handler.

    .venv/bin/python benchmarks/trigger.py [--events 5000] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "FruitsFeatures")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")


def cold_import() -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of a fresh interpreter importing the handler."""
    probe = (
        "import time, resource; t = time.perf_counter();"
        "import lambda_trigger.handler;"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    return float(out[0]), float(out[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    from tests.loopback import CREDENTIALS, FakeContext, MotoServer, deploy, job_runs, sqs_event

    server = MotoServer()
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    try:
        stack = deploy()
        os.environ.update(stack.environment)
        from lambda_trigger import handler as trigger
        from tests.test_trigger_aws import notifications_like

        names = [f"raw/Class {i % 7}/img {i}+{i}.jpg" for i in range(args.events)]
        messages = notifications_like(stack, names)
        arn = "arn:aws:sqs:eu-west-1:123456789012:uploads"
        rows = []
        for start in range(0, len(messages), args.batch_size):
            event = sqs_event(messages[start : start + args.batch_size], arn)
            tracemalloc.start()
            began = time.perf_counter()
            response = trigger.handler(event, FakeContext())
            seconds = time.perf_counter() - began
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert response == {"batchItemFailures": []}, response
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append((len(event["Records"]), seconds, peak / 2**20, rss))
        runs = len(job_runs(stack))
    finally:
        server.stop()

    seconds, rss = cold_import()
    print(f"cold import of lambda_trigger.handler: {seconds:.2f} s, peak RSS {rss:.0f} MiB")
    print("| invocation | events | wall time | Python heap peak | process peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    for number, (events, secs, heap, peak_rss) in enumerate(rows, start=1):
        cells = [str(number), str(events), f"{secs * 1000:.0f} ms", f"{heap:.1f} MiB"]
        print(f"| {' | '.join(cells)} | {peak_rss:.0f} MiB |")
    total = sum(r[1] for r in rows)
    print(f"{args.events} events -> {runs} job runs, {total:.2f} s in the handler")
    print(json.dumps({"events": args.events, "job_runs": runs, "handler_seconds": total}))


if __name__ == "__main__":
    main()
