"""A compaction run (``--compact MIN_AGE_DAYS [--dry-run]``): few files, whatever the months.

Lists ``features/`` and ``errors/`` (one recursive listing each), plans the merges
(``compact_plan.plan``: old ``batch-`` partitions, packed oldest first into partitions of one
file of at most ``job.TARGET_FILE_BYTES``) and carries each out so that no reader ever misses
a row:

1. the sources' rows are written, unchanged and with their run in ``origin_run_id``, to a
   hidden staging folder as one file, in the sources' written schema;
2. the staged file is read back and its rows per run compared with the sources'; a mismatch
   stops the run (exit 1) with nothing visible changed;
3. the sources are listed again: one that changed since the plan (a rerun, an erase run) is
   left alone this time, its staging dropped;
4. a hidden journal names the merged file and every source file; then the file is moved into
   ``run_id=compacted-<16 hex>/``, from which moment readers skip the sources it names
   (``compact_plan.hidden_sources``); then the sources' files are deleted, then the journal.

A run cut short before step 4's move changed nothing readers see and its staging is dropped by
the next run; one cut short after it left duplicates that readers skip, and the next
compaction (or erase) run finishes it (``recover``). ``--dry-run`` writes nothing at all, not
even a report: the plan is printed (the driver's stdout on EMR) and logged.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from emr_serverless_job import hadoopfs
from emr_serverless_job.compact_plan import (
    LIVE_JOURNAL_HOURS,
    MODE,
    ORIGIN_RUN_COLUMN,
    PARTITION_KEY,
    STAGING_PREFIX,
    Merge,
    Partition,
    Plan,
    hidden_sources,
    is_journal,
    is_live_journal,
    journal_body,
    journal_name,
    partitions_of,
    plan,
    staging_name,
)
from emr_serverless_job.config import JobConfig
from emr_serverless_job.erase import TYPE_INFERENCE, conform, written_schema
from emr_serverless_job.job import TARGET_FILE_BYTES
from fruits_contract import (
    COMPACT_RUN_PREFIX,
    ERRORS_TABLE,
    FEATURES_TABLE,
    REPORTS_FOLDER,
    iso_utc,
    report_path,
)
from fruits_contract.logs import log

TABLES = (FEATURES_TABLE, ERRORS_TABLE)
PARQUET_SUFFIX = ".parquet"


class CompactionMismatch(RuntimeError):
    """A staged merge does not hold exactly its sources' rows: nothing was published."""


class CompactionBusy(RuntimeError):
    """Another compaction may be publishing under the same table: this one changed nothing."""


@dataclass
class CompactionReport:
    """The JSON record of a compaction run (``reports/run_id=<id>/report.json``)."""

    run_id: str
    output: str
    started_at: str
    min_age_days: float
    cutoff: str
    target_bytes: int
    dry_run: bool
    mode: str = MODE
    finished_at: str = ""
    tables: dict[str, dict[str, object]] = field(default_factory=dict)
    merges: list[dict[str, object]] = field(default_factory=list)
    recovered: int = 0  # merges a crashed run left half done, finished first
    changed: list[str] = field(default_factory=list)  # sources that changed under the run
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def summary(self) -> str:
        """The run's end in a few lines, as ``main`` prints it (the driver's stdout on EMR): a dry
        run's only output besides the log, since it writes no report."""
        verb = "would merge" if self.dry_run else "merged"
        lines = [
            f"run {self.run_id} ({self.mode}{', dry run' if self.dry_run else ''}) of "
            f"{self.output}: batches older than {self.cutoff}, files up to {self.target_bytes} "
            "bytes"
        ]
        for table, t in self.tables.items():
            lines.append(
                f"  {table}: partitions {t['partitions']} -> {t['partitions_after']}, "
                f"files {t['files']} -> {t['files_after']}, bytes {t['bytes']}, "
                f"{verb} {t['merged_rows']} rows of {t['merged_partitions']} partitions"
            )
            lines += [f"    left alone: {n} {why}" for why, n in sorted(t["skipped"].items())]
        lines += [
            f"  {m['table']}/run_id={m['target']}: {m['partitions']} partitions, {m['files']} "
            f"files, {m['bytes']} bytes, {m['rows']} rows -> 1 file"
            for m in self.merges
        ]
        if self.recovered:
            lines.append(f"  finished {self.recovered} merge(s) a crashed run left")
        lines += [f"  CHANGED while planning, left for the next run: {c}" for c in self.changed]
        return "\n".join(lines)


# --- the file system ------------------------------------------------------------------------


def _fs(spark: SparkSession, uri: str) -> tuple[object, object]:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def _listing(spark: SparkSession, table: str) -> dict[str, list[tuple[str, int, datetime]]]:
    """Data files per ``run_id`` value directly under the table (name, length, modified), from
    one recursive listing (paged on S3); hidden folders and files are not the table's."""
    path, fs = _fs(spark, table)
    if not fs.exists(path):
        return {}
    root = str(fs.makeQualified(path).toString()).rstrip("/")
    found: dict[str, list[tuple[str, int, datetime]]] = {}
    files = fs.listFiles(path, True)
    while files.hasNext():
        status = files.next()
        relative = str(status.getPath().toString())[len(root) + 1 :].split("/")
        if len(relative) != 2 or any(part.startswith(("_", ".")) for part in relative):
            continue
        folder, name = relative
        if not folder.startswith(f"{PARTITION_KEY}=") or not name.endswith(PARQUET_SUFFIX):
            continue
        modified = datetime.fromtimestamp(status.getModificationTime() / 1000, UTC)
        found.setdefault(folder.split("=", 1)[1], []).append((name, int(status.getLen()), modified))
    return found


def layout_of(schema: T.StructType | None) -> str:
    """Column names and types as written, nullability aside, without ``origin_run_id``."""
    kept = [f for f in (schema.fields if schema else []) if f.name != ORIGIN_RUN_COLUMN]
    return json.dumps([[f.name, f.dataType.simpleString()] for f in kept])


def _loosest(kind: T.DataType, other: T.DataType) -> T.DataType:
    if isinstance(kind, T.ArrayType) and isinstance(other, T.ArrayType):
        element = _loosest(kind.elementType, other.elementType)
        return T.ArrayType(element, kind.containsNull or other.containsNull)
    return kind


def loosest(schemas: list[T.StructType]) -> T.StructType:
    """One schema of equal layouts: a column (or array element) is nullable if it is in any,
    so that no source's value is refused and none is made up (``erase.conform``)."""
    fields = []
    for spec in schemas[0].fields:
        kind, nullable = spec.dataType, spec.nullable
        for schema in schemas[1:]:
            other = schema[spec.name]
            kind, nullable = _loosest(kind, other.dataType), nullable or other.nullable
        fields.append(T.StructField(spec.name, kind, nullable))
    return T.StructType(fields)


def survey(spark: SparkSession, output: str, table: str) -> list[Partition]:
    """Every partition of a table with its files, size, age, report and written schema."""
    uri = f"{output}/{table}"
    listed = _listing(spark, uri)
    reports = {
        path.rstrip("/").rsplit("=", 1)[1]
        for path, is_folder in hadoopfs.children_matching(
            spark, f"{output}/{REPORTS_FOLDER}", f"{PARTITION_KEY}=*"
        )
        if is_folder
    }
    names = sorted(listed)
    schemas = hadoopfs.map_files(
        spark, [f"{uri}/{PARTITION_KEY}={n}" for n in names], written_schema
    )
    return [
        Partition(
            run_id=name,
            files=tuple(sorted(f[0] for f in listed[name])),
            bytes=sum(f[1] for f in listed[name]),
            newest=max(f[2] for f in listed[name]),
            has_report=name in reports,
            layout=layout_of(schema),
        )
        for name, schema in zip(names, schemas, strict=True)
    ]


def read_journals(spark: SparkSession, table: str) -> list[dict]:
    """The journals of merges in progress under a table (hidden files beside its partitions)."""
    return [
        json.loads(hadoopfs.read_bytes(spark, path))
        for path, is_folder in hadoopfs.children_matching(spark, table, f"{STAGING_PREFIX}*")
        if not is_folder and is_journal(path.rsplit("/", 1)[1])
    ]


def hidden(spark: SparkSession, table: str) -> set[str]:
    """Partitions (``run_id`` values) readers skip: sources of a merge whose file is live."""
    return hidden_sources(
        read_journals(spark, table),
        lambda folder, file: hadoopfs.exists(spark, f"{table}/{folder}/{file}"),
    )


def readable(spark: SparkSession, table: str, rows: DataFrame) -> DataFrame:
    """A table's rows as readers take them: without the sources of a merge being finished,
    and with each row's ``run_id`` the run that wrote it (``origin_run_id`` in a merged
    partition); the folder's value otherwise."""
    skip = sorted(hidden(spark, table))
    if skip:
        rows = rows.filter(~F.col(PARTITION_KEY).isin(skip))
    if ORIGIN_RUN_COLUMN in rows.columns:
        run = F.coalesce(F.col(ORIGIN_RUN_COLUMN), F.col(PARTITION_KEY))
        rows = rows.withColumn(PARTITION_KEY, run).drop(ORIGIN_RUN_COLUMN)
    return rows


# --- one merge ------------------------------------------------------------------------------


def _sources(spark: SparkSession, table: str, merge: Merge) -> DataFrame:
    """The sources' rows with their run as ``origin_run_id`` (kept from a merged source)."""
    frame = (
        spark.read.option("mergeSchema", "true")
        .option("basePath", table)
        .parquet(*(f"{table}/{p.folder}" for p in merge.sources))
    )
    origin = F.col(PARTITION_KEY)
    if ORIGIN_RUN_COLUMN in frame.columns:
        origin = F.coalesce(F.col(ORIGIN_RUN_COLUMN), origin)
    return frame.withColumn(ORIGIN_RUN_COLUMN, origin)


def _rows_per_run(frame: DataFrame) -> dict[str, int]:
    counted = frame.groupBy(ORIGIN_RUN_COLUMN).count().collect()
    return {str(row[ORIGIN_RUN_COLUMN]): int(row["count"]) for row in counted}


def _merged_schema(spark: SparkSession, table: str, merge: Merge) -> T.StructType | None:
    """The sources' written schema (their loosest nullability) and a non-null
    ``origin_run_id``: other partitions' schema, and the contract, stay as they are."""
    folders = [f"{table}/{p.folder}" for p in merge.sources]
    schemas = [s for s in hadoopfs.map_files(spark, folders, written_schema) if s is not None]
    if len(schemas) != len(folders):
        return None
    data = [T.StructType([f for f in s.fields if f.name != ORIGIN_RUN_COLUMN]) for s in schemas]
    origin = T.StructField(ORIGIN_RUN_COLUMN, T.StringType(), False)
    return T.StructType([*loosest(data).fields, origin])


def _data_files(spark: SparkSession, folder: str) -> list[str]:
    return sorted(
        name
        for name in (p.rsplit("/", 1)[1] for p in hadoopfs.files_in(spark, folder))
        if name.endswith(PARQUET_SUFFIX) and not name.startswith((".", "_"))
    )


def stage(spark: SparkSession, table: str, merge: Merge) -> tuple[str, int]:
    """Write the merge's one file to its hidden staging folder and check it holds exactly the
    sources' rows, per run; returns (file name, rows)."""
    staging = f"{table}/{staging_name(merge.target)}"
    sources = _sources(spark, table, merge)
    expected = _rows_per_run(sources)
    schema = _merged_schema(spark, table, merge)
    columns = [f.name for f in schema.fields] if schema else sources.columns
    merged = conform(sources.select(*[c for c in columns if c != PARTITION_KEY]), schema)
    merged.coalesce(1).write.mode("overwrite").parquet(staging)
    files = _data_files(spark, staging)
    staged = _rows_per_run(spark.read.parquet(staging))
    if len(files) != 1 or staged != expected:
        hadoopfs.delete(spark, staging)
        raise CompactionMismatch(
            f"{table}/run_id={merge.target}: staged {len(files)} file(s) holding {staged} rows "
            f"per run, the sources hold {expected}; nothing was published"
        )
    return files[0], sum(expected.values())


def _unchanged(spark: SparkSession, table: str, merge: Merge) -> list[str]:
    """Sources whose files are no longer those planned (a run or an erase rewrote them)."""
    return [
        p.folder
        for p in merge.sources
        if tuple(_data_files(spark, f"{table}/{p.folder}")) != p.files
    ]


def _move(spark: SparkSession, source: str, target: str) -> None:
    """Move one file into a folder (made if needed); one already moved is fine."""
    src, fs = _fs(spark, source)
    dst, _ = _fs(spark, target)
    fs.mkdirs(dst.getParent())
    if not fs.rename(src, dst) and not (fs.exists(dst) and not fs.exists(src)):
        raise OSError(f"could not move {source} to {target}")


def publish(spark: SparkSession, table: str, journal: dict) -> None:
    """Put the merged file live, then delete the sources' files it replaces, then the journal
    and staging: every step can be repeated, so ``recover`` finishes what a crash cut."""
    target = f"{table}/{PARTITION_KEY}={journal['target']}"
    staging = f"{table}/{staging_name(journal['target'])}"
    live = f"{target}/{journal['file']}"
    if not hadoopfs.exists(spark, live):
        _move(spark, f"{staging}/{journal['file']}", live)
    remove_sources(spark, table, journal)
    hadoopfs.delete(spark, staging)
    hadoopfs.delete(spark, f"{table}/{journal_name(journal['target'])}")


def remove_sources(spark: SparkSession, table: str, journal: dict) -> None:
    """Delete the source files the journal names, and a source folder left without data."""
    for folder, files in journal["sources"].items():
        for name in files:
            hadoopfs.delete(spark, f"{table}/{folder}/{name}")
        if not _data_files(spark, f"{table}/{folder}"):
            hadoopfs.delete(spark, f"{table}/{folder}")


def recover(
    spark: SparkSession,
    table: str,
    now: datetime,
    own_run: str | None = None,
    drop_orphans: bool = True,
) -> tuple[int, set[str]]:
    """Finish every merge whose file a crashed run had put live; undo those it had not (their
    sources are still what readers read). Returns the merges finished and the partitions of
    the journals left alone because they may be a live run's (``is_live_journal``): finishing
    or undoing those would race the run that is publishing them. Staging without a journal is
    dropped only when no merge may be live, and only by a compaction (``drop_orphans``): a live
    one may be staging its file."""
    finished, busy = 0, set()
    journals = {journal_name(j["target"]): j for j in read_journals(spark, table)}
    for name, journal in journals.items():
        if is_live_journal(journal, now, own_run):
            busy |= partitions_of(journal)
            continue
        live = f"{table}/{PARTITION_KEY}={journal['target']}/{journal['file']}"
        if hadoopfs.exists(spark, live):
            publish(spark, table, journal)
            finished += 1
        else:
            hadoopfs.delete(spark, f"{table}/{staging_name(journal['target'])}")
            hadoopfs.delete(spark, f"{table}/{name}")
    if drop_orphans and not busy:
        for path, is_folder in hadoopfs.children_matching(spark, table, f"{STAGING_PREFIX}*"):
            if is_folder and f"{path.rsplit('/', 1)[1]}.json" not in journals:
                hadoopfs.delete(spark, path)
    return finished, busy


def erasing(spark: SparkSession, table: str) -> set[str]:
    """Partitions an erase run is rewriting: those its journals name (``erase.Swap``)."""
    from emr_serverless_job import erase  # erase imports this module's helpers at its top

    return erase.partitions_being_rewritten(spark, table)


def carry_out(
    spark: SparkSession, table: str, merge: Merge, now: datetime, run_id: str
) -> tuple[int, list[str]]:
    """One merge: stage and verify, journal, check, publish. Returns (rows merged, sources that
    changed under the run or that an erase is rewriting, in which case nothing was published).

    The journal is written *before* the check, and an erase writes its own journal before it
    checks for this one (``erase.replace_partition``): of two runs that touch one partition at
    once, at least one sees the other's journal and steps back, so a merge never publishes
    rows an erase has just removed (S3 lists what was written, strongly consistent)."""
    staged, rows = stage(spark, table, merge)
    body = journal_body(merge, staged, rows, now, run_id)
    journal = f"{table}/{journal_name(merge.target)}"
    hadoopfs.write_bytes(spark, journal, body)
    busy = erasing(spark, table)
    changed = _unchanged(spark, table, merge) + sorted(
        p.folder for p in merge.sources if p.folder in busy
    )
    if changed or f"{PARTITION_KEY}={merge.target}" in busy:
        hadoopfs.delete(spark, journal)
        hadoopfs.delete(spark, f"{table}/{staging_name(merge.target)}")
        return 0, sorted(set(changed)) or [f"{PARTITION_KEY}={merge.target}"]
    publish(spark, table, json.loads(body))
    return rows, []


# --- the run --------------------------------------------------------------------------------


def _now() -> datetime:
    """Now, zone-aware in UTC: the cutoff made from it is compared with the files' modification
    times (aware, from ``_listing``), which a naive time cannot be."""
    return datetime.now(UTC)


def default_run_id(now: datetime) -> str:
    """A compaction started without --run-id (by hand): its UTC time."""
    return f"{COMPACT_RUN_PREFIX}{now.astimezone(UTC):%Y%m%dt%H%M%S}z"


def _count(spark: SparkSession, table: str, merge: Merge) -> int:
    return _sources(spark, table, merge).count()


def run(config: JobConfig, spark: SparkSession) -> CompactionReport:
    """One compaction run on an existing session; returns its report (written unless a dry
    run). Logs carry counts and run ids, never a photo's path."""
    started = time.perf_counter()
    now = _now()
    min_age = config.compact or 0.0
    cutoff = now - timedelta(days=min_age)
    report = _new_report(config, now, min_age, cutoff)
    log("compact_started", run_id=report.run_id, cutoff=report.cutoff, dry_run=config.dry_run)
    inference = spark.conf.get(TYPE_INFERENCE)
    spark.conf.set(TYPE_INFERENCE, "false")  # run ids are names ("007" is not 7)
    try:
        for table in TABLES:
            _compact_table(spark, config, table, now, cutoff, report)
        report.timings_s["total"] = round(time.perf_counter() - started, 3)
    finally:
        spark.conf.set(TYPE_INFERENCE, inference)
    _close(spark, config, report)
    return report


def _new_report(
    config: JobConfig, now: datetime, min_age: float, cutoff: datetime
) -> CompactionReport:
    """The report as the run starts: its id (a default one when run by hand) and its cutoff."""
    return CompactionReport(
        run_id=config.run_id or default_run_id(now),
        output=config.output,
        started_at=iso_utc(now),
        min_age_days=min_age,
        cutoff=iso_utc(cutoff),
        target_bytes=TARGET_FILE_BYTES,
        dry_run=config.dry_run,
    )


def _compact_table(
    spark: SparkSession,
    config: JobConfig,
    table: str,
    now: datetime,
    cutoff: datetime,
    report: CompactionReport,
) -> None:
    """One table: finish what a cut-short run left (not in a dry run), then plan and merge."""
    if not config.dry_run:
        _recover_table(spark, f"{config.output}/{table}", now, report)
    planned = plan(table, survey(spark, config.output, table), cutoff, TARGET_FILE_BYTES)
    merged_rows, done = 0, []
    for merge in planned.merges:
        rows = _apply_merge(spark, config, table, merge, now, report)
        if rows is not None:
            merged_rows += rows
            done.append(merge)
    report.tables[table] = _table_record(replace(planned, merges=tuple(done)), merged_rows)


def _recover_table(spark: SparkSession, uri: str, now: datetime, report: CompactionReport) -> None:
    """Finish a crashed run's journals first, but step back from one that may still be live."""
    finished, busy = recover(spark, uri, now, report.run_id)
    if busy:
        raise CompactionBusy(
            f"{uri}: another compaction run may still be publishing a merge (its "
            f"journal is younger than {LIVE_JOURNAL_HOURS} h): nothing was changed. "
            "Run one compaction at a time; a crashed run's journal is finished by "
            "its resubmission (same run id) or by any run a day later"
        )
    report.recovered += finished


def _apply_merge(
    spark: SparkSession,
    config: JobConfig,
    table: str,
    merge: Merge,
    now: datetime,
    report: CompactionReport,
) -> int | None:
    """One planned merge carried out (a dry run: counted), recorded and logged; its rows, or
    None when a source changed under it and it was left alone."""
    uri = f"{config.output}/{table}"
    if config.dry_run:
        rows, changed = _count(spark, uri, merge), []
    else:
        rows, changed = carry_out(spark, uri, merge, now, report.run_id)
    report.changed += [f"{table}/{c}" for c in changed]
    if not changed:
        report.merges.append(_merge_record(merge, rows))
    log(
        "compact_merge",
        run_id=report.run_id,
        table=table,
        target=merge.target,
        partitions=len(merge.sources),
        files=merge.files,
        bytes=merge.bytes,
        rows=rows,
        published=not config.dry_run and not changed,
    )
    return None if changed else rows


def _close(spark: SparkSession, config: JobConfig, report: CompactionReport) -> None:
    """The run's end: its report written (not in a dry run) and its totals logged."""
    report.finished_at = iso_utc(_now())
    if not config.dry_run:
        uri = f"{config.output}/{report_path(report.run_id)}"
        hadoopfs.write_bytes(spark, uri, report.to_json().encode())
    log(
        "compact_finished",
        run_id=report.run_id,
        dry_run=config.dry_run,
        merges=len(report.merges),
        recovered=report.recovered,
        **{f"{t}_files_after": r["files_after"] for t, r in report.tables.items()},
    )


def _merge_record(merge: Merge, rows: int) -> dict[str, object]:
    """A published merge as the report lists it; ``sources`` names the runs it folded in, which
    the merged partition's own name (``compacted-<16 hex>``) does not say."""
    return {
        "table": merge.table,
        "target": merge.target,
        "partitions": len(merge.sources),
        "files": merge.files,
        "bytes": merge.bytes,
        "rows": rows,
        "sources": [p.run_id for p in merge.sources],
    }


def _table_record(planned: Plan, merged_rows: int) -> dict[str, object]:
    """Before and after of the merges carried out (a dry run: of every merge planned)."""
    return {
        "partitions": planned.partitions,
        "files": planned.files,
        "bytes": planned.bytes,
        "partitions_after": planned.partitions_after,
        "files_after": planned.files_after,
        "merged_partitions": sum(len(m.sources) for m in planned.merges),
        "merged_rows": merged_rows,
        "skipped": planned.skipped,
    }
