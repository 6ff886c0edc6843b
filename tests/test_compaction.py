"""Compaction on a real local Spark: a table built by a batch before any model, a backfill,
batches (one with error rows), a refit and an erasure is merged into fewer files, and the
current view, the inventory and reconcile give exactly the same answers before and after, after
a crash at either step, and after an erase run applied to both; a second run and a dry run
change nothing. The photos are read as ``s3://`` (a local mirror, as the emulator serves it),
so the rows' paths are what reconcile matches against the bucket's listing."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from emr_serverless_job import compact, erase
from emr_serverless_job.compact_plan import ORIGIN_RUN_COLUMN
from emr_serverless_job.config import ConfigError, parse_args
from fruits_demo.image_sets import write_image_set
from fruits_ops import reconcile
from fruits_readers import inventory
from fruits_readers.current import current_features
from lambda_trigger.events import S3Object
from lambda_trigger.settings import S3Location
from tests.test_erase_job import erase_run, erasure_manifest, iso
from tests.test_job import run_job, s3_mount

BUCKET = "photos"
TABLES = ("features", "errors")


def uri(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def manifest(path: Path, *keys: str) -> Path:
    path.write_text("".join(json.dumps({"uri": uri(k)}) + "\n" for k in keys))
    return path


@pytest.fixture(scope="module")
def history(spark, tmp_path_factory):
    """batch (no model yet) -> backfill -> batches (one re-featurized photo, a new one, a photo
    gone and an empty file) -> refit -> batch -> erasure of one photo."""
    root = tmp_path_factory.mktemp("compaction")
    mirror = root / "s3"
    raw = mirror / BUCKET / "raw"
    write_image_set(raw, 2, classes=("Banana", "Kiwi"))
    output = mirror / BUCKET / "out"
    out = ["--output", str(output)]
    with s3_mount(spark, mirror, BUCKET):
        early = run_job(
            spark, "--manifest", str(manifest(root / "0.jsonl", "raw/Kiwi/0_100.jpg")), *out
        )
        assert early.pca.get("version") is None  # its rows have no pca_model: matched by report
        (raw / "Kiwi" / "empty.jpg").write_bytes(b"")
        run_job(spark, "--input", uri("raw/"), *out, "--pca-k", "2")
        write_image_set(raw, 2, classes=("Pear",))
        run_job(
            spark,
            "--manifest",
            str(manifest(root / "1.jsonl", "raw/Kiwi/1_100.jpg", "raw/Pear/0_100.jpg")),
            *out,
        )
        errors = run_job(
            spark,
            "--manifest",
            str(manifest(root / "2.jsonl", "raw/Kiwi/gone.jpg", "raw/Kiwi/empty.jpg")),
            *out,
        )
        assert errors.errors == 2
        run_job(spark, "--input", uri("raw/"), *out, "--pca-k", "3")  # the refit
        run_job(spark, "--manifest", str(manifest(root / "3.jsonl", "raw/Pear/1_100.jpg")), *out)
    erase_run(
        spark,
        erasure_manifest(root / "e.jsonl", (uri("raw/Banana/1_100.jpg"), iso(datetime.now(UTC)))),
        output,
    )
    (raw / "Banana" / "1_100.jpg").unlink()  # erased: gone from raw/ too
    return mirror, output


@pytest.fixture
def output(history, tmp_path) -> Path:
    """A private copy of the history's output (and its raw/) for one test."""
    mirror, _ = history
    copy = tmp_path / "s3"
    shutil.copytree(mirror, copy)
    return copy / BUCKET / "out"


def compaction(spark, output: Path, *extra: str) -> compact.CompactionReport:
    return compact.run(parse_args(["--compact", "0", "--output", str(output), *extra]), spark)


def current(spark, output: Path) -> set[tuple]:
    """Every row of the current view, every column, as hashable values."""
    return {
        tuple(tuple(v) if isinstance(v, list) else v for v in row)
        for row in current_features(spark, str(output)).collect()
    }


def reconciled(output: Path) -> tuple[tuple[int, ...], list[str]]:
    """reconcile's answer for the mirror's bucket: its tally and the missing keys."""
    mirror = output.parent.parent
    filesystem = pafs.SubTreeFileSystem(str(mirror), pafs.LocalFileSystem())
    where = S3Location(BUCKET, "out/")
    keys = {t: reconcile.row_keys(filesystem, where, t, BUCKET) for t in TABLES}
    listing = sorted(
        str(p.relative_to(mirror / BUCKET))
        for p in (mirror / BUCKET / "raw").rglob("*")
        if p.is_file()
    )
    tally = reconcile.Tally()
    missing = reconcile.reconcile(
        (S3Object(BUCKET, key, 1, None, "", "reconcile") for key in listing),
        reconcile.ascending(keys["features"]),
        reconcile.ascending(keys["errors"]),
        tally,
    )
    missed = [m.key for m in missing]
    return (tally.objects, tally.featurized, tally.errored, tally.missing), missed


def answers(spark, output: Path) -> tuple:
    """What every reader says: the current view's rows, the inventory, reconcile."""
    return current(spark, output), inventory.read(str(output)), reconciled(output)


def data_files(output: Path) -> int:
    return sum(1 for t in TABLES for p in (output / t).glob("run_id=*/*.parquet") if p.is_file())


def snapshot(output: Path, under: tuple[str, ...] = ()) -> dict[str, bytes]:
    roots = [output / u for u in under] if under else [output]
    return {
        str(p.relative_to(output)): p.read_bytes()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_compaction_merges_batches_and_every_reader_answers_the_same(spark, output):
    before, files = answers(spark, output), data_files(output)
    cur, taken, (tally, missing) = before
    # 6 objects in raw/: 5 photos with a feature row (one erased is gone from raw/ too), the
    # empty file with an error row; the batch before any model counts in the view by its report
    assert len(cur) == taken.in_view == 5 and tally == (6, 5, 1, 0) and missing == []
    assert taken.unversioned == 1

    report = compaction(spark, output)

    assert answers(spark, output) == before
    assert data_files(output) < files
    merged = {m["table"]: m for m in report.merges}
    assert set(merged) == {"features", "errors"}
    assert len(merged["features"]["sources"]) == 4  # the four batches; the backfill stays
    assert report.tables["features"]["files_after"] == report.tables["features"]["files"] - 3
    (folder,) = (output / "features").glob("run_id=compacted-*")
    assert len(list(folder.glob("*.parquet"))) == 1
    rows = pq.read_table(next(folder.glob("*.parquet")))
    assert ORIGIN_RUN_COLUMN in rows.column_names and "run_id" not in rows.column_names
    assert not [p for t in TABLES for p in (output / t).iterdir() if p.name.startswith(".")]
    written = json.loads(
        (output / "reports" / f"run_id={report.run_id}" / "report.json").read_text()
    )
    assert written["mode"] == "compact" and written["merges"] == report.merges


def test_a_second_compaction_changes_nothing(spark, output):
    compaction(spark, output)
    tables, said = snapshot(output, TABLES), answers(spark, output)
    again = compaction(spark, output)
    assert again.merges == [] and again.recovered == 0
    assert snapshot(output, TABLES) == tables
    assert answers(spark, output) == said


def test_a_dry_run_reports_the_plan_and_writes_nothing(spark, output):
    everything = snapshot(output)
    report = compaction(spark, output, "--dry-run")
    assert snapshot(output) == everything  # byte for byte, not even a report
    assert report.dry_run and {m["table"] for m in report.merges} == {"features", "errors"}
    features = report.tables["features"]
    assert features["files_after"] < features["files"] and features["merged_rows"] > 0
    assert "would merge" in report.summary()


@pytest.mark.parametrize("step", ["_move", "remove_sources"], ids=["before publish", "after"])
def test_a_crash_leaves_every_answer_and_the_next_run_finishes(spark, output, monkeypatch, step):
    before, files = answers(spark, output), data_files(output)
    real = getattr(compact, step)

    def crash(*args, **kwargs):
        raise OSError("injected: the driver died")

    monkeypatch.setattr(compact, step, crash)
    with pytest.raises(OSError, match="injected"):
        compaction(spark, output, "--run-id", "compact-crashed")
    journals = list((output / "features").glob(".compacting-*.json"))
    assert journals, "the crash happened with a merge under way"
    live = list((output / "features").glob("run_id=compacted-*/*.parquet"))
    assert bool(live) == (step == "remove_sources")  # duplicates on disk after the publish
    assert answers(spark, output) == before  # which readers skip
    monkeypatch.setattr(compact, step, real)
    # Another run leaves a journal this young alone: its run may still be publishing it.
    with pytest.raises(compact.CompactionBusy, match="may still be publishing"):
        compaction(spark, output)
    assert answers(spark, output) == before
    report = compaction(spark, output, "--run-id", "compact-crashed")  # its resubmission
    assert report.recovered == (1 if step == "remove_sources" else 0)
    assert answers(spark, output) == before
    assert data_files(output) < files
    assert not [p for t in TABLES for p in (output / t).iterdir() if p.name.startswith(".")]


def test_an_erase_run_after_compaction_removes_rows_from_merged_files(spark, history, output):
    untouched = output.parent.parent.parent / "untouched" / BUCKET / "out"
    shutil.copytree(output.parent.parent, untouched.parent.parent)
    compaction(spark, output)
    # a photo with a row in the backfill and one in a merged batch; a "gone" error row
    photos = ("raw/Pear/1_100.jpg", "raw/Kiwi/gone.jpg")
    now = iso(datetime.now(UTC))
    reports = {}
    for out in (output, untouched):
        stones = erasure_manifest(out.parent / "e2.jsonl", *((uri(p), now) for p in photos))
        reports[out] = erase_run(spark, stones, out)
        assert reports[out].rows_removed == {"features": 2, "errors": 1}
    rewritten = reports[output].partitions_rewritten
    assert [r for r in rewritten["features"] if r.startswith("compacted-")]
    assert [r for r in rewritten["errors"] if r.startswith("compacted-")]
    paths = ds.dataset(str(output / "features"), format="parquet").to_table(["path"])["path"]
    assert uri(photos[0]) not in paths.to_pylist()
    assert answers(spark, output) == answers(spark, untouched)


def test_folders_name_the_partition_for_spark_and_pyarrow_so_a_file_cannot(spark, tmp_path):
    """Why a merged file keeps its rows' run as origin_run_id: a run_id column in a file under
    run_id=compacted-x/ reads back as compacted-x in Spark and in pyarrow alike."""
    folder = tmp_path / "t" / "run_id=compacted-x"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"path": ["p"], "run_id": ["batch-a"]}), folder / "part-0.parquet")
    assert [r["run_id"] for r in spark.read.parquet(str(tmp_path / "t")).collect()] == [
        "compacted-x"
    ]
    read = ds.dataset(
        [str(folder / "part-0.parquet")],
        schema=pa.schema([("path", pa.string()), ("run_id", pa.string())]),
        format="parquet",
        partitioning="hive",
        partition_base_dir=str(tmp_path / "t"),
    ).to_table()
    assert read["run_id"].to_pylist() == ["compacted-x"]


def test_compact_is_its_own_mode_and_dry_run_needs_it(tmp_path):
    config = parse_args(["--compact", "7", "--output", str(tmp_path), "--dry-run"])
    assert (config.compact, config.dry_run, config.is_backfill) == (7.0, True, False)
    with pytest.raises(ConfigError, match="--dry-run: only used with --compact"):
        (tmp_path / "e.jsonl").write_text("")
        parse_args(["--erase", str(tmp_path / "e.jsonl"), "--output", str(tmp_path), "--dry-run"])
    with pytest.raises(ConfigError, match=r"--compact: -1\.0 days"):
        parse_args(["--compact", "-1", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        parse_args(["--compact", "7", "--input", str(tmp_path), "--output", str(tmp_path)])


def _paths(output: Path) -> list[str]:
    return ds.dataset(str(output / "features"), format="parquet").to_table(["path"])["path"]


def _files_under(output: Path, folders: set[str]) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(output, ("features",)).items() if k.split("/")[1] in folders}


def test_an_erase_leaves_a_live_merge_alone_and_its_next_run_erases_what_it_deferred(
    spark, output, monkeypatch
):
    """A compaction stopped between its journal and its publish may still be running: an erase
    run must neither finish nor undo its journal nor rewrite a partition it merges (the merge
    would publish the erased rows again, beside the rewrite). It defers them and fails, so the
    watcher retries; once the merge is published, the next erase run removes the rows."""

    def stopped(*args, **kwargs):
        raise OSError("injected: still running, about to publish")

    monkeypatch.setattr(compact, "publish", stopped)
    with pytest.raises(OSError, match="injected"):
        compaction(spark, output, "--run-id", "compact-live")
    monkeypatch.undo()
    (journal,) = [
        json.loads(p.read_text()) for p in (output / "features").glob(".compacting-*.json")
    ]
    merging = compact.partitions_of(journal)
    source = sorted(journal["sources"])[0]
    photo = pq.read_table(output / "features" / source, columns=["path"])["path"][0].as_py()
    held = _files_under(output, merging)
    stones = erasure_manifest(output.parent / "e-live.jsonl", (photo, iso(datetime.now(UTC))))
    with pytest.raises(erase.ErasureIncomplete, match="being compacted"):
        erase_run(spark, stones, output)
    assert _files_under(output, merging) == held  # the merge's partitions, as it left them
    assert list((output / "features").glob(".compacting-*.json")), "its journal is untouched"
    assert photo in _paths(output).to_pylist()
    compaction(spark, output, "--run-id", "compact-live")  # the compaction finishes
    report = erase_run(spark, stones, output)  # the watcher's retry
    assert report.deferred == [] and report.rows_removed["features"] >= 1
    assert photo not in _paths(output).to_pylist()
    assert photo not in {row["path"] for row in current_features(spark, str(output)).collect()}


def test_a_merge_steps_back_from_a_partition_an_erase_is_rewriting(spark, output, monkeypatch):
    """An erase stopped between its journal and its swap: a compaction must not merge that
    partition (it would delete the old files the swap is about to replace, and publish their
    erased rows in the merged file). Its merges leave it out; the erase's rerun finishes."""
    plan = compaction(spark, output, "--dry-run")
    merged = {run for m in plan.merges if m["table"] == "features" for run in m["sources"]}
    assert merged, plan.summary()
    folder = output / "features" / f"run_id={sorted(merged)[0]}"
    photo = pq.read_table(folder, columns=["path"])["path"][0].as_py()

    finish = erase._finish

    def stopped(spark, swap):
        if swap.partition == folder.name:  # the photo's other partitions swap as usual
            raise OSError("injected: still running, about to swap")
        finish(spark, swap)

    monkeypatch.setattr(erase, "_finish", stopped)
    stones = erasure_manifest(output.parent / "e-mid.jsonl", (photo, iso(datetime.now(UTC))))
    with pytest.raises(OSError, match="injected"):
        erase_run(spark, stones, output)
    monkeypatch.undo()
    rewriting = erase.partitions_being_rewritten(spark, str(output / "features"))
    assert folder.name in rewriting
    held = _files_under(output, rewriting)
    report = compaction(spark, output)
    assert f"features/{folder.name}" in report.changed
    assert _files_under(output, rewriting) == held
    erase_run(spark, stones, output)  # the erase's rerun finishes its swap
    assert photo not in {row["path"] for row in current_features(spark, str(output)).collect()}
