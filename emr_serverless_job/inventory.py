"""What an output holds, per run and per PCA space: ``python -m emr_serverless_job.inventory OUT``.

Reads only the small columns (``path``, ``pca_model``, the ``run_id`` partition) of the
``features`` and ``errors`` tables, with pyarrow (a local folder, or ``s3://`` where pyarrow's
S3 file system reaches), and prints a line per run and per PCA model, marking the current
model (the one saved under ``pca_model/``) and how many photos ``current_features`` returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from emr_serverless_job.config import PCA_MODEL_DIRNAME
from emr_serverless_job.reduce import METADATA_FILE, PCA_MODEL_COLUMN

FEATURES = "features"
ERRORS = "errors"


@dataclass(frozen=True)
class Inventory:
    runs: dict[str, tuple[int, int, str]]  # run id -> (feature rows, error rows, pca model)
    models: dict[str, tuple[int, int]]  # pca model -> (rows, distinct photos)
    current: str | None
    photos: int  # distinct paths with a feature row, any space


def _table(filesystem: pafs.FileSystem, path: str, columns: list[str]) -> pa.Table:
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return pa.table({name: pa.array([], pa.string()) for name in [*columns, "run_id"]})
    dataset = ds.dataset(path, filesystem=filesystem, format="parquet", partitioning="hive")
    wanted = [c for c in columns if c in dataset.schema.names]
    table = dataset.to_table(columns=[*wanted, "run_id"])
    for missing in set(columns) - set(wanted):  # rows written before the column existed
        table = table.append_column(missing, pa.nulls(len(table), pa.string()))
    return table


def take(features: pa.Table, errors: pa.Table, current: str | None) -> Inventory:
    """Counts from the two tables' small columns (pure)."""
    runs_rows = Counter(features.column("run_id").to_pylist())
    error_rows = Counter(errors.column("run_id").to_pylist())
    model_of: dict[str, str] = {}
    photos_of: dict[str, set[str]] = defaultdict(set)
    rows_of: Counter[str] = Counter()
    for run_id, model, path in zip(
        features.column("run_id").to_pylist(),
        features.column(PCA_MODEL_COLUMN).to_pylist(),
        features.column("path").to_pylist(),
        strict=True,
    ):
        name = model or "(none)"
        model_of[run_id] = name
        rows_of[name] += 1
        photos_of[name].add(path)
    runs = {
        run: (runs_rows.get(run, 0), error_rows.get(run, 0), model_of.get(run, "-"))
        for run in sorted(set(runs_rows) | set(error_rows))
    }
    models = {name: (rows_of[name], len(photos_of[name])) for name in sorted(rows_of)}
    photos = len(set(features.column("path").to_pylist()))
    return Inventory(runs=runs, models=models, current=current, photos=photos)


def read(output: str) -> Inventory:
    filesystem, root = pafs.FileSystem.from_uri(output)
    root = root.rstrip("/")
    features = _table(filesystem, f"{root}/{FEATURES}", ["path", PCA_MODEL_COLUMN])
    errors = _table(filesystem, f"{root}/{ERRORS}", ["path"])
    current = None
    metadata = f"{root}/{PCA_MODEL_DIRNAME}/{METADATA_FILE}"
    if filesystem.get_file_info(metadata).type == pafs.FileType.File:
        with filesystem.open_input_stream(metadata) as stream:
            current = json.loads(stream.read())["fitted_by_run"]
    return take(features, errors, current)


def lines(inventory: Inventory) -> list[str]:
    out = [f"{'run':<28} {'features':>9} {'errors':>7}  pca model"]
    for run, (rows, errors, model) in inventory.runs.items():
        out.append(f"{run:<28} {rows:>9} {errors:>7}  {model}")
    out.append("")
    out.append(f"{'pca model':<28} {'rows':>9} {'photos':>7}")
    for model, (rows, photos) in inventory.models.items():
        mark = "  <- current" if model == inventory.current else ""
        out.append(f"{model:<28} {rows:>9} {photos:>7}{mark}")
    current = inventory.models.get(inventory.current or "", (0, 0))[1]
    out.append("")
    out.append(
        f"{inventory.photos} photos have feature rows; {current} in the current PCA space "
        f"({inventory.current or 'no model saved yet'})"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the job's --output: a folder or s3://BUCKET/output")
    args = parser.parse_args(argv)
    print("\n".join(lines(read(args.output))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
