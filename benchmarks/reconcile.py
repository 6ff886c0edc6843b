"""Reconcile over a large bucket on a moto server: time and peak memory of the command itself.

    python benchmarks/reconcile.py [--objects 100000] [--featurized 0.9] [--errored 0.05]

Fills a bucket's raw/ with N image keys (tiny bodies: only the listing matters), writes
features Parquet (path + 1280 float32 features, as the job writes them) for a share of them
and errors Parquet for another, then runs ``python -m lambda_trigger.reconcile`` as its own
process and reports its wall time, its peak RSS, and the counts it printed.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
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
        featurized = int(args.objects * args.featurized)
        errored = int(args.objects * args.errored)
        write_table(s3, "features", list(range(featurized)), with_features=True)
        write_table(s3, "errors", list(range(featurized, featurized + errored)), False)
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
        result = subprocess.run(
            [sys.executable, "-m", "lambda_trigger.reconcile", "--out", os.devnull],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    finally:
        server.stop()
    print(result.stdout.strip() or result.stderr[-2000:])
    print(
        f"objects {args.objects:,} (filled in {filled:.0f} s), features {featurized:,} rows, "
        f"errors {errored:,} rows: reconcile {wall:.1f} s wall, peak RSS {peak_mib:.0f} MiB"
    )
    return 0 if result.returncode in (0, 1) else result.returncode


if __name__ == "__main__":
    sys.exit(main())
