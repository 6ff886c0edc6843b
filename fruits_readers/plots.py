"""``python -m fruits_readers.plots OUTPUT``: a scree plot and a 2-D PCA scatter as PNGs.

Reads a local output folder written by the job (download an S3 output first, e.g.
``aws s3 sync``); needs no Spark, only pyarrow and matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fruits_contract import (
    FEATURES_TABLE,
    FEATURIZING_MODES,
    REPORT_FILE,
    REPORTS_FOLDER,
    RUN_ID_PARTITION,
)
from fruits_contract import cli as convention

SCREE_COMPONENTS = 50
SCREE_MARGIN = 10  # components drawn past k, to show what was left out
SCREE_FILE = "scree.png"
SCATTER_FILE = "pca_scatter.png"


class PlotError(ValueError):
    """The output folder does not hold what the plots need; the message says what."""


def find_report(output: Path, run_id: str | None) -> dict:
    """The run report of ``run_id``, or of the most recent run when none is given."""
    reports = sorted((output / REPORTS_FOLDER).glob(f"{RUN_ID_PARTITION}=*/{REPORT_FILE}"))
    if not reports:
        raise PlotError(
            f"no run reports under {output}/{REPORTS_FOLDER}: is this a job output folder?"
        )
    every = [json.loads(path.read_text()) for path in reports]
    loaded = [report for report in every if report.get("mode") in FEATURIZING_MODES]
    other = {report["run_id"]: report.get("mode") for report in every} if run_id else {}
    if run_id in other and other[run_id] not in FEATURIZING_MODES:
        raise PlotError(
            f"run {run_id!r} is a {other[run_id]} run: the plots draw a run that featurized "
            f"({' or '.join(FEATURIZING_MODES)})"
        )
    if not loaded:
        raise PlotError(f"no featurizing run's report under {output}/{REPORTS_FOLDER}")
    if run_id is None:
        # Parsed, not compared as text: reports written before the contract's one time format
        # say +00:00 where newer ones say Z.
        return max(loaded, key=lambda report: datetime.fromisoformat(report["finished_at"]))
    for report in loaded:
        if report["run_id"] == run_id:
            return report
    known = ", ".join(sorted(report["run_id"] for report in loaded))
    raise PlotError(f"no run {run_id!r} under {output}; runs: {known}")


def load_projection(output: Path, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(
        output / FEATURES_TABLE / f"{RUN_ID_PARTITION}={run_id}", columns=["label", "pca_features"]
    )
    projections = table.column("pca_features").to_pylist()
    if not projections or any(value is None for value in projections):
        raise PlotError(f"run {run_id} has no PCA features (no fitted model when it ran)")
    return np.array(projections, dtype=np.float64), np.array(table.column("label").to_pylist())


def plot_scree(report: dict, target: Path) -> None:
    """Drawn from the run report alone (``component_variance``): the kept components in a
    darker blue, and at least ``SCREE_MARGIN`` past k, to show what the chosen k left out."""
    import matplotlib.pyplot as plt

    k = int(report["pca"]["k"])
    kept = float(report["pca"]["explained_variance"])
    shown = max(SCREE_COMPONENTS, k + SCREE_MARGIN)
    spectrum = np.array(report["pca"]["component_variance"][:shown])
    positions = np.arange(1, len(spectrum) + 1)
    figure, axis = plt.subplots(figsize=(9, 4.8))
    axis.bar(positions, spectrum, color=["#2b7bba" if i <= k else "#b0c4de" for i in positions])
    axis.set_xlabel("principal component")
    axis.set_ylabel("share of variance")
    twin = axis.twinx()
    twin.plot(positions, np.cumsum(spectrum), color="#d95f02", marker=".", markersize=3)
    twin.set_ylabel("cumulative share")
    twin.set_ylim(0, 1.02)
    twin.axvline(k + 0.5, color="grey", linestyle="--")
    twin.axhline(kept, color="grey", linestyle=":")
    twin.annotate(
        f"k={k}: {kept:.1%}",
        (k + 0.5, kept),
        textcoords="offset points",
        xytext=(6, -14),
        color="grey",
    )
    axis.set_title(
        f"Scree plot, run {report['run_id']}\n"
        f"{report['image_size']} px, weights {Path(str(report['weights'])).name}",
        fontsize="medium",
    )
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)


def plot_scatter(report: dict, projections: np.ndarray, labels: np.ndarray, target: Path) -> None:
    """The run's rows on their first two components, a colour per label (its count in the
    legend; colours repeat past 20 labels); a run with k = 1 is drawn along PC 1 alone."""
    import matplotlib.pyplot as plt

    second = projections[:, 1] if projections.shape[1] > 1 else np.zeros(len(projections))
    figure, axis = plt.subplots(figsize=(7.5, 6))
    colours = plt.get_cmap("tab20")
    for index, label in enumerate(sorted(set(labels))):
        mask = labels == label
        axis.scatter(
            projections[mask, 0],
            second[mask],
            s=18,
            alpha=0.8,
            color=colours(index % 20),
            label=f"{label} ({mask.sum()})",
        )
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title(f"Run {report['run_id']}: first two principal components by label")
    axis.legend(fontsize="small", loc="best")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)


def write_plots(output: Path, run_id: str | None = None, target: Path | None = None) -> list[Path]:
    """Both PNGs of one featurizing run (default: the latest), beside its report unless
    ``target`` is given; PlotError when the run has no PCA. Uses the Agg backend: no display."""
    import matplotlib

    matplotlib.use("Agg")
    report = find_report(output, run_id)
    if not report["pca"].get("k"):
        raise PlotError(f"run {report['run_id']} has no PCA: {report['pca'].get('status')}")
    projections, labels = load_projection(output, report["run_id"])
    folder = target or output / REPORTS_FOLDER / f"{RUN_ID_PARTITION}={report['run_id']}"
    folder.mkdir(parents=True, exist_ok=True)
    scree, scatter = folder / SCREE_FILE, folder / SCATTER_FILE
    plot_scree(report, scree)
    plot_scatter(report, projections, labels, scatter)
    return [scree, scatter]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m fruits_readers.plots`` and of ``fruits-plots``."""
    parser = convention.parser(
        "python -m fruits_readers.plots",
        "Draw a scree plot and a 2-D PCA scatter (PNG) from a local job output "
        "(also installed as the console script fruits-plots).",
        None,
    )
    parser.add_argument(
        "output",
        metavar="OUTPUT",
        type=Path,
        help="the output location (the job's --output), a local folder",
    )
    parser.add_argument("--run-id", help="which run to draw (default: the latest)")
    plots = parser.add_argument(
        "--plots",
        type=Path,
        metavar="FOLDER",
        help="folder the PNGs are written to (default: OUTPUT/reports/run_id=RUN/)",
    )
    convention.deprecated_alias(parser, "--to", plots)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m fruits_readers.plots`` and the console script ``fruits-plots``."""
    args = build_parser().parse_args(argv)
    try:
        written = write_plots(args.output, args.run_id, args.plots)
    except PlotError as error:
        return convention.refuse(str(error))
    for path in written:
        print(path)
    return convention.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
