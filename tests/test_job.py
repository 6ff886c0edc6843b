"""The job on a real local Spark: accounting, exactly-once featurization, reruns, manifests."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emr_serverless_job import inputs, job
from emr_serverless_job.config import parse_args
from emr_serverless_job.model import FEATURE_DIM
from emr_serverless_job.reduce import ReductionMismatch
from emr_serverless_job.run_report import RunReport
from fruits_demo.image_sets import write_image_set

FAST = ["--weights", "random:0", "--image-size", "96", "--batch-size", "8"]


def run_job(spark, *argv: str) -> RunReport:
    return job.run(parse_args([*FAST, *argv]), spark)


def read_table(spark, output: Path, table: str):
    return spark.read.parquet(str(output / table))


@pytest.fixture(scope="module")
def backfill(spark, image_folder, tmp_path_factory):
    folder, expected = image_folder
    output = tmp_path_factory.mktemp("backfill-out")
    report = run_job(spark, "--input", str(folder), "--output", str(output))
    return report, output, expected


def test_a_run_leaves_nothing_cached(spark, image_folder, tmp_path):
    """A driver runs one job per session on EMR, but tests, the emulator and a notebook run
    many: every frame a run caches (the featurized images, the errors, the rejections) must
    be released when it ends, or each run keeps its images' vectors in executor memory."""
    folder, _ = image_folder
    cached = spark.sparkContext._jsc.getPersistentRDDs
    before = cached().size()
    run_job(spark, "--input", str(folder), "--output", str(tmp_path / "out"))
    assert cached().size() == before


def test_every_input_is_a_feature_or_an_error(spark, backfill):
    report, output, expected = backfill
    assert report.inputs == expected.images
    assert report.spark["driver_jit_max_tier"] == 1  # main.local_builder's JVM options
    assert report.spark["driver_gc"] == ["PS MarkSweep", "PS Scavenge"]  # EMR's collector
    assert report.spark["whole_stage_codegen"] == "false"  # job.configure_session's
    assert report.errors == expected.broken
    assert report.features == expected.images - expected.broken
    features = read_table(spark, output, "features").collect()
    errors = read_table(spark, output, "errors").collect()
    assert len(features) == report.features and len(errors) == report.errors
    assert {Path(r["path"]).name for r in errors} == {
        "empty.jpg",
        "truncated.jpg",
        "not-an-image.png",
    }
    reasons = {Path(r["path"]).name: r["reason"] for r in errors}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "truncated" in reasons["truncated.jpg"]
    assert all(r["run_id"] == report.run_id for r in features + errors)
    assert "notes.txt" not in {Path(r["path"]).name for r in features + errors}


def test_rows_carry_identity_label_and_both_feature_sets(spark, backfill, image_folder):
    report, output, _ = backfill
    folder, _ = image_folder
    rows = {
        Path(r["path"]).name + "@" + r["label"]: r
        for r in read_table(spark, output, "features").collect()
    }
    assert {r["label"] for r in rows.values()} >= {"Pear Ø", "Cherry 3", "Apple Braeburn", "Mixed"}
    banana = rows["0_100.jpg@Banana"]
    assert (
        banana["sha256"]
        == hashlib.sha256((folder / "Banana" / "0_100.jpg").read_bytes()).hexdigest()
    )
    assert banana["size_bytes"] == (folder / "Banana" / "0_100.jpg").stat().st_size
    assert len(banana["features"]) == FEATURE_DIM
    assert len(banana["pca_features"]) == report.pca["k"]
    assert (rows["rotated.jpg@Mixed"]["width"], rows["rotated.jpg@Mixed"]["height"]) == (60, 100)


def test_each_image_is_featurized_exactly_once_by_few_models(backfill):
    report, _, _ = backfill
    decoded_errors = report.errors - 1  # the empty file is rejected before it is read
    assert report.images_featurized == report.features + decoded_errors
    # Spark reuses Python workers across the session and each keeps the models it built, so
    # an earlier test may have built this one already: at most one per worker, never per batch.
    batches = -(-report.images_featurized // 8)  # FAST's --batch-size
    assert report.models_built <= 2 < batches, "one model per Python worker (local[2])"


def test_k_is_the_fewest_components_reaching_the_variance(backfill):
    report, _, _ = backfill
    spectrum, k = report.pca["component_variance"], report.pca["k"]
    assert sum(spectrum[:k]) >= 0.95 > sum(spectrum[: k - 1])
    assert report.pca["explained_variance"] == pytest.approx(sum(spectrum[:k]), abs=1e-5)


def test_report_is_written_and_flags_random_weights(backfill):
    report, output, _ = backfill
    written = json.loads(
        (output / "reports" / f"run_id={report.run_id}" / "report.json").read_text()
    )
    assert written["random_weights"] is True
    assert any("RANDOM WEIGHTS" in w for w in written["warnings"])
    assert written["inputs"] == report.inputs
    assert set(written["timings_s"]) >= {"list", "featurize", "pca", "write", "total"}
    assert written["images_per_second"] > 0
    assert written["image_size"] == 96 and written["weights"] == "random:0"
    assert report.run_id.startswith("backfill-")
    assert "RANDOM WEIGHTS" in report.summary()


def test_rerun_replaces_its_partition_and_leaves_others(spark, tmp_path):
    folder = tmp_path / "in"
    write_image_set(folder, 2, classes=("Banana", "Kiwi"))
    output = tmp_path / "out"
    argv = ["--input", str(folder), "--output", str(output), "--pca-k", "2"]
    first = run_job(spark, *argv)
    again = run_job(spark, *argv)
    assert again.run_id == first.run_id
    assert read_table(spark, output, "features").count() == 4, "a rerun must not duplicate rows"
    (folder / "Kiwi" / "1_100.jpg").unlink()
    (folder / "Kiwi" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    third = run_job(spark, *argv)
    assert read_table(spark, output, "features").count() == 3
    assert third.errors == 1
    (error,) = read_table(spark, output, "errors").collect()
    assert Path(error["path"]).name == "broken.jpg" and error["run_id"] == first.run_id
    other = run_job(spark, *argv, "--run-id", "manual-1")
    features = read_table(spark, output, "features")
    assert features.count() == 6
    assert {r["run_id"] for r in features.select("run_id").distinct().collect()} == {
        first.run_id,
        other.run_id,
    }


def write_manifest(path: Path, *entries: object) -> Path:
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries) + "\n")
    return path


def test_manifest_run_projects_like_the_backfill(spark, backfill, image_folder, tmp_path):
    report, output, _ = backfill
    folder, _ = image_folder
    chosen = [folder / "Banana" / "0_100.jpg", folder / "Pear Ø" / "1_100.jpg"]
    empty = tmp_path / "Kiwi" / "empty.jpg"
    empty.parent.mkdir()
    empty.touch()
    hidden = tmp_path / "Kiwi" / "_IMG_0001.jpg"
    hidden.write_bytes(chosen[0].read_bytes())
    manifest = write_manifest(
        tmp_path / "batch.jsonl",
        *({"uri": str(p), "size": p.stat().st_size} for p in chosen),
        {"uri": str(chosen[0])},  # duplicate delivery
        {"uri": f"file://{chosen[1]}"},  # the same file, spelled another way
        {"uri": str(folder / "Kiwi" / "gone.jpg")},  # deleted before the run
        {"uri": str(empty)},
        {"uri": str(hidden)},
        "{oops",
    )
    incremental = run_job(spark, "--manifest", str(manifest), "--output", str(output))
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert incremental.run_id == f"batch-{digest[:16]}"
    assert incremental.pca["k"] == report.pca["k"] and "loaded" in incremental.pca["status"]
    assert (incremental.features, incremental.errors, incremental.duplicates_skipped) == (2, 4, 2)
    # The empty file's line gave no size, so the scan reads it and the decoder rejects it.
    assert incremental.images_featurized == 3
    schemas = {
        run: pq.read_schema(next((output / "features" / f"run_id={run}").glob("*.parquet")))
        for run in (report.run_id, incremental.run_id)
    }
    assert schemas[report.run_id] == schemas[incremental.run_id], "one table, one schema"
    features = read_table(spark, output, "features")
    by_run = {
        (r["run_id"], Path(r["path"]).name, r["label"]): np.array(r["pca_features"])
        for r in features.collect()
    }
    for image in chosen:
        key = (image.name, image.parent.name)
        np.testing.assert_allclose(
            by_run[(incremental.run_id, *key)], by_run[(report.run_id, *key)], atol=1e-4
        )
    errors = read_table(spark, output, "errors").filter(f"run_id = '{incremental.run_id}'")
    reasons = sorted(r["reason"] for r in errors.collect())
    assert reasons[0] == "empty file (0 bytes)"
    assert reasons[1] == inputs.HIDDEN_NAME
    assert reasons[2] == "listed in the manifest but not found"
    assert reasons[3].startswith("not valid JSON")


def test_manifest_files_are_read_without_a_lookup_or_a_job_per_file(
    spark, image_folder, tmp_path, monkeypatch
):
    """More than 32 named files (where Spark would list them in a job), awkward spellings,
    a ``key=value`` folder, sizes wrong or absent, a duplicate and a missing file: the
    driver stats nothing and runs no job; the scan reads every present file at its real
    length and skips the missing one, which stays listed for the reconciliation."""
    from emr_serverless_job import hadoopfs

    folder, _ = image_folder
    source = (folder / "Kiwi" / "0_100.jpg").read_bytes()
    copies = []
    for number in range(36):
        target = tmp_path / ("day=2026-11-23" if number % 2 else "Pear Ø") / f"{number} 100%#.jpg"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(source)
        copies.append(target)
    gone = tmp_path / "Kiwi" / "gone.jpg"
    lines = [
        {"uri": str(path), **({"size": 7} if n % 3 == 0 else {})} for n, path in enumerate(copies)
    ]
    manifest = write_manifest(
        tmp_path / "m.jsonl", *lines, {"uri": f"file://{copies[0]}"}, {"uri": str(gone)}
    )

    def no_lookups(*_: object) -> None:
        raise AssertionError("the driver looked a manifest file up")

    monkeypatch.setattr(hadoopfs, "stat", no_lookups)
    spark.sparkContext.setJobGroup("manifest-list", "from_manifest")
    try:
        found = inputs.from_manifest(spark, str(manifest), 1 << 30)
        jobs = list(spark.sparkContext.statusTracker().getJobIdsForGroup("manifest-list"))
    finally:
        spark.sparkContext.setJobGroup("", "")
    assert jobs == []
    assert found.listed == [f"file:{path}" for path in copies] + [f"file:{gone}"]
    assert found.expected == 37 and found.duplicates == 1 and found.gone_reason == inputs.NOT_FOUND
    assert found.images.columns == ["path", "modificationTime", "length", "content"]
    rows = found.images.select("path", "length").collect()
    assert sorted(r["path"] for r in rows) == sorted(f"file:{path}" for path in copies)
    assert {r["length"] for r in rows} == {len(source)}
    assert found.rejected.count() == 0


@pytest.mark.parametrize("requested", [None, "true"])
def test_whole_stage_codegen_is_off_unless_the_request_set_it(requested, tmp_path):
    """Off by default (``job.WHOLE_STAGE_CODEGEN``), but a request's own
    ``--conf spark.sql.codegen.wholeStage=...`` (a very large backfill) is left as it is."""
    from pyspark import SparkConf

    given = SparkConf(loadDefaults=False)
    if requested is not None:
        given.set(job.WHOLE_STAGE_CODEGEN_KEY, requested)

    class Session:
        def __init__(self) -> None:
            self.conf = self
            self.sparkContext = self
            self.defaultParallelism = 2
            self.values: dict[str, str] = {}

        def set(self, key: str, value: str) -> None:
            self.values[key] = value

        def getConf(self) -> SparkConf:  # PySpark's name
            return given

    session = Session()
    config = parse_args([*FAST, "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    job.configure_session(session, config)
    assert session.values.get(job.WHOLE_STAGE_CODEGEN_KEY) == (
        "false" if requested is None else None
    )
    assert session.values["spark.sql.files.minPartitionNum"] == "8"


def test_the_driver_counts_a_local_folders_rejections_as_spark_does(spark, tmp_path):
    """The driver counts the rejections it made while listing, with no Spark job; the count
    must be the one Spark gives for the rows the errors table gets, or the report would claim
    errors that were never written."""
    folder = tmp_path / "raw" / "Apple"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "ok.jpg")
    Image.new("RGB", (64, 64), (0, 90, 0)).save(folder / "big.jpg", quality=100)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "_draft.jpg").write_bytes(b"x")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    limit = (folder / "ok.jpg").stat().st_size
    found = inputs.from_folder(spark, str(tmp_path / "raw"), limit)
    assert found.rejections is not None and found.rejections.total() == 4
    assert found.rejections == job._count_by(found.rejected, "reason")
    spark.sparkContext.setJobGroup("driver-counts", "rejections")
    try:
        _, counted = job._rejections(spark, found, found.images, read=1)
        jobs = list(spark.sparkContext.statusTracker().getJobIdsForGroup("driver-counts"))
    finally:
        spark.sparkContext.setJobGroup("", "")
    assert counted == found.rejections and jobs == []


def test_a_session_that_ignores_file_logs_stops_the_manifest_run(spark, image_folder, tmp_path):
    """Were Spark to list the scratch folder instead of reading its log, every file would
    look missing; the run stops before it writes anything instead."""
    folder, _ = image_folder
    manifest = write_manifest(tmp_path / "m.jsonl", {"uri": str(folder / "Kiwi" / "0_100.jpg")})
    spark.conf.set("spark.sql.streaming.fileStreamSink.ignoreMetadata", "true")
    try:
        with pytest.raises(RuntimeError, match="took 0 of the manifest's 1 files"):
            inputs.from_manifest(spark, str(manifest), 1 << 30)
    finally:
        spark.conf.unset("spark.sql.streaming.fileStreamSink.ignoreMetadata")


def test_manifest_before_any_backfill_keeps_features_without_pca(spark, image_folder, tmp_path):
    folder, _ = image_folder
    manifest = write_manifest(tmp_path / "m.jsonl", {"uri": str(folder / "Kiwi" / "0_100.jpg")})
    output = tmp_path / "out"
    report = run_job(spark, "--manifest", str(manifest), "--output", str(output))
    (row,) = read_table(spark, output, "features").collect()
    assert row["pca_features"] is None and len(row["features"]) == FEATURE_DIM
    assert any("run a backfill" in w for w in report.warnings)


def test_pca_model_from_other_settings_stops_before_any_work(
    spark, backfill, image_folder, tmp_path
):
    _, output, _ = backfill
    folder, _ = image_folder
    manifest = write_manifest(tmp_path / "m.jsonl", {"uri": str(folder / "Kiwi" / "0_100.jpg")})
    config = parse_args(
        [
            *FAST[:2],
            "--image-size",
            "128",
            "--manifest",
            str(manifest),
            "--output",
            str(output),
            "--run-id",
            "mismatch",
        ]
    )
    with pytest.raises(ReductionMismatch, match="96 px"):
        job.run(config, spark)
    assert not (output / "features" / "run_id=mismatch").exists()


def test_pca_model_of_other_precision_is_refused(spark, backfill):
    from emr_serverless_job import reduce

    report, output, _ = backfill
    common = {"image_size": 96, "weights": "random:0"}
    saved = reduce.load(spark, str(output / "pca_model"), precision="fp32", **common)
    assert saved is not None and saved.info.scaling == "none" == report.pca["scaling"]
    with pytest.raises(ReductionMismatch, match=r"fitted on fp32 features.*int8"):
        reduce.load(spark, str(output / "pca_model"), precision="int8", **common)


def test_spark_ml_pca_model_saved_by_earlier_versions_still_projects(spark, backfill, tmp_path):
    """Before projection.npz, a backfill saved a Spark ML pipeline (StandardScaler + PCA) and a
    featurizer.json without scaling or precision. Manifest runs must go on projecting into
    that space exactly as Spark ML does."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector, vector_to_array

    from emr_serverless_job import reduce

    _, output, _ = backfill
    frame = read_table(spark, output, "features").select(
        "features", array_to_vector("features").alias("v")
    )
    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="v", outputCol="z", withMean=True, withStd=True),
            PCA(k=3, inputCol="z", outputCol="p"),
        ]
    ).fit(frame)
    legacy = tmp_path / "legacy_pca"
    pipeline.save(str(legacy))
    (legacy / reduce.METADATA_FILE).write_text(
        json.dumps(
            {
                "k": 3,
                "explained_variance": 0.5,
                "component_variance": [0.3, 0.1, 0.1],
                "image_size": 96,
                "weights": "random:0",
                "fitted_by_run": "backfill-old",
                "fitted_rows": frame.count(),
            }
        )
    )
    loaded = reduce.load(spark, str(legacy), image_size=96, weights="random:0", precision="fp32")
    assert loaded is not None and loaded.info.scaling == "standard"
    rows = pipeline.transform(frame).select("features", vector_to_array("p").alias("p")).collect()
    expected = np.array([r["p"] for r in rows])
    projected = loaded.projection.project(np.array([r["features"] for r in rows]))
    np.testing.assert_allclose(projected, expected, rtol=1e-4, atol=1e-4)


def test_oversized_files_are_errors_and_never_read(spark, tmp_path):
    folder = tmp_path / "in"
    write_image_set(folder, 2, classes=("Banana",), size=100)
    write_image_set(folder, 1, classes=("Big",), size=400)
    limit = max(p.stat().st_size for p in (folder / "Banana").iterdir())
    report = run_job(
        spark,
        "--input",
        str(folder),
        "--output",
        str(tmp_path / "o"),
        "--pca-k",
        "1",
        "--max-file-bytes",
        str(limit),
    )
    assert (report.features, report.errors) == (2, 1)
    assert report.images_featurized == 2
    (reason,) = report.errors_by_reason
    assert reason.startswith("file too large")


def test_folder_of_only_broken_files_still_succeeds(spark, tmp_path):
    folder = tmp_path / "in" / "Banana"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_bytes(b"nope")
    report = run_job(spark, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"))
    assert (report.inputs, report.features, report.errors) == (2, 0, 2)
    assert "not fitted" in report.pca["status"]
    assert read_table(spark, tmp_path / "o", "errors").count() == 2


def test_input_that_does_not_exist_fails_before_writing(spark, tmp_path):
    config = parse_args(
        [*FAST, "--input", "file:///nonexistent/raw", "--output", str(tmp_path / "o")]
    )
    with pytest.raises(job.inputs.InputError, match="--input: nothing at"):
        job.run(config, spark)
    assert not (tmp_path / "o").exists()


def test_plots_are_drawn_from_an_output_folder(backfill, tmp_path):
    from fruits_readers import plots

    run_report, output, _ = backfill
    written = plots.write_plots(output, run_report.run_id, tmp_path)
    assert [p.name for p in written] == ["scree.png", "pca_scatter.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 400
    with pytest.raises(plots.PlotError, match="no run 'nope'"):
        plots.write_plots(output, "nope", tmp_path)
    assert plots.main([str(tmp_path / "empty")]) == 2


@pytest.mark.parametrize(
    ("partitions", "scaling", "driver_merges"),
    [(1, "none", 16), (3, "standard", 16), (8, "none", 16), (8, "standard", 16), (8, "none", 0)],
)
def test_pca_matches_numpy_whatever_the_partitioning(
    spark, backfill, partitions, scaling, driver_merges, monkeypatch
):
    """Fewer images than dimensions (rank-deficient covariance): Spark's own PCA returned a
    different spectrum, or NaN, depending on partitioning alone. The fit must not, whether
    the driver merges the partial moments or (``driver_merges`` 0, as on a wide cluster) a
    round on the workers does; and the projection applied on the workers is NumPy's PCA of
    the centred (or standardized) rows."""
    from emr_serverless_job import reduce

    monkeypatch.setattr(reduce, "MAX_PIECES_MERGED_ON_DRIVER", driver_merges)
    _, output, _ = backfill
    frame = read_table(spark, output, "features").select("features").repartition(partitions)
    x = np.array([r["features"] for r in frame.collect()], dtype=np.float64)
    fitted = reduce.fit(
        spark,
        frame.cache(),
        k=5,
        variance=0.95,
        scaling=scaling,
        image_size=96,
        weights="random:0",
        precision="fp32",
        run_id="t",
        rows=len(x),
        version="v-test",
    )
    centred = x - x.mean(axis=0)
    if scaling == "standard":
        std = x.std(axis=0, ddof=1)
        centred = np.where(std > 0, centred / np.where(std > 0, std, 1), 0.0)
    singular = np.linalg.svd(centred, compute_uv=False) ** 2
    np.testing.assert_allclose(
        fitted.info.component_variance[:10], (singular / singular.sum())[:10], atol=1e-6
    )
    assert fitted.info.scaling == scaling
    projected = np.array(
        [r["pca_features"] for r in reduce.apply(spark, fitted, frame).collect()],
        dtype=np.float64,
    )
    reference = centred @ np.linalg.svd(centred, full_matrices=False)[2][:5].T
    for component in range(5):  # equal up to the sign of each axis
        np.testing.assert_allclose(
            np.abs(projected[:, component]), np.abs(reference[:, component]), rtol=1e-4, atol=1e-4
        )
        correlation = np.corrcoef(projected[:, component], reference[:, component])[0, 1]
        assert abs(correlation) > 0.9999


def strip_png(width: int = 89_000_000) -> bytes:
    """A real 8-bit grayscale PNG of one row ``width`` pixels wide, all black: ~90 KB that
    Pillow's own bomb guard (89,478,485 pixels) admits. Compressed a megabyte at a time, so
    the 89 MB row is never held whole (0.4 s)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    stream = zlib.compressobj(9)
    idat = [stream.compress(b"\x00")]  # the row's filter byte: none
    zeros = bytes(1 << 20)
    for start in range(0, width, len(zeros)):
        idat.append(stream.compress(zeros[: min(len(zeros), width - start)]))
    idat.append(stream.flush())
    header = struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )


HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"  # an iPhone photo's first box


def test_no_manifest_line_fails_the_run_and_each_gets_one_row(spark, image_folder, tmp_path):
    """Good photos, other schemes, a relative path, a missing file, a strip of 89 million
    pixels, a GIF named .jpg and a HEIC photo in one batch: the run ends normally with one row
    per distinct line, each error under the URI the line gave and naming its cause."""
    folder, _ = image_folder
    good = [f"file:{folder / 'Banana' / '0_100.jpg'}", f"file:{folder / 'Kiwi' / '1_100.jpg'}"]
    odd = tmp_path / "Odd"
    odd.mkdir()
    (odd / "strip.png").write_bytes(strip_png())
    with Image.open(odd / "strip.png") as strip:  # a PNG Pillow reads, not just a header
        assert strip.size == (89_000_000, 1)
    with Image.open(folder / "Kiwi" / "0_100.jpg") as fruit:
        fruit.save(odd / "animated.jpg", format="GIF")
    (odd / "IMG_0001.HEIC").write_bytes(HEIC_HEADER + bytes(64))
    scheme_reason = "unsupported scheme '{}:' (a run reads s3, s3a, s3n, file URIs)"
    not_a_photo = "unsupported format: the content is {}, not JPEG, PNG or WebP"
    expected_errors = {
        "gs://b/raw/x.jpg": scheme_reason.format("gs"),
        "http://example.com/raw/Kiwi/y.jpg": scheme_reason.format("http"),
        "raw/Kiwi/z.jpg": "relative path: a manifest names each file by absolute URI "
        "(s3://bucket/key)",
        f"file:{odd / 'missing.jpg'}": inputs.NOT_FOUND,
        f"file:{odd / 'strip.png'}": "image too large: 89000000x1 = 89.0 MP (limit 50 MP)",
        f"file:{odd / 'animated.jpg'}": not_a_photo.format("GIF") + " (convert the photo to JPEG)",
        f"file:{odd / 'IMG_0001.HEIC'}": not_a_photo.format("HEIC")
        + " (convert the photo to JPEG)",
    }
    manifest = write_manifest(
        tmp_path / "batch.jsonl",
        *({"uri": uri} for uri in [*good, *expected_errors]),
        {"uri": good[0]},  # delivered twice: still one row
    )
    output = tmp_path / "out"
    report = run_job(spark, "--manifest", str(manifest), "--output", str(output))
    assert (report.inputs, report.features, report.errors) == (9, 2, 7)
    assert report.duplicates_skipped == 1
    features = read_table(spark, output, "features").collect()
    assert sorted(r["path"] for r in features) == sorted(good)
    errors = read_table(spark, output, "errors").collect()
    assert sorted(r["path"] for r in errors) == sorted(expected_errors), "one row per line"
    assert {r["path"]: r["reason"] for r in errors} == expected_errors
    strip_row = next(r for r in errors if r["path"].endswith("strip.png"))
    assert strip_row["size_bytes"] == (odd / "strip.png").stat().st_size
    assert strip_row["size_bytes"] < 200_000  # refused from its header, not for its size


def _backfill_folder(root: Path) -> list[Path]:
    """Two good photos and two more, for a test to take away or make unreadable."""
    write_image_set(root, 4, classes=("Kiwi",))
    return sorted((root / "Kiwi").iterdir())


def test_a_file_deleted_after_the_listing_or_unreadable_is_an_error_row(
    spark, tmp_path, monkeypatch
):
    """A backfill lists its folder, then reads it: a photo deleted in between, and one whose
    read fails (a checksum that does not match, which Hadoop's local file system raises as an
    IOException the way S3 answers 403 for SSE-C, KMS or Glacier), each become an error row
    naming the cause; the run goes on."""
    from emr_serverless_job import hadoopfs

    root = tmp_path / "in"
    good_a, good_b, doomed, corrupt = _backfill_folder(root)
    data = corrupt.read_bytes()
    corrupt.unlink()
    hadoopfs.write_bytes(spark, f"file:{corrupt}", data)  # with Hadoop's .crc beside it
    assert (corrupt.parent / f".{corrupt.name}.crc").exists()
    corrupt.write_bytes(bytes(len(data)))  # the same length, other bytes
    listing = inputs.from_folder

    def delete_after_listing(*args, **kwargs):
        found = listing(*args, **kwargs)
        assert f"file:{doomed}" in found.listed
        doomed.unlink()
        return found

    monkeypatch.setattr(inputs, "from_folder", delete_after_listing)
    output = tmp_path / "out"
    report = run_job(spark, "--input", str(root), "--output", str(output), "--pca-k", "1")
    assert (report.inputs, report.features, report.errors) == (4, 2, 2)
    features = read_table(spark, output, "features").collect()
    assert sorted(r["path"] for r in features) == [f"file:{good_a}", f"file:{good_b}"]
    reasons = {r["path"]: r["reason"] for r in read_table(spark, output, "errors").collect()}
    assert set(reasons) == {f"file:{corrupt}", f"file:{doomed}"}
    assert reasons[f"file:{doomed}"] == inputs.DELETED
    assert reasons[f"file:{corrupt}"].startswith("unreadable: ChecksumException: Checksum error")


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads a chmod 000 file (the checksum case covers the path)"
)
def test_a_file_without_read_permission_is_an_error_row(spark, tmp_path):
    root = tmp_path / "in"
    *good, locked, spare = _backfill_folder(root)
    spare.unlink()
    locked.chmod(0)
    try:
        report = run_job(
            spark, "--input", str(root), "--output", str(tmp_path / "out"), "--pca-k", "1"
        )
    finally:
        locked.chmod(0o644)
    assert (report.inputs, report.features, report.errors) == (3, 2, 1)
    features = read_table(spark, tmp_path / "out", "features").collect()
    assert sorted(r["path"] for r in features) == [f"file:{path}" for path in good]
    (row,) = read_table(spark, tmp_path / "out", "errors").collect()
    assert row["path"] == f"file:{locked}"
    assert row["reason"].startswith("unreadable: ") and "Permission denied" in row["reason"]


def test_a_run_writes_its_features_in_as_few_files_as_the_target_size_allows(backfill):
    report, output, _ = backfill
    for table in ("features", "errors"):
        files = list((output / table / f"run_id={report.run_id}").glob("*.parquet"))
        assert len(files) == 1, f"{table}: {len(files)} files for {report.inputs} photos"
    written = next((output / "features" / f"run_id={report.run_id}").glob("*.parquet"))
    row_bytes = written.stat().st_size / report.features
    estimate = 4 * (1280 + report.pca["k"]) + job.ROW_OVERHEAD_BYTES
    assert row_bytes < estimate, "the estimate errs towards more, smaller files, never larger"
    assert job.features_files(1_000, 200, cores=12) == 1  # a trigger batch: 5.9 MB
    assert job.features_files(1_000_000, 200, cores=12) == 47  # 6.2 GB of rows, 128 MiB each
    assert job.features_files(0, 0, cores=12) == 1
    # More rows than one small file: one file per core, none below MIN_FILE_BYTES.
    assert job.features_files(5_000, 64, cores=2) == 2  # 28 MB
    assert job.features_files(5_000, 64, cores=12) == 3
    assert job.features_files(1_400, 64, cores=12) == 1  # 7.9 MB: below one small file


@contextmanager
def s3_mount(spark, mirror: Path, bucket: str):
    """``s3://bucket/`` served from ``mirror/bucket`` (the emulator's mount): the remote listing
    path of a backfill, Spark's own file index, instead of a local folder's Python listing."""
    from emr_emulator.submit import s3_mirror_conf

    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    mount = {
        name.removeprefix("spark.hadoop."): value
        for name, value in s3_mirror_conf([bucket], str(mirror)).items()
    } | {"fs.s3.impl.disable.cache": "true"}
    for name, value in mount.items():
        hadoop.set(name, value)
    try:
        yield
    finally:
        for name in mount:
            hadoop.unset(name)


def test_an_s3_backfill_gives_hidden_names_and_folders_a_row_each(spark, tmp_path):
    """Spark's listing of s3:// skips ``_drafts/``, ``.trash/`` and ``_IMG.jpg``: each is
    an error row saying to rename it, counted in the run's inputs."""
    mirror, bucket = tmp_path / "s3", "photos"
    raw = mirror / bucket / "raw"
    write_image_set(raw, 2, classes=("Kiwi", "Pear"))
    hidden = {
        "raw/_drafts/a.jpg": "HIDDEN_FOLDER",
        "raw/Kiwi/.trash/b.jpg": "HIDDEN_FOLDER",
        "raw/Kiwi/.trash/deeper/c.png": "HIDDEN_FOLDER",
        "raw/Pear/_IMG_0001.jpg": "HIDDEN_NAME",
        "raw/Pear/_metadata.jpg": "HIDDEN_NAME",  # Spark lists it, never scans it: one row
    }
    photo = (raw / "Kiwi" / "0_100.jpg").read_bytes()
    for key in hidden:
        (mirror / bucket / key).parent.mkdir(parents=True, exist_ok=True)
        (mirror / bucket / key).write_bytes(photo)
    (raw / "Kiwi" / ".trash" / "notes.txt").write_text("not an image")
    (raw / "label=x").mkdir()  # a partition-like folder name Spark lists: not hidden
    (raw / "label=x" / "d.jpg").write_bytes(photo)
    with s3_mount(spark, mirror, bucket):
        report = run_job(
            spark, "--input", f"s3://{bucket}/raw", "--output", f"s3://{bucket}/output"
        )
        errors = {
            r["path"]: r["reason"]
            for r in spark.read.parquet(f"s3://{bucket}/output/errors").collect()
        }
    assert (report.inputs, report.features, report.errors) == (10, 5, 5)
    assert errors == {
        f"s3://{bucket}/{key}": getattr(job.inputs, reason) for key, reason in hidden.items()
    }


def test_a_rerun_keeps_its_old_rows_until_the_new_ones_are_written(spark, tmp_path, monkeypatch):
    """Spark's overwrite deleted the partition before writing it: a refit (a backfill reruns
    its prefix's run id) left its photos without a row while it wrote, or for good if it
    failed there."""
    folder = tmp_path / "in"
    write_image_set(folder, 2, classes=("Kiwi",))
    output = tmp_path / "o"
    first = run_job(spark, "--input", str(folder), "--output", str(output), "--pca-k", "1")
    partition = output / "features" / f"run_id={first.run_id}"
    old = {p.name for p in partition.glob("*.parquet")}
    seen: list[set[str]] = []
    real = job.hadoopfs.delete

    def delete(spark_, uri):
        seen.append({p.name for p in partition.glob("*.parquet")})
        real(spark_, uri)

    monkeypatch.setattr(job.hadoopfs, "delete", delete)
    again = run_job(spark, "--input", str(folder), "--output", str(output), "--pca-k", "1")
    assert again.run_id == first.run_id
    assert seen and all(names > old for names in seen[:1]), "new files before any old one goes"
    now = {p.name for p in partition.glob("*.parquet")}
    assert now and not now & old  # replaced: no row of the first run is left
    assert read_table(spark, output, "features").count() == 2
