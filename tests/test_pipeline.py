"""End to end on loopback: photos uploaded to S3 become features Parquet and error rows in S3.

upload -> S3 notification -> SQS -> the handler (invoked as the Lambda service would) ->
one job run in the EMR Serverless API -> its driver executed by local spark-submit ->
Parquet back in the moto server's S3, one row per uploaded image.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from lambda_trigger import handler as trigger
from lambda_trigger.request import ENTRY_POINT, JOB_PACKAGE, MODEL_FILE
from tests.loopback import job_runs, keys, poll_and_invoke, run_job_locally

JOB_ROOT = Path(__file__).resolve().parent.parent / "emr_serverless_job"
IMAGE_SIZE = 96


def image_bytes(color: tuple[int, int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (60, 40), color).save(buffer, fmt)
    return buffer.getvalue()


GOOD = {
    "raw/Apple Braeburn/0_100.jpg": image_bytes((200, 30, 30), "JPEG"),
    "raw/Apple Braeburn/my photo+1 (copy).jpg": image_bytes((190, 40, 20), "JPEG"),
    "raw/Kiwi/pêche ü.png": image_bytes((90, 160, 40), "PNG"),
    "raw/Kiwi/UPPER.JPG": image_bytes((80, 150, 50), "JPEG"),
}
BROKEN = {"raw/Kiwi/broken.jpg": image_bytes((1, 2, 3), "JPEG")[:300]}
NOT_AN_IMAGE = {"raw/Kiwi/notes.txt": b"picked on monday"}


def publish_artifacts(stack, tmp_path: Path) -> None:
    """What packaging/ uploads, built the same way: entry point, job package and the ONNX
    model (exported from random weights at 96 px, to stay small and fast)."""
    from emr_serverless_job.model import Weights
    from tests.test_packaging import build, load

    bundle = build.job_package(tmp_path / JOB_PACKAGE)
    model = tmp_path / MODEL_FILE
    load("export_onnx").convert(Weights(kind="random", seed=0), IMAGE_SIZE, model)
    s3 = stack.client("s3")
    s3.upload_file(str(bundle), stack.bucket, f"artifacts/{JOB_PACKAGE}")
    s3.upload_file(str(JOB_ROOT / "main.py"), stack.bucket, f"artifacts/{ENTRY_POINT}")
    s3.upload_file(str(model), stack.bucket, f"artifacts/{MODEL_FILE}")


def read_table(stack, prefix: str, folder: Path) -> list[dict]:
    s3 = stack.client("s3")
    folder.mkdir(parents=True)
    for key in keys(stack, prefix):
        if key.endswith(".parquet"):
            s3.download_file(stack.bucket, key, str(folder / Path(key).name))
    return pq.read_table(folder).to_pylist()


def test_uploaded_photos_become_features_and_error_rows_in_s3(stack, tmp_path):
    publish_artifacts(stack, tmp_path)  # the stack's defaults: runtime onnx, artifacts/ names
    s3 = stack.client("s3")
    for key, body in {**GOOD, **BROKEN, **NOT_AN_IMAGE}.items():
        s3.put_object(Bucket=stack.bucket, Key=key, Body=body)

    invocation = poll_and_invoke(stack, trigger.handler)
    assert invocation is not None and invocation.response == {"batchItemFailures": []}
    assert poll_and_invoke(stack, trigger.handler) is None  # one batch, one invocation
    (run,) = job_runs(stack)
    run_id = run["name"]

    local = run_job_locally(stack, run["jobRunId"], tmp_path / "emr")
    assert local.returncode == 0, local.stderr[-4000:]
    assert "4 featurized, 1 errors" in local.stdout
    assert f"MobileNetV2 {IMAGE_SIZE}px on onnx" in local.stdout  # the size came from the model

    def key_of(path: str) -> str:  # the runner mirrors s3://bucket/key to .../s3/bucket/key
        return path.split(f"/s3/{stack.bucket}/", 1)[1]

    features = read_table(stack, f"output/features/run_id={run_id}/", tmp_path / "features")
    assert sorted(key_of(row["path"]) for row in features) == sorted(GOOD)
    assert {row["label"] for row in features} == {"Apple Braeburn", "Kiwi"}
    assert all(len(row["features"]) == 1280 for row in features)
    errors = read_table(stack, f"output/errors/run_id={run_id}/", tmp_path / "errors")
    assert [key_of(row["path"]) for row in errors] == list(BROKEN)
    assert errors[0]["reason"].startswith("corrupt or truncated image")
    assert keys(stack, f"output/reports/run_id={run_id}/report.json")
