"""Choosing k from the explained-variance spectrum."""

from __future__ import annotations

import numpy as np
import pytest

from emr_serverless_job.reduce import choose_k, principal_axes


@pytest.mark.parametrize(
    ("spectrum", "target", "k"),
    [
        ([0.5, 0.3, 0.15, 0.05], 0.5, 1),
        ([0.5, 0.3, 0.15, 0.05], 0.8, 2),
        ([0.5, 0.3, 0.15, 0.05], 0.81, 3),
        ([0.5, 0.3, 0.15, 0.05], 0.95, 3),
        ([0.5, 0.3, 0.15, 0.05], 1.0, 4),
        ([0.4, 0.3], 0.95, 2),  # short of target: keep everything there is
    ],
)
def test_fewest_components_reaching_the_target(spectrum, target, k):
    assert choose_k(spectrum, target) == k


def test_empty_spectrum_is_an_error():
    with pytest.raises(ValueError):
        choose_k([], 0.9)


def test_principal_axes_match_numpy_pca_and_ignore_constant_columns():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 6))
    x[:, 2] = 5.0  # constant: NaN in Pearson's matrix, zero once standardized
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.corrcoef(x, rowvar=False)
    components, ratios = principal_axes(correlation)
    assert ratios.sum() == pytest.approx(1.0)
    assert np.all(np.diff(ratios) <= 1e-12), "largest first"
    assert ratios[-1] == pytest.approx(0.0, abs=1e-12)
    varying = np.delete(x, 2, axis=1)
    z = (varying - varying.mean(0)) / varying.std(0, ddof=1)
    expected = np.linalg.svd(z, compute_uv=False) ** 2
    np.testing.assert_allclose(ratios[:5], expected / expected.sum(), atol=1e-10)
    assert np.abs(components[2, :5]).max() < 1e-12, "constant column carries no weight"
