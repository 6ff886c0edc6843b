"""Erasure (GDPR right to erasure): a photo deleted from ``raw/`` leaves every table.

An erase run (``--erase MANIFEST``) reads an erasure manifest, JSON Lines of
``{"uri": "s3://bucket/raw/key", "erased_at": "2025-01-01T12:00:00.000Z"}`` (the key
URL-decoded; ``erased_at`` the deletion's time, ISO-8601 with a zone), and

1. appends one tombstone per photo to ``OUTPUT/erasures/run_id=<run id>/`` (``path`` spelled as
   the ``features`` table spells it, ``erased_at``): a rerun replaces its own partition;
2. applies every tombstone of the table to every ``features`` and ``errors`` partition. A
   features row goes when a tombstone of its path has ``erased_at >= featurized_at`` (a row
   featurized after the deletion is a re-upload and stays). An errors row has no time of its
   own: it goes when a tombstone of its path is later than its run's ``started_at`` (from the
   run report; any tombstone when the report cannot be read), or when it only says the file
   was gone (a run that started after the deletion read nothing of the photo, but its row still
   names the key). Only partitions holding a match are rewritten;
3. writes ``reports/run_id=<run id>/report.json`` with the rows removed per table.

Applying *all* tombstones each time is what removes rows that a featurizing run which started
before a deletion wrote after the erase run for it: the next erase run removes them, and until
then ``tombstones`` lets the current view hide them. The tombstone table is small (a path and
a time per erased photo), so it is broadcast into every join.

A partition is replaced through a journal, so that a run killed half way is finished by its
rerun (the watcher resubmits a failed run with the same run id) and never loses or doubles a
row: the kept rows are written to a hidden folder beside the partition, then a hidden journal
names the partition's old files; only then are the old files deleted and the new ones moved in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.utils import AnalysisException

from emr_serverless_job import hadoopfs
from emr_serverless_job.compact_plan import ORIGIN_RUN_COLUMN
from emr_serverless_job.config import JobConfig
from emr_serverless_job.inputs import (
    DELETED,
    NOT_FOUND,
    InputError,
    manifest_lines,
    spark_spelling,
)
from emr_serverless_job.job import FEATURIZED_AT_COLUMN
from fruits_contract import (
    ERASED_AT_FIELD,
    ERASURES_TABLE,
    ERRORS_TABLE,
    FEATURES_TABLE,
    PATH_COLUMN,
    RUN_ID_PARTITION,
    erase_run_id,
    now_iso,
    report_path,
)
from fruits_contract.logs import log

ERASED_AT_COLUMN = "erased_at"
TOMBSTONE_SCHEMA = f"{PATH_COLUMN} string, {ERASED_AT_COLUMN} timestamp"
MODE = "erase"
# Rewrites in progress: hidden names (a leading '.'), which Spark never reads as partitions.
STAGING_PREFIX = ".erasing-"
JOURNAL_SUFFIX = ".json"
# An errors row with one of these reasons only says the photo was not there when its run
# looked: once the photo is erased, the row goes whatever the run's time.
GONE_REASONS = (NOT_FOUND, DELETED)
# Spellings of one S3 object across Hadoop's S3 connectors, so a table written through any
# of them is matched.
S3_SCHEMES = ("s3", "s3a", "s3n")
# Run ids are partition values spelled as written ("007" is not 7) while a table is scanned.
TYPE_INFERENCE = "spark.sql.sources.partitionColumnTypeInference.enabled"
# Internal column names of the tombstones in joins (never written).
_T_PATH, _T_AT = "_tombstone_path", "_tombstone_erased_at"


class ErasureIncomplete(RuntimeError):
    """Some lines of the manifest could not be applied: the run fails (and is retried, then
    alerted) after erasing everything else it could."""


@dataclass(frozen=True)
class Tombstone:
    path: str  # as the tables spell the file
    erased_at: datetime  # aware, UTC


@dataclass(frozen=True)
class Erasures:
    """An erasure manifest, parsed: one tombstone per spelling, the latest time of each."""

    tombstones: list[Tombstone]
    uris: int  # distinct photos named
    problems: list[str] = field(default_factory=list)


@dataclass
class ErasureReport:
    """The JSON record of an erase run (``reports/run_id=<id>/report.json``)."""

    run_id: str
    source: str
    output: str
    started_at: str
    mode: str = MODE
    finished_at: str = ""
    photos: int = 0  # distinct URIs in the manifest
    tombstones_added: int = 0
    tombstones_total: int = 0  # distinct paths in the erasures table after this run
    rows_removed: dict[str, int] = field(default_factory=dict)  # table -> rows
    partitions_rewritten: dict[str, list[str]] = field(default_factory=dict)  # table -> run ids
    problems: list[str] = field(default_factory=list)
    # table/run_id=<id>: a compaction that may still run was merging it; the next run erases it
    deferred: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def summary(self) -> str:
        """The run's end in a few lines, as ``main`` prints it (the driver's stdout on EMR); the
        timings are in the report's JSON only."""
        removed = ", ".join(f"{n} {table} rows" for table, n in self.rows_removed.items())
        lines = [
            f"run {self.run_id} ({self.mode}) of {self.source}",
            f"  {self.photos} photos erased ({self.tombstones_total} tombstones in all); "
            f"removed {removed or 'nothing'}",
        ]
        lines += [
            f"  rewrote {table}: {', '.join(runs)}"
            for table, runs in self.partitions_rewritten.items()
            if runs
        ]
        if self.deferred:
            lines.append(
                "  left for the next erase run (being compacted): " + ", ".join(self.deferred)
            )
        lines += [f"  PROBLEM: {problem}" for problem in self.problems]
        return "\n".join(lines)


# --- the manifest (pure) --------------------------------------------------------------------


def parse_time(value: object) -> datetime:
    """An ISO-8601 time with a zone (``Z`` or an offset), as UTC; a naive time is refused:
    which instant it means depends on a machine's zone, and erasure compares instants."""
    if not isinstance(value, str):
        raise ValueError("erased_at is not a string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"erased_at {value!r} has no time zone (write Z for UTC)")
    return parsed.astimezone(UTC)


def spellings(uri: str) -> list[str]:
    """Every way a table's ``path`` column may spell this object: as Spark spells a manifest
    URI, as written (error rows of unreadable addresses keep the key as written), and through
    each S3 connector's scheme."""
    found = [spark_spelling(uri), uri]
    for spelled in list(found):
        scheme, sep, rest = spelled.partition("://")
        if sep and scheme in S3_SCHEMES:
            found += [f"{other}://{rest}" for other in S3_SCHEMES]
    return list(dict.fromkeys(found))


def parse_erasures(text: str) -> Erasures:
    """JSON Lines of ``{"uri", "erased_at"}``; a bad line is a problem with its number."""
    latest: dict[str, datetime] = {}
    uris: set[str] = set()
    problems: list[str] = []
    for line in manifest_lines(text):
        if line.problem:
            problems.append(f"{line.where}: {line.problem}")
            continue
        try:
            erased_at = parse_time(line.entry.get(ERASED_AT_FIELD))
        except ValueError as error:
            problems.append(f"{line.where}: {error}")
            continue
        uri = line.uri
        uris.add(uri)
        for path in spellings(uri):
            if path not in latest or erased_at > latest[path]:
                latest[path] = erased_at
    return Erasures(
        tombstones=[Tombstone(path, at) for path, at in sorted(latest.items())],
        uris=len(uris),
        problems=problems,
    )


# --- the tables -----------------------------------------------------------------------------


def _read_parquet(spark: SparkSession, uri: str, merge: bool = False) -> DataFrame | None:
    """A Parquet table or partition, or None when nothing is there yet."""
    if not hadoopfs.exists(spark, uri):
        return None
    try:
        reader = spark.read.option("mergeSchema", "true") if merge else spark.read
        return reader.parquet(uri)
    except AnalysisException as error:  # a folder with no data file: nothing to read
        if "Unable to infer schema" in str(error) or "PATH_NOT_FOUND" in str(error):
            return None
        raise


def tombstones(spark: SparkSession, output: str) -> DataFrame | None:
    """Every erased path with its latest ``erased_at`` (one row per path), or None before the
    first erase run. The current view hides a photo's newest row when its tombstone is at or
    after the row's ``featurized_at``."""
    table = _read_parquet(spark, f"{output.rstrip('/')}/{ERASURES_TABLE}")
    if table is None:
        return None
    return table.groupBy(PATH_COLUMN).agg(F.max(ERASED_AT_COLUMN).alias(ERASED_AT_COLUMN))


def _joinable(stones: DataFrame) -> DataFrame:
    return F.broadcast(
        stones.select(F.col(PATH_COLUMN).alias(_T_PATH), F.col(ERASED_AT_COLUMN).alias(_T_AT))
    )


def features_match(rows: DataFrame) -> Column:
    """A features row erased by a tombstone: same path, deleted at or after it was featurized
    (a row without ``featurized_at``, from before that column, goes with any tombstone)."""
    featurized = rows[FEATURIZED_AT_COLUMN]
    return (rows[PATH_COLUMN] == F.col(_T_PATH)) & (
        featurized.isNull() | (F.col(_T_AT) >= featurized)
    )


def errors_match(rows: DataFrame, started_at: Column) -> Column:
    """An errors row erased by a tombstone: same path, and deleted after its run started (any
    time when that is unknown: a null ``started_at``), or a row that only says the file was
    gone. ``started_at`` is per row: a merged partition holds rows of many runs."""
    same = rows[PATH_COLUMN] == F.col(_T_PATH)
    later = (F.col(_T_AT) > started_at) | rows["reason"].isin(*GONE_REASONS)
    return same & (started_at.isNull() | later)


def _run_started(spark: SparkSession, output: str, part: DataFrame, partition_run: str) -> Column:
    """When each row's run started: the partition's run, or in a merged partition (``compact``)
    the row's ``origin_run_id``; null where the report cannot be read."""
    if ORIGIN_RUN_COLUMN not in part.columns:
        return F.lit(_started_at(spark, output, partition_run)).cast("timestamp")
    runs = sorted(str(r[0]) for r in part.select(ORIGIN_RUN_COLUMN).distinct().collect())
    known = {run: _started_at(spark, output, run) for run in runs}
    pairs = [F.lit(x) for run, at in known.items() if at is not None for x in (run, at)]
    if not pairs:
        return F.lit(None).cast("timestamp")
    return F.create_map(*pairs)[F.col(ORIGIN_RUN_COLUMN)]


# --- the file system (Hadoop's, through the JVM: local folders here, EMRFS on EMR) ----------


def _fs(spark: SparkSession, uri: str) -> tuple[object, object]:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def _names(spark: SparkSession, folder: str) -> list[str]:
    """The entries of a folder (files and folders, hidden ones too); [] when it is absent."""
    path, fs = _fs(spark, folder)
    if not fs.exists(path):
        return []
    return sorted(str(status.getPath().getName()) for status in fs.listStatus(path))


def _move(spark: SparkSession, source: str, target: str) -> None:
    """Rename one file; one already moved (a rerun after a crash) is fine."""
    src, fs = _fs(spark, source)
    dst, _ = _fs(spark, target)
    if not fs.rename(src, dst) and not (fs.exists(dst) and not fs.exists(src)):
        raise OSError(f"could not move {source} to {target}")


# --- keeping a partition's schema ----------------------------------------------------------

# Where Spark records a Parquet file's own schema (nullability included) in the footer.
SPARK_SCHEMA_KEY = "org.apache.spark.sql.parquet.row.metadata"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A non-null literal of each type a table declares non-null (never used as a value: only a
# coalesce with one tells Spark that a column read back from Parquet cannot be null).
NON_NULL = {
    T.StringType(): lambda: F.lit(""),
    T.FloatType(): lambda: F.lit(0.0).cast("float"),
    T.DoubleType(): lambda: F.lit(0.0),
    T.IntegerType(): lambda: F.lit(0).cast("int"),
    T.LongType(): lambda: F.lit(0).cast("long"),
    T.BooleanType(): lambda: F.lit(False),
    T.TimestampType(): lambda: F.lit(EPOCH),
}


def written_schema(spark: SparkSession, partition: str) -> T.StructType | None:
    """The schema a partition was written with, from a data file's footer.

    Spark reads every Parquet column back as nullable, so a rewrite would otherwise turn
    the featurizing run's non-null ``pca_model``, ``featurized_at`` and vector elements
    into nullable ones: other partitions' schema, and the contract, would differ."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for name in _names(spark, partition):
        if not name.endswith(".parquet"):
            continue
        path = jvm.org.apache.hadoop.fs.Path(f"{partition}/{name}")
        file = jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(path, conf)
        reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(file)
        try:
            meta = reader.getFooter().getFileMetaData().getKeyValueMetaData().get(SPARK_SCHEMA_KEY)
        finally:
            reader.close()
        return T.StructType.fromJson(json.loads(meta)) if meta else None
    return None


def _coalescing(zero: Column) -> Callable[[Column], Column]:
    """One argument only: PySpark's ``transform`` passes an index to two-argument lambdas."""
    return lambda element: F.coalesce(element, zero)


def conform(frame: DataFrame, schema: T.StructType | None) -> DataFrame:
    """``frame`` (read from a partition) with the nullability the partition was written with;
    the values are untouched."""
    if schema is None:
        return frame
    columns = []
    for spec in schema.fields:
        column, kind = F.col(spec.name), spec.dataType
        if isinstance(kind, T.ArrayType) and not kind.containsNull and kind.elementType in NON_NULL:
            column = F.transform(column, _coalescing(NON_NULL[kind.elementType]()))
        if not spec.nullable and kind in NON_NULL:
            column = F.coalesce(column, NON_NULL[kind]())
        columns.append(column.alias(spec.name))
    return frame.select(*columns)


# --- replacing a partition ------------------------------------------------------------------


@dataclass(frozen=True)
class Swap:
    """Where one partition's rewrite by one erase run stages its files."""

    table: str  # OUTPUT/features
    partition: str  # run_id=<id>
    erase_run: str

    @property
    def live(self) -> str:
        return f"{self.table}/{self.partition}"

    @property
    def staging(self) -> str:
        return f"{self.table}/{STAGING_PREFIX}{self.erase_run}-{self.partition}"

    @property
    def journal(self) -> str:
        return f"{self.staging}{JOURNAL_SUFFIX}"


def _finish(spark: SparkSession, swap: Swap) -> None:
    """Delete the old files the journal names, move the staged ones in, then drop the
    journal: every step can be repeated, so a rerun completes a swap a crash interrupted."""
    journal = json.loads(hadoopfs.read_bytes(spark, swap.journal).decode())
    for name in journal["old"]:
        hadoopfs.delete(spark, f"{swap.live}/{name}")
    for name in _names(spark, swap.staging):
        _move(spark, f"{swap.staging}/{name}", f"{swap.live}/{name}")
    hadoopfs.delete(spark, swap.staging)
    hadoopfs.delete(spark, swap.journal)


def replace_partition(spark: SparkSession, swap: Swap, kept: DataFrame) -> bool:
    """Rewrite a partition as ``kept`` (computed from it): stage, journal, check, swap.
    Returns False, having changed nothing, when a compaction may be merging the partition.

    The journal is written *before* the check, and a compaction writes its own before it
    checks for this one (``compact.carry_out``): of the two, at least one sees the other and
    steps back, so a merge never publishes rows this rewrite removes. The tombstones stay:
    the next erase run (the watcher retries a failed one) applies them."""
    conform(kept, written_schema(spark, swap.live)).write.mode("overwrite").parquet(swap.staging)
    old = _names(spark, swap.live)
    journal = {"partition": swap.partition, "erase_run": swap.erase_run, "old": old}
    hadoopfs.write_bytes(spark, swap.journal, json.dumps(journal).encode())
    if swap.partition in _being_compacted(spark, swap.table):
        hadoopfs.delete(spark, swap.journal)
        hadoopfs.delete(spark, swap.staging)
        return False
    _finish(spark, swap)
    return True


def partitions_being_rewritten(spark: SparkSession, table: str) -> set[str]:
    """The partitions (``run_id=...``) erase runs' journals under ``table`` name."""
    return {
        json.loads(hadoopfs.read_bytes(spark, f"{table}/{name}").decode())["partition"]
        for name in _names(spark, table)
        if name.startswith(STAGING_PREFIX) and name.endswith(JOURNAL_SUFFIX)
    }


def _being_compacted(spark: SparkSession, table: str) -> set[str]:
    """Partitions a compaction that may still be running is merging (its journal is young)."""
    from emr_serverless_job import compact

    now = datetime.now(UTC)
    return {
        folder
        for journal in compact.read_journals(spark, table)
        if compact.is_live_journal(journal, now)
        for folder in compact.partitions_of(journal)
    }


def recover(spark: SparkSession, table: str, erase_run: str) -> int:
    """Finish every journaled swap under ``table`` (whichever run started it), and drop this
    run's staging folders that never got a journal (their write was cut short). Returns the
    swaps finished."""
    finished = 0
    names = _names(spark, table)
    for name in names:
        if not (name.startswith(STAGING_PREFIX) and name.endswith(JOURNAL_SUFFIX)):
            continue
        journal = json.loads(hadoopfs.read_bytes(spark, f"{table}/{name}").decode())
        _finish(spark, Swap(table, journal["partition"], journal["erase_run"]))
        finished += 1
    own = f"{STAGING_PREFIX}{erase_run}-"
    for name in names:
        journaled = name.endswith(JOURNAL_SUFFIX) or f"{name}{JOURNAL_SUFFIX}" in names
        if name.startswith(own) and not journaled:
            hadoopfs.delete(spark, f"{table}/{name}")
    return finished


# --- applying the tombstones ----------------------------------------------------------------


def _finish_compactions(spark: SparkSession, table: str) -> set[str]:
    """Finish (or undo) a merge a crashed compaction run left, before any partition is
    rewritten: a rewrite of its merged partition would otherwise move the file readers take
    as the sign that the merge is live. Returns the partitions of merges that may still be
    live, which this run must leave alone. (Imported here: compact builds on this module.)"""
    from emr_serverless_job import compact

    return compact.recover(spark, table, datetime.now(UTC), drop_orphans=False)[1]


def _partitions_matching(rows: DataFrame, stones: DataFrame, match: Column) -> dict[str, int]:
    """Rows to remove per ``run_id`` partition, in one Spark job over the table's few columns."""
    counted = rows.join(stones, match, "left_semi").groupBy("run_id").count().collect()
    return {str(row["run_id"]): int(row["count"]) for row in counted}


def erase_features(
    spark: SparkSession, output: str, stones: DataFrame, run_id: str, deferred: list[str]
) -> dict[str, int]:
    """Remove erased rows from every features partition; returns rows removed per partition.
    Partitions a live compaction is merging are left for the next erase run, in ``deferred``."""
    table = f"{output}/{FEATURES_TABLE}"
    recover(spark, table, run_id)
    busy = _finish_compactions(spark, table)
    rows = _read_parquet(spark, table, merge=True)  # partitions from before featurized_at
    if rows is None or "run_id" not in rows.columns:
        return {}
    if FEATURIZED_AT_COLUMN not in rows.columns:
        rows = rows.withColumn(FEATURIZED_AT_COLUMN, F.lit(None).cast("timestamp"))
    joinable = _joinable(stones)
    slim = rows.select(PATH_COLUMN, FEATURIZED_AT_COLUMN, "run_id")
    matching = _partitions_matching(slim, joinable, features_match(slim))
    removed: dict[str, int] = {}
    for partition_run, count in sorted(matching.items()):
        swap = Swap(table, f"run_id={partition_run}", run_id)
        if swap.partition in busy:
            deferred.append(f"{FEATURES_TABLE}/{swap.partition}")
            continue
        part = spark.read.parquet(swap.live)
        if FEATURIZED_AT_COLUMN not in part.columns:
            kept = part.join(joinable, part[PATH_COLUMN] == F.col(_T_PATH), "left_anti")
        else:
            kept = part.join(joinable, features_match(part), "left_anti")
        if replace_partition(spark, swap, kept):
            removed[partition_run] = count
        else:
            deferred.append(f"{FEATURES_TABLE}/{swap.partition}")
    return removed


def _started_at(spark: SparkSession, output: str, run_id: str) -> datetime | None:
    """When a run started, from its report; None when the report cannot be read."""
    try:
        report = json.loads(hadoopfs.read_bytes(spark, f"{output}/{report_path(run_id)}").decode())
        return parse_time(report["started_at"])
    except Exception as error:  # missing, unreadable or malformed: erase on any tombstone
        log("report_unreadable", run_id=run_id, cause=_first_line(error))
        return None


def _first_line(error: Exception) -> str:
    """The first line of an error (py4j's are pages long)."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


def erase_errors(
    spark: SparkSession, output: str, stones: DataFrame, run_id: str, deferred: list[str]
) -> dict[str, int]:
    """Remove erased rows from every errors partition; returns rows removed per partition.

    Partitions holding an erased path at all are found in one job; only theirs run reports are
    read (for ``started_at``), and each is checked and rewritten on its own."""
    table = f"{output}/{ERRORS_TABLE}"
    recover(spark, table, run_id)
    busy = _finish_compactions(spark, table)
    rows = _read_parquet(spark, table, merge=True)
    if rows is None or "run_id" not in rows.columns:
        return {}
    joinable = _joinable(stones)
    slim = rows.select(PATH_COLUMN, "run_id")
    candidates = _partitions_matching(slim, joinable, slim[PATH_COLUMN] == F.col(_T_PATH))
    removed: dict[str, int] = {}
    for partition_run in sorted(candidates):
        swap = Swap(table, f"run_id={partition_run}", run_id)
        if swap.partition in busy:
            deferred.append(f"{ERRORS_TABLE}/{swap.partition}")
            continue
        part = spark.read.parquet(swap.live)
        match = errors_match(part, _run_started(spark, output, part, partition_run))
        count = part.join(joinable, match, "left_semi").count()
        if not count:
            continue
        if replace_partition(spark, swap, part.join(joinable, match, "left_anti")):
            removed[partition_run] = count
        else:
            deferred.append(f"{ERRORS_TABLE}/{swap.partition}")
    return removed


def append_tombstones(spark: SparkSession, output: str, run_id: str, found: Erasures) -> None:
    """This run's tombstones as its own partition of the erasures table (a rerun replaces it)."""
    rows = [(stone.path, stone.erased_at) for stone in found.tombstones]
    frame = spark.createDataFrame(rows, TOMBSTONE_SCHEMA)
    frame.coalesce(1).write.mode("overwrite").parquet(
        f"{output}/{ERASURES_TABLE}/{RUN_ID_PARTITION}={run_id}"
    )


@contextmanager
def _timed(report: ErasureReport, stage: str) -> Iterator[None]:
    """The block's seconds in the report's ``timings_s`` under ``stage``; unlike ``job.timed`` it
    logs nothing, and a block that raises records no time."""
    start = time.perf_counter()
    yield
    report.timings_s[stage] = round(time.perf_counter() - start, 3)


def run(config: JobConfig, spark: SparkSession) -> ErasureReport:
    """One erase run on an existing session; writes and returns its report.

    Logs carry counts and run ids only, never a path: CloudWatch and EMR's log prefix keep
    logs for weeks, and an erased key name must not stay there."""
    started = time.perf_counter()
    source, output = config.erase or "", config.output
    raw, found = _read_manifest(spark, source)
    # The manifest names the run, so a rerun replaces its own tombstones; the trigger named
    # the same one (fruits_contract.erase_run_id).
    run_id = config.run_id or erase_run_id(raw)
    report = ErasureReport(
        run_id=run_id, source=source, output=output, started_at=now_iso(), photos=found.uris
    )
    report.problems = list(found.problems)
    log("erase_started", run_id=run_id, photos=found.uris, problems=len(found.problems))
    stones = _add_tombstones(spark, output, run_id, found, report)
    features, errors = _erase_rows(spark, output, stones, run_id, report)
    report_uri = _record_removals(report, output, run_id, features, errors)
    report.timings_s["total"] = round(time.perf_counter() - started, 3)
    report.finished_at = now_iso()
    hadoopfs.write_bytes(spark, report_uri, report.to_json().encode())
    _log_finished(report, found, features, errors, report_uri)
    _raise_if_incomplete(report, found, source, report_uri)
    return report


def _read_manifest(spark: SparkSession, source: str) -> tuple[bytes, Erasures]:
    """The manifest's bytes (they name the run) and its lines parsed; unreadable: InputError."""
    try:
        raw = hadoopfs.read_bytes(spark, source)
        found = parse_erasures(raw.decode("utf-8"))
    except Exception as error:  # absent, unreadable, not UTF-8: nothing was written
        raise InputError(f"--erase: cannot read {source}: {_first_line(error)}") from error
    return raw, found


def _add_tombstones(
    spark: SparkSession, output: str, run_id: str, found: Erasures, report: ErasureReport
) -> DataFrame | None:
    """This run's tombstones written, then every run's read: each run erases them all."""
    with _timed(report, "tombstones"):
        if found.tombstones:
            append_tombstones(spark, output, run_id, found)
        report.tombstones_added = len(found.tombstones)
        stones = tombstones(spark, output)
    return stones


def _erase_rows(
    spark: SparkSession,
    output: str,
    stones: DataFrame | None,
    run_id: str,
    report: ErasureReport,
) -> tuple[dict[str, int], dict[str, int]]:
    """Rows removed per features and per errors partition; nothing to do without tombstones."""
    if stones is None:
        return {}, {}
    stones = stones.persist()
    report.tombstones_total = stones.count()
    inference = spark.conf.get(TYPE_INFERENCE)
    spark.conf.set(TYPE_INFERENCE, "false")
    try:
        with _timed(report, "features"):
            features = erase_features(spark, output, stones, run_id, report.deferred)
        with _timed(report, "errors"):
            errors = erase_errors(spark, output, stones, run_id, report.deferred)
    finally:
        spark.conf.set(TYPE_INFERENCE, inference)
        stones.unpersist()
    return features, errors


def _record_removals(
    report: ErasureReport,
    output: str,
    run_id: str,
    features: dict[str, int],
    errors: dict[str, int],
) -> str:
    """What was removed and rewritten, per table, into the report; returns the report's URI."""
    report.rows_removed = {
        FEATURES_TABLE: sum(features.values()),
        ERRORS_TABLE: sum(errors.values()),
    }
    report.partitions_rewritten = {FEATURES_TABLE: sorted(features), ERRORS_TABLE: sorted(errors)}
    report_uri = f"{output}/{report_path(run_id)}"
    report.tables = {
        ERASURES_TABLE: f"{output}/{ERASURES_TABLE}/{RUN_ID_PARTITION}={run_id}",
        "report": report_uri,
    }
    return report_uri


def _log_finished(
    report: ErasureReport,
    found: Erasures,
    features: dict[str, int],
    errors: dict[str, int],
    report_uri: str,
) -> None:
    """The run's counts logged (never a path of a photo: logs outlive an erasure)."""
    log(
        "erase_finished",
        run_id=report.run_id,
        photos=found.uris,
        tombstones=report.tombstones_total,
        features_removed=report.rows_removed[FEATURES_TABLE],
        errors_removed=report.rows_removed[ERRORS_TABLE],
        partitions_rewritten=len(features) + len(errors),
        report=report_uri,
    )


def _raise_if_incomplete(
    report: ErasureReport, found: Erasures, source: str, report_uri: str
) -> None:
    """A run that left partitions for later or could not apply lines fails (exit 1), naming
    its report, though all it could erase is erased."""
    if report.deferred:
        raise ErasureIncomplete(
            f"{len(report.deferred)} partition(s) were being compacted and are left for the "
            f"next erase run (the tombstones are written; the watcher retries this one); "
            f"see {report_uri}"
        )
    if found.problems:
        raise ErasureIncomplete(
            f"{len(found.problems)} line(s) of {source} could not be applied "
            f"(the others were); see {report_uri}"
        )
