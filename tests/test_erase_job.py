"""Erase runs on a real local Spark: a deleted photo's rows leave the features and errors
tables, every other row stays as it was, a rerun changes nothing, a row written late by a run
that started before the deletion goes at the next erase run, and a crash half way through a
partition's replacement is finished by the rerun."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from emr_serverless_job import erase
from emr_serverless_job.config import ConfigError, parse_args
from emr_serverless_job.inputs import spark_spelling
from fruits_contract import erase_run_id
from fruits_demo.image_sets import write_image_set
from fruits_readers.current import current_features
from tests.test_job import run_job

GONE = "2020-01-01T00:00:00.000Z"


def erase_run(spark, manifest: Path, output: Path) -> erase.ErasureReport:
    return erase.run(parse_args(["--erase", str(manifest), "--output", str(output)]), spark)


def erasure_manifest(path: Path, *entries: tuple[Path, str]) -> Path:
    lines = [json.dumps({"uri": str(photo), "erased_at": at}) for photo, at in entries]
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rows(spark, output: Path, table: str) -> dict[tuple[str, str], dict]:
    """Every row of a table by (run_id, path), every column as Python values."""
    frame = spark.read.option("mergeSchema", "true").parquet(str(output / table))
    return {(r["run_id"], r["path"]): r.asDict() for r in frame.collect()}


def partition_schemas(output: Path, table: str) -> dict[str, object]:
    return {
        folder.name: pq.read_schema(next(folder.glob("*.parquet")))
        for folder in sorted((output / table).glob("run_id=*"))
    }


def table_files(output: Path) -> list[str]:
    """Every file of the features and errors tables (a rewrite renames them all)."""
    return sorted(
        str(p.relative_to(output)) for t in ("features", "errors") for p in (output / t).rglob("*")
    )


@pytest.fixture(scope="module")
def history(spark, tmp_path_factory):
    """A backfill of four photos and an empty file (an error row), made once."""
    root = tmp_path_factory.mktemp("erase")
    photos = root / "raw"
    write_image_set(photos, 2, classes=("Banana", "Kiwi"))
    (photos / "Kiwi" / "empty.jpg").write_bytes(b"")
    output = root / "out"
    backfill = run_job(spark, "--input", str(photos), "--output", str(output), "--pca-k", "2")
    assert (backfill.features, backfill.errors) == (4, 1)
    return photos, output


@pytest.fixture
def output(history, tmp_path) -> Path:
    """A private copy of the backfill's output for one test."""
    copy = tmp_path / "out"
    shutil.copytree(history[1], copy)
    return copy


def test_an_erase_run_removes_the_photos_rows_and_leaves_the_others(spark, history, output):
    photos, _ = history
    banana, empty = photos / "Banana" / "0_100.jpg", photos / "Kiwi" / "empty.jpg"
    features, errors = rows(spark, output, "features"), rows(spark, output, "errors")
    schemas = {t: partition_schemas(output, t) for t in ("features", "errors")}
    now = iso(datetime.now(UTC))
    manifest = erasure_manifest(output.parent / "erase.jsonl", (banana, now), (empty, now))

    report = erase_run(spark, manifest, output)

    assert report.rows_removed == {"features": 1, "errors": 1}
    assert report.run_id == erase_run_id(manifest.read_bytes())
    erased = {spark_spelling(str(banana)), spark_spelling(str(empty))}
    expected_features = {key: row for key, row in features.items() if key[1] not in erased}
    expected_errors = {key: row for key, row in errors.items() if key[1] not in erased}
    assert len(expected_features) == 3 and expected_errors == {}
    assert rows(spark, output, "features") == expected_features  # every column, every value
    assert rows(spark, output, "errors") == expected_errors
    assert {t: partition_schemas(output, t) for t in schemas} == schemas
    # Nothing of the rewrite is left beside the partitions, and the report says what happened.
    assert [p.name for p in (output / "features").iterdir() if p.name.startswith(".")] == []
    written = json.loads(
        (output / "reports" / f"run_id={report.run_id}" / "report.json").read_text()
    )
    assert written["mode"] == "erase" and written["rows_removed"] == report.rows_removed
    assert written["photos"] == 2
    stones = {r["path"] for r in erase.tombstones(spark, str(output)).collect()}
    assert erased <= stones
    current = {r["path"] for r in current_features(spark, str(output)).collect()}
    assert len(current) == 3 and not current & erased  # gone from the current view


def test_a_rerun_of_an_erase_run_changes_nothing(spark, history, output):
    photos, _ = history
    manifest = erasure_manifest(
        output.parent / "erase.jsonl", (photos / "Kiwi" / "1_100.jpg", iso(datetime.now(UTC)))
    )
    first = erase_run(spark, manifest, output)
    files = table_files(output)
    again = erase_run(spark, manifest, output)
    assert first.rows_removed == {"features": 1, "errors": 0}
    assert again.rows_removed == {"features": 0, "errors": 0}
    assert again.partitions_rewritten == {"features": [], "errors": []}
    assert again.tombstones_total == first.tombstones_total  # replaced, not appended twice
    assert table_files(output) == files  # not one file rewritten


def test_a_row_written_after_the_erase_by_an_earlier_run_goes_at_the_next_erase(
    spark, history, output
):
    photos, _ = history
    kiwi = photos / "Kiwi" / "0_100.jpg"
    # GIVEN a deletion an hour from now, so that a run started now started before it
    deleted = iso(datetime.now(UTC) + timedelta(hours=1))
    erase_run(spark, erasure_manifest(output.parent / "1.jsonl", (kiwi, deleted)), output)
    # WHEN that run writes the photo's row after the erase run has finished
    batch_manifest = output.parent / "batch.jsonl"
    batch_manifest.write_text(json.dumps({"uri": str(kiwi)}) + "\n")
    batch = run_job(spark, "--manifest", str(batch_manifest), "--output", str(output))
    assert batch.features == 1
    stones = {r["path"] for r in erase.tombstones(spark, str(output)).collect()}
    assert spark_spelling(str(kiwi)) in stones  # what the current view hides it by meanwhile
    assert spark_spelling(str(kiwi)) not in {
        r["path"] for r in current_features(spark, str(output)).collect()
    }
    # THEN the next erase run, whatever it erases, removes that row too
    other = erasure_manifest(output.parent / "2.jsonl", (photos / "Nowhere" / "x.jpg", GONE))
    report = erase_run(spark, other, output)
    assert report.rows_removed == {"features": 1, "errors": 0}
    assert report.partitions_rewritten["features"] == [batch.run_id]
    paths = {path for _, path in rows(spark, output, "features")}
    assert spark_spelling(str(kiwi)) not in paths and len(paths) == 3


def test_errors_rows_of_runs_after_the_deletion_stay_unless_they_say_the_file_was_gone(
    spark, history, output
):
    photos, _ = history
    empty, missing = photos / "Kiwi" / "empty.jpg", photos / "Kiwi" / "gone.jpg"
    deleted = iso(datetime.now(UTC))  # after the backfill started, before the batch
    erase_run(
        spark,
        erasure_manifest(output.parent / "1.jsonl", (empty, deleted), (missing, deleted)),
        output,
    )
    # A run after the deletions: the empty file was uploaded again (a new photo, still broken)
    # and the deleted one is still named by a late manifest (its row only says it is gone).
    batch_manifest = output.parent / "batch.jsonl"
    batch_manifest.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in (empty, missing)))
    batch = run_job(spark, "--manifest", str(batch_manifest), "--output", str(output))
    assert batch.errors == 2
    report = erase_run(spark, erasure_manifest(output.parent / "2.jsonl"), output)
    assert report.rows_removed == {"features": 0, "errors": 1}
    left = rows(spark, output, "errors")
    assert list(left) == [(batch.run_id, spark_spelling(str(empty)))]


def test_errors_rows_go_on_any_tombstone_when_their_report_is_unreadable(spark, history, output):
    photos, _ = history
    (report_file,) = (output / "reports").glob("run_id=*/report.json")
    report_file.unlink()
    long_ago = iso(datetime.now(UTC) - timedelta(days=3650))  # long before the run started
    manifest = erasure_manifest(
        output.parent / "e.jsonl", (photos / "Kiwi" / "empty.jpg", long_ago)
    )
    assert erase_run(spark, manifest, output).rows_removed == {"features": 0, "errors": 1}


def test_a_crash_in_the_middle_of_a_swap_is_finished_by_the_rerun(
    spark, history, output, monkeypatch
):
    photos, _ = history
    before = rows(spark, output, "features")
    banana = photos / "Banana" / "1_100.jpg"
    manifest = erasure_manifest(output.parent / "e.jsonl", (banana, iso(datetime.now(UTC))))
    moved: list[str] = []
    real_move = erase._move

    def crash_after_one_move(spark_, source: str, target: str) -> None:
        if moved:
            raise OSError("injected: the driver died")
        moved.append(source)
        real_move(spark_, source, target)

    monkeypatch.setattr(erase, "_move", crash_after_one_move)
    with pytest.raises(OSError, match="injected"):
        erase_run(spark, manifest, output)
    monkeypatch.setattr(erase, "_move", real_move)
    report = erase_run(spark, manifest, output)  # the watcher's resubmission: same run id
    expected = {k: r for k, r in before.items() if k[1] != spark_spelling(str(banana))}
    assert rows(spark, output, "features") == expected
    assert report.rows_removed["features"] == 0  # the first attempt's rewrite was finished
    assert [p.name for p in (output / "features").iterdir() if p.name.startswith(".")] == []


def test_bad_manifest_lines_fail_the_run_after_erasing_the_good_ones(spark, history, output):
    photos, _ = history
    manifest = erasure_manifest(
        output.parent / "e.jsonl", (photos / "Banana" / "0_100.jpg", iso(datetime.now(UTC)))
    )
    manifest.write_text(
        manifest.read_text()
        + '{"uri": "/x/a.jpg", "erased_at": "2024-01-01T00:00:00"}\n'
        + "not json\n"
    )
    with pytest.raises(erase.ErasureIncomplete, match="2 line"):
        erase_run(spark, manifest, output)
    (report_file,) = (output / "reports").glob("run_id=erase-*/report.json")
    written = json.loads(report_file.read_text())
    assert written["rows_removed"]["features"] == 1
    assert any("no time zone" in p for p in written["problems"])


def test_tombstones_is_none_before_the_first_erase_run(spark, output):
    assert erase.tombstones(spark, str(output)) is None


def test_parse_erasures_keeps_the_latest_time_per_path_and_every_s3_spelling():
    text = "\n".join(
        json.dumps({"uri": "s3://b/raw/K i/a+b.jpg", "erased_at": at})
        for at in ("2024-05-01T10:00:00Z", "2024-05-01T12:00:00+02:00", "2024-05-01T11:00:00Z")
    )
    found = erase.parse_erasures(text + "\n\n")
    assert found.uris == 1 and found.problems == []
    assert {s.path for s in found.tombstones} == {
        "s3://b/raw/K i/a+b.jpg",
        "s3a://b/raw/K i/a+b.jpg",
        "s3n://b/raw/K i/a+b.jpg",
    }
    assert {s.erased_at for s in found.tombstones} == {datetime(2024, 5, 1, 11, tzinfo=UTC)}


def test_erase_is_a_third_input_kind_and_its_file_is_checked_first(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--erase", str(tmp_path / "e"), "--input", str(tmp_path), "--output", "o"])
    with pytest.raises(ConfigError, match="--erase: no file at"):
        parse_args(["--erase", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path)])
    (tmp_path / "e.jsonl").write_text("")
    config = parse_args(["--erase", str(tmp_path / "e.jsonl"), "--output", str(tmp_path)])
    assert config.erase == str(tmp_path / "e.jsonl") and not config.is_backfill


def test_the_printed_summary_names_the_partitions_left_for_the_next_run():
    """An operator reading only the driver's stdout sees what the run did not erase yet."""
    report = erase.ErasureReport(
        run_id="erase-1",
        source="s3://b/manifests/erase-1.jsonl",
        output="s3://b/output",
        started_at="2026-12-03T10:00:00.000Z",
        deferred=["features/run_id=batch-a"],
    )
    assert (
        "  left for the next erase run (being compacted): features/run_id=batch-a"
        in report.summary().splitlines()
    )
    assert "left for the next" not in erase.ErasureReport("e", "s", "o", "t").summary()
