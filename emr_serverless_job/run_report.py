"""The JSON record of one run, and the short summary a person reads at the end of it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: these features come from an untrained network and carry no meaning. "
    "Use them for tests and offline demos only."
)


@dataclass
class RunReport:
    run_id: str
    mode: str  # fruits_contract.BACKFILL_MODE or MANIFEST_MODE
    source: str
    output: str
    started_at: str
    finished_at: str = ""
    runtime: str = ""
    model: str | None = None  # the .onnx file (runtime onnx)
    model_sha256: str | None = None
    weights: str = ""
    weights_sha256: str | None = None
    random_weights: bool = False
    warnings: list[str] = field(default_factory=list)
    image_size: int = 0
    batch_size: int = 0
    inputs: int = 0
    features: int = 0
    errors: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates_skipped: int = 0
    images_featurized: int = 0  # rows through the model UDF: equals images read, exactly once
    models_built: int = 0  # model builds across Python workers: at most one per worker
    timings_s: dict[str, float] = field(default_factory=dict)
    images_per_second: float = 0.0
    pca: dict[str, object] = field(default_factory=dict)
    # What made the raw features (reduce.same_features' three): a run without a PCA model
    # wrote rows the current view can still project, once a model of the same features exists.
    featurizer: dict[str, object] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    spark: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def summary(self) -> str:
        """A few lines for the console: what happened and where to look."""
        pca = self.pca
        if pca.get("k"):
            reduction = (
                f"PCA: k={pca['k']} components keep {float(pca['explained_variance']):.1%} "
                f"of variance ({pca['status']})"
            )
        else:
            reduction = f"PCA: {pca.get('status', 'not applied')}"
        lines = [
            f"run {self.run_id} ({self.mode}) of {self.source}",
            f"  inputs {self.inputs}: {self.features} featurized, {self.errors} errors"
            + (
                f" ({self.duplicates_skipped} duplicate manifest entries skipped)"
                if self.duplicates_skipped
                else ""
            ),
            f"  model: MobileNetV2 {self.image_size}px on {self.runtime}, weights {self.weights}; "
            f"featurize {self.timings_s.get('featurize', 0.0):.1f}s "
            f"({self.images_per_second:.1f} images/s)",
            f"  {reduction}",
        ]
        for reason, count in sorted(self.errors_by_reason.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"  error x{count}: {reason}")
        lines += [f"  {name}: {uri}" for name, uri in self.tables.items()]
        lines += [f"  WARNING: {warning}" for warning in self.warnings]
        return "\n".join(lines)
