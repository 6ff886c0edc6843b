"""Real photos, real ImageNet weights: the features must mean something.

On this 4-class sample colour alone separates the classes, and a randomly initialised
MobileNetV2 separates them just as well (measured: leave-one-out accuracy 0.95-1.0 for
six seeds). What trained features add is robustness: photos of the same fruits taken
from farther away (zoomed out 2x) are still recognised with real weights (0.95) and
not with random ones (0.25-0.50, chance is 0.25). The test asserts both, through the
product's own path: a backfill fits PCA, and the new photos arrive as a manifest run
that reuses it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emr_serverless_job import job
from emr_serverless_job.config import parse_args
from fruits_contract import MODEL_FILE

from .conftest import REAL_SAMPLE, REAL_WEIGHTS, needs_real_data

pytestmark = [pytest.mark.real_data, needs_real_data()]

LOO_MIN = 0.9
ZOOMED_MIN = 0.85


def zoomed_out_copies(target: Path) -> list[Path]:
    """Each sample photo centred on a white canvas twice its size, same label folder."""
    written = []
    for photo in sorted(REAL_SAMPLE.rglob("*.jpg")):
        image = Image.open(photo).convert("RGB")
        canvas = Image.new("RGB", (image.width * 2, image.height * 2), (255, 255, 255))
        canvas.paste(image, (image.width // 2, image.height // 2))
        out = target / photo.parent.name / photo.name
        out.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out, quality=95)
        written.append(out)
    return written


def centroid_accuracy(
    train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray
) -> float:
    labels = sorted(set(train_y))
    centroids = np.stack([train[train_y == label].mean(axis=0) for label in labels])
    distances = ((test[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float(np.mean(np.array(labels)[distances.argmin(axis=1)] == test_y))


def leave_one_out_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    hits = [
        centroid_accuracy(np.delete(x, i, axis=0), np.delete(y, i), x[i : i + 1], y[i : i + 1])
        for i in range(len(y))
    ]
    return float(np.mean(hits))


def pca_rows(spark, output: Path, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    rows = spark.read.parquet(str(output / "features" / f"run_id={run_id}")).collect()
    return (
        np.array([r["pca_features"] for r in rows], dtype=np.float64),
        np.array([r["label"] for r in rows]),
    )


def separation(spark, model: list[str], tmp_path: Path) -> tuple[float, float, dict]:
    """(leave-one-out accuracy on the backfill, accuracy on zoomed-out photos, report);
    ``model`` is the flags that choose it (``--weights ...`` or ``--model ...``)."""
    output = tmp_path / "out"
    backfill = job.run(
        parse_args(["--input", str(REAL_SAMPLE), "--output", str(output), *model]), spark
    )
    manifest = tmp_path / "zoomed.jsonl"
    manifest.write_text(
        "".join(json.dumps({"uri": str(p)}) + "\n" for p in zoomed_out_copies(tmp_path / "zoomed"))
    )
    batch = job.run(
        parse_args(["--manifest", str(manifest), "--output", str(output), *model]), spark
    )
    x, y = pca_rows(spark, output, backfill.run_id)
    zx, zy = pca_rows(spark, output, batch.run_id)
    return (
        leave_one_out_accuracy(x, y),
        centroid_accuracy(x, y, zx, zy),
        {"backfill": backfill, "batch": batch},
    )


def test_real_weights_give_features_that_separate_and_generalise(spark, tmp_path):
    loo, zoomed, reports = separation(spark, ["--weights", str(REAL_WEIGHTS)], tmp_path)
    assert reports["backfill"].inputs == 100 and reports["backfill"].errors == 0
    assert not reports["backfill"].random_weights
    assert reports["backfill"].weights_sha256.startswith("6575f302")
    assert loo >= LOO_MIN, f"leave-one-out nearest-centroid accuracy {loo:.2f}"
    assert zoomed >= ZOOMED_MIN, f"zoomed-out photos recognised {zoomed:.2f}"


def test_the_deployed_model_separates_and_generalises_as_well(spark, onnx_dist, tmp_path):
    """The model ``./dev package`` ships by default (int8 ONNX), through the same check."""
    model = tmp_path / "real-data-deployed.onnx"  # Spark ships files by name, once a session
    shutil.copyfile(onnx_dist / MODEL_FILE, model)
    loo, zoomed, reports = separation(spark, ["--model", str(model)], tmp_path)
    assert reports["backfill"].inputs == 100 and reports["backfill"].errors == 0
    assert reports["backfill"].pca["precision"] == "int8"
    assert reports["batch"].pca["precision"] == "int8"
    assert loo >= LOO_MIN, f"leave-one-out nearest-centroid accuracy {loo:.2f}"
    assert zoomed >= ZOOMED_MIN, f"zoomed-out photos recognised {zoomed:.2f}"


def test_random_weights_do_not_pass_the_same_check(spark, tmp_path):
    loo, zoomed, reports = separation(spark, ["--weights", "random:0"], tmp_path)
    assert reports["backfill"].random_weights
    assert not (loo >= LOO_MIN and zoomed >= ZOOMED_MIN), (
        f"random weights passed: loo {loo:.2f}, zoomed {zoomed:.2f}"
    )
