"""Reconcile over a large bucket on a moto server: time and peak memory of the command itself.

    python benchmarks/reconcile.py [--objects 100000] [--featurized 0.9] [--errored 0.05]

Fills a bucket's raw/ with N image keys (tiny bodies: only the listing matters), writes
features Parquet (path + 1280 float32 features, as the job writes them) for a share of them
and errors Parquet for another, then runs ``python -m fruits_ops.reconcile`` as its own
process and reports its wall time, its peak RSS, and the counts it printed.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.loopback import CREDENTIALS, REGION, MotoServer  # noqa: E402

BUCKET = "fruits-bench-123456789012-eu-west-1"
ROWS_PER_FILE = 10_000
FEATURE_DIM = 1280
SAMPLE_SECONDS = 0.05


def high_water_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM: its own, not inherited at fork, as
    getrusage's ru_maxrss of a child is)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    lines = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(lines[0].split()[1]) / 1024 if lines else 0.0  # none once it has exited


def key(index: int) -> str:
    return f"raw/Class {index % 97}/photo {index:07d}.jpg"


def fill(s3: object, objects: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(
            pool.map(lambda i: s3.put_object(Bucket=BUCKET, Key=key(i), Body=b"x"), range(objects))
        )
    return time.perf_counter() - started


def write_table(s3: object, table: str, indexes: list[int], with_features: bool) -> None:
    rng = np.random.default_rng(0)
    for part, start in enumerate(range(0, len(indexes), ROWS_PER_FILE)):
        chunk = indexes[start : start + ROWS_PER_FILE]
        columns = {"path": [f"s3://{BUCKET}/{key(i)}" for i in chunk]}
        if with_features:
            values = rng.random((len(chunk), FEATURE_DIM), dtype=np.float32)
            columns["features"] = pa.FixedSizeListArray.from_arrays(values.ravel(), FEATURE_DIM)
        else:
            columns["reason"] = ["corrupt or truncated image"] * len(chunk)
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns), buffer)
        s3.put_object(
            Bucket=BUCKET,
            Key=f"output/{table}/run_id=bench-{part}/part-{part:05d}.parquet",
            Body=buffer.getvalue(),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--featurized", type=float, default=0.9)
    parser.add_argument("--errored", type=float, default=0.05)
    args = parser.parse_args()
    server = MotoServer()
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    try:
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        filled = fill(s3, args.objects)
        print(f"filled raw/ with {args.objects:,} keys in {filled:.0f} s", flush=True)
        featurized = int(args.objects * args.featurized)
        errored = int(args.objects * args.errored)
        write_table(s3, "features", list(range(featurized)), with_features=True)
        write_table(s3, "errors", list(range(featurized, featurized + errored)), False)
        print(f"tables written: {featurized:,} feature rows, {errored:,} error rows", flush=True)
        env = {
            **os.environ,
            "APPLICATION_ID": "00fbench",
            "JOB_ROLE_ARN": "arn:aws:iam::123456789012:role/bench",
            "RAW_URI": f"s3://{BUCKET}/raw/",
            "ARTIFACTS_URI": f"s3://{BUCKET}/artifacts",
            "MANIFESTS_URI": f"s3://{BUCKET}/manifests",
            "OUTPUT_URI": f"s3://{BUCKET}/output",
            "LOGS_URI": f"s3://{BUCKET}/logs",
        }
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "fruits_ops.reconcile", "--missing-manifest", os.devnull],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak_mib = 0.0
        while process.poll() is None:
            peak_mib = max(peak_mib, high_water_mib(process.pid))
            time.sleep(SAMPLE_SECONDS)
        wall = time.perf_counter() - started
        result = subprocess.CompletedProcess(
            process.args, process.returncode, *process.communicate()
        )
        print(result.stdout.strip() or result.stderr[-2000:])
        print(
            f"objects {args.objects:,}, features {featurized:,} rows, errors {errored:,} rows: "
            f"reconcile {wall:.1f} s wall, peak RSS {peak_mib:.0f} MiB",
            flush=True,
        )
    finally:
        server.process.kill()  # a server holding 100,000 objects is slow to stop politely
    return 0 if result.returncode in (0, 1) else result.returncode


if __name__ == "__main__":
    sys.exit(main())
