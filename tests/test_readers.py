"""The reader tools on locations that are not what they expect: a typo, a folder of something
else, an output whose latest report is a compaction's (fruits_readers/)."""

from __future__ import annotations

import json

import pytest

from fruits_contract import BACKFILL_MODE, report_path
from fruits_readers import inventory, plots


def write_report(output, run_id: str, mode: str, finished_at: str) -> None:
    path = output / report_path(run_id)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"run_id": run_id, "mode": mode, "finished_at": finished_at}))


@pytest.fixture
def output_compacted_last(tmp_path):
    """An output whose newest report is a compaction's, written after the backfill's."""
    output = tmp_path / "output"
    write_report(output, "backfill-1", BACKFILL_MODE, "2026-12-01T10:00:00Z")
    write_report(output, "compact-2", "compact", "2026-12-02T10:00:00Z")
    return output


def test_the_plots_take_the_latest_featurizing_run_not_a_later_compaction(output_compacted_last):
    assert plots.find_report(output_compacted_last, None)["run_id"] == "backfill-1"


def test_the_plots_refuse_a_compaction_run_by_name_saying_what_it_is(output_compacted_last):
    with pytest.raises(plots.PlotError, match=r"'compact-2' is a compact run"):
        plots.find_report(output_compacted_last, "compact-2")


def test_the_plots_refuse_an_output_with_only_compaction_reports(tmp_path):
    write_report(tmp_path, "compact-2", "compact", "2026-12-02T10:00:00Z")
    with pytest.raises(plots.PlotError, match="no featurizing run"):
        plots.find_report(tmp_path, None)


@pytest.mark.parametrize(
    ("where", "said"),
    [("absent", "nothing there"), ("elsewhere", "not a job output")],
)
def test_the_inventory_of_a_location_that_is_no_output_is_refused(tmp_path, capsys, where, said):
    """Zeros for a mistyped path would read as "nothing featurized"; it exits 2 instead."""
    (tmp_path / "elsewhere" / "photos").mkdir(parents=True)
    location = str(tmp_path / where)
    assert inventory.main([location]) == 2
    err = capsys.readouterr().err
    assert f"OUTPUT {location}: {said}" in err


def test_the_inventory_of_an_output_with_only_reports_is_read(output_compacted_last, capsys):
    assert inventory.main([str(output_compacted_last)]) == 0
    assert "0 photos have feature rows" in capsys.readouterr().out
