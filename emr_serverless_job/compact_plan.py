"""Which ``run_id=`` partitions a compaction merges, and how readers see a merged one (pure).

Every batch of uploads writes its own ``features/run_id=batch-…`` and ``errors/run_id=batch-…``
partition, one small file each: at a batch every two minutes that is about 1,400 files a day.
A compaction run (``compact.py``) merges the old ones into few ``run_id=compacted-<16 hex>``
partitions of one file each, at most ``TARGET_FILE_BYTES`` (the size a run's own files aim for).

What a merged partition is, for readers:

* each row keeps the run that wrote it in ``ORIGIN_RUN_COLUMN``: the folder names the merge, and
  Spark's and pyarrow's partition discovery both let the folder's ``run_id`` win over a
  ``run_id`` column in the file (tested), so the file cannot keep that name. A reader's run of a
  row is ``origin_run_id`` when present, else the folder's ``run_id`` (``run_of``);
* ``featurized_at``, ``pca_model`` and every other column are copied unchanged, so the current
  view, the inventory and reconcile give the same answers before and after;
* while a merge is being finished (its journal is there and its file is in place), the source
  partitions it names are hidden from readers (``hidden_sources``): they hold the same rows.

The rule for what may be merged (``eligible``): only ``batch-`` partitions (a backfill reruns its
prefix's run id on every refit and is already written in target-sized files; an erase run writes
no features or errors), whose run report exists (the run finished writing both tables), whose
newest file is older than the cutoff (the watcher's retries end within hours; the default,
``fruits_contract.COMPACT_MIN_AGE_DAYS``, is well past them), each smaller than the target.
Merged partitions under the target are merged again with newer batches, never only with each
other, so a second compaction with no new batch changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fruits_contract import BATCH_RUN_PREFIX, RUN_ID_PARTITION, iso_utc

ELIGIBLE_PREFIX = BATCH_RUN_PREFIX
COMPACTED_PREFIX = "compacted-"
NAME_DIGITS = 16
PARTITION_KEY = RUN_ID_PARTITION
# The run that wrote a row of a merged partition (the folder names the merge).
ORIGIN_RUN_COLUMN = "origin_run_id"
# A merge in progress: a hidden staging folder and journal beside the partitions (a leading '.',
# which Spark, pyarrow and reconcile never read as a partition).
STAGING_PREFIX = ".compacting-"
JOURNAL_SUFFIX = ".json"
# No run lives longer than this: the request's executionTimeoutMinutes is at most the stack's
# (120 by default; EMR Serverless stops a run at it). A journal younger than this may be a
# live run's, so no other run finishes, undoes or works around it.
LIVE_JOURNAL_HOURS = 24
MODE = "compact"
ALONE = "nothing to merge it with"


@dataclass(frozen=True)
class Partition:
    """One ``run_id=<value>`` folder of a table, as a listing and one footer describe it."""

    run_id: str  # the folder's value
    files: tuple[str, ...]  # data file names in the folder
    bytes: int
    newest: datetime  # the newest data file's modification time
    has_report: bool  # reports/run_id=<value>/ exists: the run finished writing
    layout: str  # column names and types as written, without ORIGIN_RUN_COLUMN: only equal
    # layouts merge (nullability may differ: a batch before any PCA model has a nullable
    # pca_model; the merged file takes the loosest)

    @property
    def folder(self) -> str:
        return f"{PARTITION_KEY}={self.run_id}"

    @property
    def is_merged(self) -> bool:
        return self.run_id.startswith(COMPACTED_PREFIX)


@dataclass(frozen=True)
class Merge:
    """Source partitions of one table that become one partition of one file."""

    table: str  # "features" or "errors"
    sources: tuple[Partition, ...]

    @property
    def target(self) -> str:
        return merged_name(p.folder for p in self.sources)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.sources)

    @property
    def files(self) -> int:
        return sum(len(p.files) for p in self.sources)


@dataclass(frozen=True)
class Plan:
    """A table's partitions and files before, and the merges that reduce them."""

    table: str
    partitions: int
    files: int
    bytes: int
    merges: tuple[Merge, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)  # why -> partitions left alone

    @property
    def partitions_after(self) -> int:
        return self.partitions - sum(len(m.sources) - 1 for m in self.merges)

    @property
    def files_after(self) -> int:
        return self.files - sum(m.files - 1 for m in self.merges)


def merged_name(folders: Iterable[str]) -> str:
    """``compacted-<16 hex>`` of the source folders: the same merge always gets the same name,
    so a rerun after a crash finds its own staging and journal."""
    digest = hashlib.sha256("\n".join(sorted(folders)).encode()).hexdigest()
    return f"{COMPACTED_PREFIX}{digest[:NAME_DIGITS]}"


def why_not(partition: Partition, cutoff: datetime, target_bytes: int) -> str | None:
    """Why a partition is left alone, or None when it may be merged."""
    if partition.bytes >= target_bytes:
        return "already at the target size"
    if partition.is_merged:
        return None
    if not partition.run_id.startswith(ELIGIBLE_PREFIX):
        return "not a batch (backfills rerun their partition)"
    if not partition.has_report:
        return "no run report (the run may still be writing)"
    if partition.newest >= cutoff:
        return "newer than the cutoff"
    return None


def eligible(partition: Partition, cutoff: datetime, target_bytes: int) -> bool:
    return why_not(partition, cutoff, target_bytes) is None


def plan(table: str, partitions: Iterable[Partition], cutoff: datetime, target_bytes: int) -> Plan:
    """Pack the eligible partitions, oldest first, into merges of at most ``target_bytes``.

    Only partitions of one column layout merge (a table written before a column existed is
    left as it is). A merge holds at least two partitions and at least one batch: merged
    partitions are never merged only with each other, which makes a second run a no-op."""
    every = sorted(partitions, key=lambda p: (p.newest, p.run_id))
    skipped: dict[str, int] = {}
    by_layout: dict[str, list[Partition]] = {}
    for partition in every:
        reason = why_not(partition, cutoff, target_bytes)
        if reason is None:
            by_layout.setdefault(partition.layout, []).append(partition)
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    merges: list[Merge] = []
    for group in by_layout.values():
        bins: list[list[Partition]] = [[]]
        for partition in group:
            if bins[-1] and sum(p.bytes for p in bins[-1]) + partition.bytes > target_bytes:
                bins.append([])
            bins[-1].append(partition)
        for members in bins:
            if len(members) >= 2 and any(not p.is_merged for p in members):
                merges.append(Merge(table, tuple(members)))
            else:
                skipped[ALONE] = skipped.get(ALONE, 0) + len(members)
    return Plan(
        table=table,
        partitions=len(every),
        files=sum(len(p.files) for p in every),
        bytes=sum(p.bytes for p in every),
        merges=tuple(merges),
        skipped=skipped,
    )


# --- the journal, and what readers hide while a merge is finished ---------------------------


def journal_body(
    merge: Merge, staged_file: str, rows: int, written_at: datetime, run_id: str
) -> bytes:
    """What a merge writes before its file goes live: enough for a rerun to finish it, and
    when and by which run, so that another run tells a live merge (``is_live_journal``) from
    a crashed one, and a resubmitted run (same run id) finishes its own."""
    return json.dumps(
        {
            "target": merge.target,
            "file": staged_file,
            "rows": rows,
            "sources": {p.folder: list(p.files) for p in merge.sources},
            "written_at": iso_utc(written_at),
            "run_id": run_id,
        },
        indent=1,
    ).encode()


def is_live_journal(journal: dict, now: datetime, own_run: str | None = None) -> bool:
    """Whether a journal may belong to a run still going: written less than
    ``LIVE_JOURNAL_HOURS`` ago by a run other than ``own_run``. Older ones (and those of
    before ``written_at``) are a crashed run's, for any run to finish or undo."""
    if own_run is not None and journal.get("run_id") == own_run:
        return False
    written = journal.get("written_at")
    if not isinstance(written, str):
        return False
    try:
        age = now - datetime.fromisoformat(written)
    except ValueError:
        return False
    return age < timedelta(hours=LIVE_JOURNAL_HOURS)


def partitions_of(journal: dict) -> set[str]:
    """The partition folders (``run_id=...``) a merge's journal rewrites: its sources and its
    target. An erase must not rewrite any of them while the merge may still be publishing."""
    return {*journal["sources"], f"{PARTITION_KEY}={journal['target']}"}


def journal_name(target: str) -> str:
    return f"{STAGING_PREFIX}{target}{JOURNAL_SUFFIX}"


def staging_name(target: str) -> str:
    return f"{STAGING_PREFIX}{target}"


def is_journal(name: str) -> bool:
    return name.startswith(STAGING_PREFIX) and name.endswith(JOURNAL_SUFFIX)


def hidden_sources(journals: Iterable[dict], is_live: Callable[[str, str], bool]) -> set[str]:
    """The ``run_id`` values of source partitions readers skip: those of every journal whose
    merged file is already in its partition (``is_live(target folder, file)``), since the
    merged file holds their rows. Before that the sources are read, as if nothing happened."""
    hidden: set[str] = set()
    for journal in journals:
        if is_live(f"{PARTITION_KEY}={journal['target']}", journal["file"]):
            hidden |= {folder.split("=", 1)[1] for folder in journal["sources"]}
    return hidden
