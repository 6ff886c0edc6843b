"""Peak memory of the deployed workers on phone photos, under the emulator's limits.

A backfill of ``--photos`` 4032x3024 JPEGs (throughput.phone_folder: the sample photos scaled
up with sensor-like noise, 2-4 MB each) as the stack submits it (``fruits_ops.backfill
--print-request``: ONNX Runtime, 4 vCPU executors of EXECUTOR_MEMORY + EXECUTOR_MEMORY_OVERHEAD,
the job's default --batch-size 64), run by ``emr_emulator`` against a moto server on loopback,
with the built artifacts uploaded by fruits_build/upload.py. The emulator's watchdog
(emr_emulator/limits.py) samples each worker's process-tree RSS every 0.2 s and kills a worker
over its size; its peaks are the result. ``--parallelism N`` overrides the request's
spark.default.parallelism (the job asks Spark for 4 x N splits), so that a small run packs
photos into tasks the way a large backfill does (up to 128 MiB of photos per task).

    .venv/bin/python benchmarks/phone_memory.py --photos 96 --dist dist
    .venv/bin/python benchmarks/phone_memory.py --photos 96 --dist dist --parallelism 1
    .venv/bin/python benchmarks/phone_memory.py --photos 96 --dist dist --trigger

``--trigger``: the upload path instead, as the Lambda submits it: the uploads' notifications
are handed to the handler (one poll of the queue, the stack's BatchSize), which writes the
manifest and starts a run sized to its photos and bytes (lambda_trigger/sizing.py: a batch of
phone photos may get the small 2-vCPU executor); the first run it started is the one measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import WORK, phone_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=int, default=96)
    parser.add_argument("--dist", type=Path, required=True, help="./dev package's output (onnx)")
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument(
        "--trigger", action="store_true", help="measure the Lambda's batch run, not a backfill"
    )
    args = parser.parse_args(argv)

    # The function's own settings (template.yaml), read when the handler module is imported.
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "fruits-trigger")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "FruitsFeatures")
    from emr_emulator.run import run_job
    from fruits_build import upload
    from fruits_ops import backfill
    from lambda_trigger import handler as trigger
    from lambda_trigger.request import request_from_job_run
    from tests.loopback import CREDENTIALS, MotoServer, deploy, job_runs, poll_and_invoke

    folder = phone_folder(args.photos)
    photos = sorted(p for p in folder.rglob("*.jpg"))
    server = MotoServer()
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    try:
        stack = deploy()
        bucket = stack.bucket
        with contextlib.redirect_stdout(io.StringIO()):
            assert (
                upload.main(["--artifacts", f"s3://{bucket}/artifacts", "--dist", str(args.dist)])
                == 0
            )
        s3 = stack.client("s3")
        for photo in photos:
            s3.upload_file(str(photo), bucket, f"raw/{photo.relative_to(folder).as_posix()}")
        if args.trigger:
            os.environ.update(stack.environment)  # the function's configuration (template.yaml)
            invocation = poll_and_invoke(stack, trigger.handler)
            assert invocation is not None and invocation.response == {"batchItemFailures": []}, (
                invocation
            )
            request = request_from_job_run(job_runs(stack)[0])
        else:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = backfill.main(
                    ["--input", f"s3://{bucket}/raw/", "--print-request"], env=stack.environment
                )
            assert code == 0
            request = json.loads(printed.getvalue())
        if args.parallelism is not None:
            driver = request["jobDriver"]["sparkSubmit"]
            driver["sparkSubmitParameters"] = re.sub(
                r"spark\.default\.parallelism=\d+",
                f"spark.default.parallelism={args.parallelism}",
                driver["sparkSubmitParameters"],
            )
        started = time.monotonic()
        workdir = WORK / "phone-memory-run"  # kept: logs, the run's tables and report
        shutil.rmtree(workdir, ignore_errors=True)
        result = run_job(request, s3, workdir=workdir, keep=True)
        seconds = time.monotonic() - started
        report_key = f"output/reports/run_id={request['name']}/report.json"
        local_report = workdir / "s3" / bucket / report_key
        report = json.loads(local_report.read_text()) if local_report.is_file() else {}
        sizes = [p.stat().st_size for p in photos]
        driver_log = (workdir / "driver.stderr").read_text(errors="replace")
        task_sets = [
            int(n) for n in re.findall(r"Adding task set \S+ with (\d+) tasks", driver_log)
        ]
        print(
            json.dumps(
                {
                    "photos": len(photos),
                    "photo_mb_mean": round(sum(sizes) / len(sizes) / 1e6, 2),
                    "parallelism": args.parallelism,
                    "path": "trigger" if args.trigger else "backfill",
                    "submitted": request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"],
                    "state": result["state"],
                    "stateDetails": result["stateDetails"],
                    "seconds": round(seconds, 1),
                    "master": result["emulator"]["master"],
                    "memory": result["emulator"]["memory"],
                    "featurized": report.get("images_featurized"),
                    "errors": report.get("errors"),
                    "batch_size": report.get("batch_size"),
                    "tasks_per_stage": task_sets,
                },
                indent=2,
            )
        )
        return 0 if result["state"] == "SUCCESS" else 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
