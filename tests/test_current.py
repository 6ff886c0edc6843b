"""Which PCA space: every feature row names the model version that projected it, the "current"
reader gives every photo once in the current version's space (re-projecting older rows), and
the inventory counts runs and versions by the same rule."""

from __future__ import annotations

import json
import re
import shutil
from datetime import timedelta

import numpy as np
import pytest

from emr_serverless_job import reduce
from fruits_demo.image_sets import write_image_set
from fruits_readers import inventory
from fruits_readers.current import NoCurrentModel, current_features
from tests.test_job import run_job


@pytest.fixture(scope="module")
def history(spark, tmp_path_factory):
    """Two backfills (two PCA spaces) and a batch after the second one re-featurizing a photo."""
    root = tmp_path_factory.mktemp("history")
    first, second = root / "first", root / "second"
    write_image_set(first, 3, classes=("Banana", "Kiwi"))
    shutil.copytree(first, second)
    write_image_set(second, 3, classes=("Pear",))
    output = root / "out"
    old = run_job(spark, "--input", str(first), "--output", str(output), "--pca-k", "2")
    new = run_job(spark, "--input", str(second), "--output", str(output), "--pca-k", "3")
    again = second / "Kiwi" / "0_100.jpg"
    manifest = root / "batch.jsonl"
    manifest.write_text(json.dumps({"uri": str(again)}) + "\n")
    batch = run_job(spark, "--manifest", str(manifest), "--output", str(output))
    return output, old, new, batch, again


def test_every_row_names_the_pca_version_that_projected_it(spark, history):
    output, old, new, batch, _ = history
    rows = spark.read.option("mergeSchema", "true").parquet(str(output / "features")).collect()
    spaces = {(r["run_id"], r["pca_model"], len(r["pca_features"])) for r in rows}
    v_old, v_new = old.pca["version"], new.pca["version"]
    assert spaces == {(old.run_id, v_old, 2), (new.run_id, v_new, 3), (batch.run_id, v_new, 3)}
    assert batch.pca["version"] == v_new and v_new in batch.pca["status"]
    assert all(re.fullmatch(r"v\d{8}T\d{6}Z-[0-9a-f]{8}", v) for v in (v_old, v_new))
    assert all(r["featurized_at"] is not None for r in rows)
    # Versions are kept whole: the first is still there beside the second.
    for version in (v_old, v_new):
        assert {p.name for p in (output / "pca_model" / "versions" / version).iterdir()} >= {
            "projection.npz",
            "featurizer.json",
        }


def test_current_features_are_every_photo_once_in_the_current_space(spark, history):
    output, old, new, batch, _ = history
    rows = current_features(spark, str(output)).collect()
    # The first backfill's photos (another folder) are not lost: re-projected, not dropped.
    assert len(rows) == len({r["path"] for r in rows}) == 15
    assert {r["pca_model"] for r in rows} == {new.pca["version"]}
    current = reduce.read(spark, str(output / "pca_model"))
    for row in rows:
        expected = current.projection.project(np.array([row["features"]]))[0]
        np.testing.assert_allclose(row["pca_features"], expected, atol=1e-5)
    (newest,) = [r for r in rows if r["path"].endswith("/second/Kiwi/0_100.jpg")]
    assert newest["run_id"] == batch.run_id  # the batch after the backfill is the newer row
    older = current_features(spark, str(output), model=old.pca["version"]).collect()
    assert len(older) == 15 and {len(r["pca_features"]) for r in older} == {2}
    with pytest.raises(NoCurrentModel, match="run a backfill first"):
        current_features(spark, str(output.parent / "nothing-here"))


def test_inventory_counts_rows_per_run_and_per_version(spark, history, capsys):
    output, old, new, batch, _ = history
    v_old, v_new = old.pca["version"], new.pca["version"]
    taken = inventory.read(str(output))
    assert taken.current == v_new
    assert taken.runs[old.run_id][0] == 6 and taken.runs[new.run_id][0] == 9
    assert taken.runs[batch.run_id] == (1, 0, v_new)
    assert {name: (v.rows, v.photos) for name, v in taken.versions.items()} == {
        v_old: (6, 6),
        v_new: (10, 9),
    }
    assert taken.photos == 15  # the first backfill read the same photos from another folder
    assert taken.in_view == current_features(spark, str(output)).count() == 15
    assert inventory.main([str(output)]) == 0
    said = capsys.readouterr().out
    assert f"{v_new}" in said and "<- current" in said and old.run_id in said
    assert f"15 photos have feature rows; 15 in the current view ({v_new})" in said


def test_a_photo_erased_after_its_newest_row_is_hidden_until_its_rows_go(spark, history, tmp_path):
    """Rows an in-flight run wrote after the erase run for them wait for the next erase run;
    meanwhile the tombstone hides them from the current view and the inventory's count."""
    output, *_ = history
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    (erased,) = [
        r
        for r in current_features(spark, str(copy)).collect()
        if r["path"].endswith("/Pear/1_100.jpg")
    ]
    later = erased["featurized_at"] + timedelta(seconds=1)
    spark.createDataFrame(
        [(erased["path"], later)], "path string, erased_at timestamp"
    ).write.parquet(str(copy / "erasures" / "run_id=erase-0123456789abcdef"))
    paths = {r["path"] for r in current_features(spark, str(copy)).collect()}
    assert len(paths) == 14 and erased["path"] not in paths
    (copy / "features" / "run_id=x_$folder$").write_bytes(b"")  # EMRFS's folder marker
    taken = inventory.read(str(copy))
    assert (taken.in_view, taken.erased) == (14, 1)


def test_a_refit_of_the_same_prefix_keeps_every_photo_in_one_space(spark, tmp_path):
    """backfill -> manifest batch -> refit backfill of the same folder: the refit has the same
    run id (it replaces its own partition) but a version of its own, so the batch's photo
    that the refit did not read keeps its row, re-projected into the new space."""
    raw, elsewhere = tmp_path / "raw", tmp_path / "uploads"
    write_image_set(raw, 3, classes=("Banana", "Kiwi"))
    write_image_set(elsewhere, 1, classes=("Pear",))
    output = tmp_path / "out"
    first = run_job(spark, "--input", str(raw), "--output", str(output), "--pca-k", "2")
    (late,) = (elsewhere / "Pear").iterdir()
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text(json.dumps({"uri": str(late)}) + "\n")
    batch = run_job(spark, "--manifest", str(manifest), "--output", str(output))
    write_image_set(raw, 1, classes=("Cherry",))  # one photo added before the refit
    refit = run_job(spark, "--input", str(raw), "--output", str(output), "--pca-k", "4")
    assert refit.run_id == first.run_id and refit.pca["version"] != first.pca["version"]
    assert batch.pca["version"] == first.pca["version"]

    rows = current_features(spark, str(output)).collect()
    assert sorted(r["path"] for r in rows) == sorted({r["path"] for r in rows}) and len(rows) == 8
    current = reduce.read(spark, str(output / "pca_model"))
    assert current.info.version == refit.pca["version"] and current.projection.k == 4
    for row in rows:
        assert row["pca_model"] == refit.pca["version"]
        expected = current.projection.project(np.array([row["features"]]))[0]
        np.testing.assert_allclose(row["pca_features"], expected, atol=1e-5)
    assert any(
        r["path"].endswith("/uploads/Pear/0_100.jpg") and r["run_id"] == batch.run_id for r in rows
    )
    assert inventory.read(str(output)).in_view == 8


def test_a_batch_that_had_no_model_yet_joins_the_view_once_one_exists(spark, tmp_path):
    """Uploads during the first backfill: their batch had no model (null pca_model), its
    report names the features, and the first version projects them."""
    raw, late = tmp_path / "raw", tmp_path / "late"
    write_image_set(raw, 2, classes=("Kiwi",))
    write_image_set(late, 1, classes=("Pear",))
    output = tmp_path / "out"
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text(json.dumps({"uri": str(next((late / "Pear").iterdir()))}) + "\n")
    batch = run_job(spark, "--manifest", str(manifest), "--output", str(output))
    assert batch.pca.get("k") is None and batch.featurizer["image_size"] == 96
    first = run_job(spark, "--input", str(raw), "--output", str(output), "--pca-k", "2")
    rows = current_features(spark, str(output)).collect()
    assert len(rows) == 3 and {r["pca_model"] for r in rows} == {first.pca["version"]}
    (pear,) = [r for r in rows if "/late/Pear/" in r["path"]]
    current = reduce.read(spark, str(output / "pca_model"))
    expected = current.projection.project(np.array([pear["features"]]))[0]
    np.testing.assert_allclose(pear["pca_features"], expected, atol=1e-5)
    taken = inventory.read(str(output))
    assert taken.in_view == 3 and taken.unversioned == 1


def test_inventory_reads_partitions_older_than_its_columns(spark, history, tmp_path):
    """The schema is given, not read from the first file: a partition written before
    pca_model and featurized_at existed (sorting first) hid the columns of every other."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output, _, new, *_ = history
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    old = copy / "features" / "run_id=a-before-versions"
    old.mkdir()
    pq.write_table(pa.table({"path": ["file:/elsewhere/Kiwi/9.jpg"]}), old / "part-0.parquet")
    taken = inventory.read(str(copy))
    assert taken.versions[new.pca["version"]].rows == 10
    assert (taken.unversioned, taken.photos, taken.in_view) == (1, 16, 15)
