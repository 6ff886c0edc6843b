"""What an output holds, per run and per PCA version: ``python -m fruits_readers.inventory``.

Reads only the small columns (``path``, ``pca_model``, ``featurized_at``, the ``run_id``
partition, or ``origin_run_id`` in a merged one) of the ``features`` and ``errors`` tables,
the ``erasures`` tombstones and the PCA versions' metadata, with pyarrow (a local folder, or
``s3://`` where pyarrow's S3 file system reaches), and prints a line per run and per PCA
version, marking the current version and how many photos ``current_features`` returns, by
the same rule (``current.py``).
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from emr_serverless_job.compact_plan import (
    ORIGIN_RUN_COLUMN,
    PARTITION_KEY,
    hidden_sources,
    is_journal,
)
from emr_serverless_job.erase import ERASED_AT_COLUMN
from emr_serverless_job.reduce import (
    METADATA_FILE,
    PROJECTION_FILE,
    ReductionInfo,
    key_of,
    record_key,
    same_features,
)
from fruits_contract import (
    ERASURES_TABLE,
    ERRORS_TABLE,
    FEATURES_TABLE,
    FEATURIZED_AT_COLUMN,
    PATH_COLUMN,
    PCA_MODEL_COLUMN,
    PCA_MODEL_FOLDER,
    PCA_POINTER_FILE,
    PCA_VERSIONS_FOLDER,
    REPORTS_FOLDER,
    report_path,
)
from fruits_contract import cli as convention
from fruits_ops.reconcile import table_files

TIMESTAMP = pa.timestamp("us")  # Spark writes INT96: nanoseconds, no zone, whole microseconds


@dataclass(frozen=True)
class Version:
    info: ReductionInfo
    rows: int  # feature rows this version projected
    photos: int  # distinct paths among them


@dataclass(frozen=True)
class Inventory:
    runs: dict[str, tuple[int, int, str]]  # run id -> (feature rows, error rows, pca model)
    versions: dict[str, Version]  # every saved version, oldest first
    unversioned: int  # feature rows no readable version projected (none yet, or pruned)
    current: str | None
    photos: int  # distinct paths with a feature row, any version
    in_view: int  # photos current_features returns
    erased: int  # photos whose newest projectable row a tombstone hides


def _table(filesystem: pafs.FileSystem, path: str, columns: dict[str, pa.DataType]) -> pa.Table:
    """Only ``columns`` of a table's Parquet files (``reconcile.table_files``), with null where
    a file was written before a column existed: the schema is given, not read from the first
    file, whose columns may be fewer than a later one's."""
    schema = pa.schema(
        [*columns.items(), (ORIGIN_RUN_COLUMN, pa.string()), (PARTITION_KEY, pa.string())]
    )
    files = table_files(filesystem, path)
    if not files:
        return _readable(filesystem, path, schema.empty_table())
    dataset = ds.dataset(
        files,
        schema=schema,
        filesystem=filesystem,
        format="parquet",
        partitioning="hive",
        partition_base_dir=path,
    )
    return _readable(filesystem, path, dataset.to_table(columns=schema.names))


def _readable(filesystem: pafs.FileSystem, path: str, table: pa.Table) -> pa.Table:
    """As ``compact.readable`` takes a table: a merge's sources skipped once its file is live,
    and each row's ``run_id`` the run that wrote it (``origin_run_id`` in a merged partition)."""
    journals = []
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        journals = [
            _read_json(filesystem, entry.path)
            for entry in filesystem.get_file_info(pafs.FileSelector(path))
            if entry.type == pafs.FileType.File and is_journal(entry.base_name)
        ]
    skip = hidden_sources(
        [j for j in journals if j],
        lambda folder, file: (
            filesystem.get_file_info(f"{path}/{folder}/{file}").type == pafs.FileType.File
        ),
    )
    if skip:
        table = table.filter(pc.invert(pc.is_in(table[PARTITION_KEY], pa.array(sorted(skip)))))
    run = pc.coalesce(table[ORIGIN_RUN_COLUMN], table[PARTITION_KEY])
    table = table.drop_columns([ORIGIN_RUN_COLUMN])
    return table.set_column(table.schema.get_field_index(PARTITION_KEY), PARTITION_KEY, run)


def _values(table: pa.Table, column: str) -> list:
    return table.column(column).to_pylist()


@dataclass
class _Tally:
    """What the features table's rows say, per run and per PCA version, in one pass."""

    model_of: dict[str, str]
    rows_of: Counter[str]
    photos_of: dict[str, set[str]]
    newest: dict[str, tuple]  # path: the sort key of its newest row in the current view


def _projectable(infos: dict[str, ReductionInfo], current: str | None) -> set[str]:
    """The versions whose features the current version's can stand for (same features)."""
    return {
        name
        for name, info in infos.items()
        if current in infos and same_features(info, infos[current])
    }


def _tally(features: pa.Table, projectable: set[str], unversioned_runs: frozenset[str]) -> _Tally:
    """Each run's model, rows and photos per version, and each photo's newest row in view."""
    tally = _Tally(model_of={}, rows_of=Counter(), photos_of=defaultdict(set), newest={})
    newest = tally.newest
    for run_id, model, path, at in zip(
        _values(features, "run_id"),
        _values(features, PCA_MODEL_COLUMN),
        _values(features, PATH_COLUMN),
        _values(features, FEATURIZED_AT_COLUMN),
        strict=True,
    ):
        tally.model_of[run_id] = model or "(none)"
        tally.rows_of[model or ""] += 1
        tally.photos_of[model or ""].add(path)
        if model in projectable or (model is None and run_id in unversioned_runs):
            key = (at is not None, at or datetime.min, run_id)
            if path not in newest or key > newest[path]:
                newest[path] = key
    return tally


def _erased(newest: dict[str, tuple], erasures: dict[str, datetime]) -> int:
    """Photos in view whose tombstone is as new as their newest row (or that have no time)."""
    return sum(
        1
        for path, (has_time, at, _) in newest.items()
        if path in erasures and (not has_time or erasures[path] >= at)
    )


def take(
    features: pa.Table,
    errors: pa.Table,
    erasures: dict[str, datetime],
    infos: dict[str, ReductionInfo],
    current: str | None,
    unversioned_runs: frozenset[str] = frozenset(),
) -> Inventory:
    """Counts from the tables' small columns, the tombstones and the versions (pure), by
    ``current_features``' rule; ``unversioned_runs`` are the runs without a PCA model whose
    reports name the current version's features."""
    runs_rows = Counter(_values(features, "run_id"))
    error_rows = Counter(_values(errors, "run_id"))
    tally = _tally(features, _projectable(infos, current), unversioned_runs)
    erased = _erased(tally.newest, erasures)
    runs = {
        run: (runs_rows.get(run, 0), error_rows.get(run, 0), tally.model_of.get(run, "-"))
        for run in sorted(set(runs_rows) | set(error_rows))
    }
    versions = {
        name: Version(info, tally.rows_of[name], len(tally.photos_of[name]))
        for name, info in infos.items()
    }
    return Inventory(
        runs=runs,
        versions=versions,
        unversioned=sum(rows for name, rows in tally.rows_of.items() if name not in infos),
        current=current,
        photos=len(set(_values(features, PATH_COLUMN))),
        in_view=len(tally.newest) - erased,
        erased=erased,
    )


def _read_json(filesystem: pafs.FileSystem, path: str) -> dict | None:
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read())


def read_versions(
    filesystem: pafs.FileSystem, root: str
) -> tuple[dict[str, ReductionInfo], str | None]:
    """Every saved version's metadata (a model saved before versions, named by its run, too)
    and the id the pointer names."""
    model = f"{root}/{PCA_MODEL_FOLDER}"
    infos: dict[str, ReductionInfo] = {}
    legacy = _read_json(filesystem, f"{model}/{METADATA_FILE}")
    if legacy is not None:
        infos[legacy["fitted_by_run"]] = ReductionInfo(**legacy)
    folder = f"{model}/{PCA_VERSIONS_FOLDER}"
    if filesystem.get_file_info(folder).type == pafs.FileType.Directory:
        for entry in sorted(
            filesystem.get_file_info(pafs.FileSelector(folder)), key=lambda e: e.base_name
        ):
            metadata = _read_json(filesystem, f"{entry.path}/{METADATA_FILE}")
            projection = filesystem.get_file_info(f"{entry.path}/{PROJECTION_FILE}")
            if metadata is not None and projection.type == pafs.FileType.File:
                infos[entry.base_name] = ReductionInfo(**metadata)
    pointer = _read_json(filesystem, f"{model}/{PCA_POINTER_FILE}")
    current = pointer["version"] if pointer else (legacy["fitted_by_run"] if legacy else None)
    return infos, current


def read_erasures(filesystem: pafs.FileSystem, root: str) -> dict[str, datetime]:
    """Each erased path's latest erasure time."""
    table = _table(
        filesystem,
        f"{root}/{ERASURES_TABLE}",
        {PATH_COLUMN: pa.string(), ERASED_AT_COLUMN: TIMESTAMP},
    )
    latest: dict[str, datetime] = {}
    for path, at in zip(_values(table, PATH_COLUMN), _values(table, ERASED_AT_COLUMN), strict=True):
        if path not in latest or at > latest[path]:
            latest[path] = at
    return latest


# What a job output holds; a location with none of them is a mistyped path, not an empty output.
OUTPUT_FOLDERS = (FEATURES_TABLE, ERRORS_TABLE, REPORTS_FOLDER, PCA_MODEL_FOLDER)


class NotAnOutputError(ValueError):
    """The location is no job output; the message names it and what was looked for."""


def check_output(filesystem: pafs.FileSystem, root: str, output: str) -> None:
    """Refuse a location that holds none of a job output's folders: an inventory of a typo
    would print zeros, which read as "nothing featurized" rather than "wrong path"."""
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        raise NotAnOutputError(
            f"OUTPUT {output}: nothing there (a mistyped path, or no run has written there yet)"
        )
    found = filesystem.get_file_info([f"{root}/{name}" for name in OUTPUT_FOLDERS])
    if all(info.type != pafs.FileType.Directory for info in found):
        raise NotAnOutputError(
            f"OUTPUT {output}: not a job output (none of {', '.join(OUTPUT_FOLDERS)} in it)"
        )


def read(output: str) -> Inventory:
    """One output's inventory, by pyarrow alone (no Spark). A location with no job output raises
    NotAnOutputError, so a mistyped path is not reported as an empty output."""
    filesystem, root = pafs.FileSystem.from_uri(output)
    root = root.rstrip("/")
    check_output(filesystem, root, output)
    features = _table(
        filesystem,
        f"{root}/{FEATURES_TABLE}",
        {PATH_COLUMN: pa.string(), PCA_MODEL_COLUMN: pa.string(), FEATURIZED_AT_COLUMN: TIMESTAMP},
    )
    errors = _table(filesystem, f"{root}/{ERRORS_TABLE}", {PATH_COLUMN: pa.string()})
    infos, current = read_versions(filesystem, root)
    runs = set()
    if current in infos:
        wanted = key_of(infos[current])
        for run_id in set(
            pc.filter(features["run_id"], pc.is_null(features[PCA_MODEL_COLUMN])).to_pylist()
        ):
            report = f"{root}/{report_path(run_id)}"
            if record_key((_read_json(filesystem, report) or {}).get("featurizer")) == wanted:
                runs.add(run_id)
    erasures = read_erasures(filesystem, root)
    return take(features, errors, erasures, infos, current, frozenset(runs))


def lines(inventory: Inventory) -> list[str]:
    """The inventory as printed: a line per run, a line per PCA version (the current one
    marked), and a last line with how many photos ``current_features`` would return."""
    out = [f"{'run':<28} {'features':>9} {'errors':>7}  pca model"]
    for run, (rows, errors, model) in inventory.runs.items():
        out.append(f"{run:<28} {rows:>9} {errors:>7}  {model}")
    out.append("")
    out.append(f"{'pca model version':<28} {'rows':>9} {'photos':>7}  {'k':>4}  fitted by")
    for name, version in inventory.versions.items():
        mark = "  <- current" if name == inventory.current else ""
        info = version.info
        out.append(
            f"{name:<28} {version.rows:>9} {version.photos:>7}  {info.k:>4}  "
            f"{info.fitted_by_run} ({info.image_size} px, {info.precision}){mark}"
        )
    if inventory.unversioned:
        out.append(f"{'(no readable version)':<28} {inventory.unversioned:>9}")
    out.append("")
    erased = f", {inventory.erased} more hidden as erased" if inventory.erased else ""
    out.append(
        f"{inventory.photos} photos have feature rows; {inventory.in_view} in the current view "
        f"({inventory.current or 'no model saved yet'}){erased}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = convention.parser(
        "python -m fruits_readers.inventory",
        __doc__.splitlines()[0],
        None,
    )
    parser.add_argument(
        "output",
        metavar="OUTPUT",
        help="the output location (the job's --output): a folder or s3://BUCKET/output",
    )
    args = parser.parse_args(argv)
    try:
        inventory = read(args.output)
    except NotAnOutputError as error:
        return convention.refuse(str(error))
    print("\n".join(lines(inventory)))
    return convention.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
