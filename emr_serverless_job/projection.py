"""The PCA projection as plain data: fitted from moments, applied with one NumPy product.

Centred only by default: standardizing every pooled channel first (``standard``, the seeds'
recipe) gives the noisiest of the 1280 channels as much weight as the most informative ones;
on held-out photos it needed 379 components for 95% of the variance and lost accuracy,
against 184 centred. No Spark here: the job applies it on the Python workers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from emr_serverless_job.moments import Moments
from fruits_contract import PCA_SCALINGS

DEFAULT_SCALING = "none"


@dataclass(frozen=True, eq=False)
class Projection:
    """x -> ((x - mean) * scale) @ components, as float32.

    ``scale`` is 1 everywhere for a centred PCA; for a standardized one it is 1/std, and 0
    for constant features (all zeros once standardized, as Spark's StandardScaler has them).
    """

    mean: np.ndarray  # (d,) float64
    scale: np.ndarray  # (d,) float64
    components: np.ndarray  # (d, k) float64, columns largest variance first
    _weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.components.ndim != 2 or self.components.shape[0] != len(self.mean):
            raise ValueError(
                f"components of shape {self.components.shape} do not fit {len(self.mean)}-d rows"
            )
        object.__setattr__(self, "_weights", self.scale[:, None] * self.components)

    @property
    def k(self) -> int:
        return self.components.shape[1]

    def project(self, rows: np.ndarray) -> np.ndarray:
        """(n, d) features to (n, k) reduced features; float64 inside, float32 out."""
        if len(rows) == 0:
            return np.empty((0, self.k), dtype=np.float32)
        centred = np.asarray(rows, dtype=np.float64) - self.mean
        return (centred @ self._weights).astype(np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, scale=self.scale, components=self.components)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            return cls(saved["mean"], saved["scale"], saved["components"])


def choose_k(component_variance: Sequence[float], target: float) -> int:
    """Fewest leading components whose explained-variance ratios reach ``target``.

    When even all components fall short (rounding, or fewer components than asked),
    all of them are kept.
    """
    if not component_variance:
        raise ValueError("no components to choose from")
    total = 0.0
    for index, share in enumerate(component_variance, start=1):
        total += share
        if total >= target - 1e-12:
            return index
    return len(component_variance)


def principal_axes(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a covariance matrix, largest first.

    For a standardized PCA this is Pearson's matrix; features with zero variance are all
    zeros once standardized and contribute nothing (``Moments.correlation`` gives them zero
    rows and columns, and any NaN entries count as zeros here). LAPACK's symmetric solver:
    Spark's own PCA used a general SVD that, on a rank-deficient covariance (fewer images
    than 1280), returned a different spectrum or NaN depending only on the partitioning.
    Returns (components as columns, explained-variance ratios).
    """
    covariance = np.nan_to_num(covariance, nan=0.0)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    total = values.sum()
    ratios = values / total if total > 0 else values
    return vectors[:, order], ratios


def fit_projection(
    moments: Moments, *, scaling: str, k: int | None, variance: float
) -> tuple[Projection, np.ndarray]:
    """The projection of the given moments and the whole spectrum (explained ratios)."""
    if scaling not in PCA_SCALINGS:
        raise ValueError(f"scaling {scaling!r} is not one of {', '.join(PCA_SCALINGS)}")
    if scaling == "standard":
        std = moments.std()
        scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
        components, spectrum = principal_axes(moments.correlation())
    else:
        scale = np.ones(moments.dimension)
        components, spectrum = principal_axes(moments.covariance())
    chosen = choose_k(spectrum.tolist(), variance) if k is None else k
    return Projection(moments.mean, scale, components[:, :chosen].copy()), spectrum
