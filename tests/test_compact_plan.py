"""Which partitions a compaction merges (compact_plan.plan), on plain data: old batches only,
oldest first, at most the target per merged file, never a merge of merged partitions alone
(so a second run is a no-op), and what readers hide while a merge is being finished."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from emr_serverless_job import compact_plan as cp
from emr_serverless_job.compact_plan import Partition

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=7)
TARGET = 100
LAYOUT = '[["path", "string"]]'


def part(run_id: str, size: int = 10, days_old: float = 30, report: bool = True, **kw) -> Partition:
    return Partition(
        run_id=run_id,
        files=kw.get("files", (f"part-{run_id}.parquet",)),
        bytes=size,
        newest=NOW - timedelta(days=days_old),
        has_report=report,
        layout=kw.get("layout", LAYOUT),
    )


def sources(plan: cp.Plan) -> list[list[str]]:
    return [[p.run_id for p in merge.sources] for merge in plan.merges]


def test_old_batches_are_packed_oldest_first_up_to_the_target():
    batches = [part(f"batch-{i}", size=40, days_old=30 - i) for i in range(5)]
    plan = cp.plan("features", batches, CUTOFF, TARGET)
    # 40 + 40 fits, a third would pass 100; the fifth is alone and stays as it is
    assert sources(plan) == [["batch-0", "batch-1"], ["batch-2", "batch-3"]]
    assert (plan.partitions, plan.partitions_after, plan.files, plan.files_after) == (5, 3, 5, 3)
    assert plan.skipped == {cp.ALONE: 1}
    assert all(m.bytes <= TARGET for m in plan.merges)


def test_what_a_run_may_still_write_or_rerun_is_left_alone():
    partitions = [
        part("batch-old"),
        part("batch-older", days_old=40),
        part("batch-new", days_old=1),  # newer than the cutoff: its retries may still run
        part("batch-unfinished", report=False),  # no report: the run may still be writing
        part("backfill-0123", size=5),  # a refit reruns its partition
        part("batch-big", size=TARGET),  # already a file of the target size
    ]
    plan = cp.plan("features", partitions, CUTOFF, TARGET)
    assert sources(plan) == [["batch-older", "batch-old"]]
    assert plan.skipped == {
        "newer than the cutoff": 1,
        "no run report (the run may still be writing)": 1,
        "not a batch (backfills rerun their partition)": 1,
        "already at the target size": 1,
    }


def test_only_partitions_of_one_layout_merge():
    partitions = [
        part("batch-a"),
        part("batch-b"),
        part("batch-c", layout='[["path", "string"], ["label", "string"]]'),
    ]
    assert sources(cp.plan("errors", partitions, CUTOFF, TARGET)) == [["batch-a", "batch-b"]]


def test_a_merged_partition_takes_newer_batches_but_never_merges_with_merged_alone():
    merged = [part("compacted-aaaa", size=30, days_old=20), part("compacted-bbbb", size=30)]
    alone = cp.plan("features", merged, CUTOFF, TARGET)
    assert alone.merges == () and alone.files_after == alone.files  # the second run's no-op
    newer = [*merged, part("batch-z", size=10, days_old=8)]
    assert sources(cp.plan("features", newer, CUTOFF, TARGET)) == [
        ["compacted-bbbb", "compacted-aaaa", "batch-z"]  # oldest first
    ]


def test_a_merge_is_named_by_its_sources_whatever_their_order():
    a, b = part("batch-a"), part("batch-b")
    assert cp.Merge("features", (a, b)).target == cp.Merge("features", (b, a)).target
    assert cp.Merge("features", (a, b)).target != cp.Merge("features", (a,)).target
    assert cp.Merge("features", (a, b)).target.startswith(cp.COMPACTED_PREFIX)


def test_sources_are_hidden_only_once_the_merged_file_is_live():
    merge = cp.Merge("features", (part("batch-a"), part("batch-b")))
    written = datetime(2026, 12, 2, tzinfo=UTC)
    journal = json.loads(cp.journal_body(merge, "part-0.parquet", 3, written, "compact-1"))
    assert journal["sources"] == {
        "run_id=batch-a": ["part-batch-a.parquet"],
        "run_id=batch-b": ["part-batch-b.parquet"],
    }
    live = {(f"run_id={merge.target}", "part-0.parquet")}
    assert cp.hidden_sources([journal], lambda f, n: (f, n) in live) == {"batch-a", "batch-b"}
    assert cp.hidden_sources([journal], lambda f, n: False) == set()
    assert cp.is_journal(cp.journal_name(merge.target))
    assert not cp.is_journal(cp.staging_name(merge.target))


def test_a_young_journal_of_another_run_is_live_and_an_old_one_or_ones_own_is_not():
    """What keeps two runs from finishing or undoing each other's merges: a journal written
    less than LIVE_JOURNAL_HOURS ago may be a live run's, unless it is this run's own (its
    resubmission after a crash); one without a time is from before journals had one."""
    merge = cp.Merge("features", (part("batch-a"), part("batch-b")))
    written = datetime(2026, 12, 2, 10, tzinfo=UTC)
    journal = json.loads(cp.journal_body(merge, "part-0.parquet", 3, written, "compact-1"))
    assert cp.is_live_journal(journal, written + timedelta(hours=1))
    assert cp.is_live_journal(journal, written + timedelta(hours=1), own_run="compact-2")
    assert not cp.is_live_journal(journal, written + timedelta(hours=1), own_run="compact-1")
    assert not cp.is_live_journal(journal, written + timedelta(hours=cp.LIVE_JOURNAL_HOURS))
    assert not cp.is_live_journal({k: v for k, v in journal.items() if k != "written_at"}, written)
    assert cp.partitions_of(journal) == {
        "run_id=batch-a",
        "run_id=batch-b",
        f"run_id={merge.target}",
    }
