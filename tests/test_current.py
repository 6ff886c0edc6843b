"""Which PCA space: every feature row names the model that projected it, the "current" reader
never mixes two spaces nor counts a photo twice, and the inventory counts runs and spaces."""

from __future__ import annotations

import json
import shutil

import pytest

from emr_serverless_job import inventory
from emr_serverless_job.current import NoCurrentModel, current_features
from emr_serverless_job.synthetic import write_image_set
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


def test_every_row_names_the_pca_space_that_projected_it(spark, history):
    output, old, new, batch, _ = history
    rows = spark.read.option("mergeSchema", "true").parquet(str(output / "features")).collect()
    spaces = {(r["run_id"], r["pca_model"], len(r["pca_features"])) for r in rows}
    assert spaces == {
        (old.run_id, old.run_id, 2),
        (new.run_id, new.run_id, 3),
        (batch.run_id, new.run_id, 3),
    }
    assert all(r["featurized_at"] is not None for r in rows)


def test_current_features_are_one_row_per_photo_in_the_current_space(spark, history):
    output, old, new, batch, _ = history
    rows = current_features(spark, str(output)).collect()
    assert len(rows) == len({r["path"] for r in rows}) == 9  # the second folder's, once each
    assert {r["pca_model"] for r in rows} == {new.run_id}
    (newest,) = [r for r in rows if r["path"].endswith("/Kiwi/0_100.jpg")]
    assert newest["run_id"] == batch.run_id  # the batch after the backfill is the newer row
    older = current_features(spark, str(output), model=old.run_id).collect()
    assert len(older) == 6 and {r["pca_model"] for r in older} == {old.run_id}
    with pytest.raises(NoCurrentModel, match="run a backfill first"):
        current_features(spark, str(output.parent / "nothing-here"))


def test_inventory_counts_rows_per_run_and_per_space(history, capsys):
    output, old, new, batch, _ = history
    taken = inventory.read(str(output))
    assert taken.current == new.run_id
    assert taken.runs[old.run_id][0] == 6 and taken.runs[new.run_id][0] == 9
    assert taken.runs[batch.run_id] == (1, 0, new.run_id)
    assert taken.models == {old.run_id: (6, 6), new.run_id: (10, 9)}
    assert taken.photos == 15  # the first backfill read the same photos from another folder
    assert inventory.main([str(output)]) == 0
    said = capsys.readouterr().out
    assert f"{new.run_id}" in said and "<- current" in said
    assert f"15 photos have feature rows; 9 in the current PCA space ({new.run_id})" in said
