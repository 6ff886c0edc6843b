"""The PCA projection as plain data: choosing k, fitting from moments, applying, storing."""

from __future__ import annotations

import numpy as np
import pytest

from emr_serverless_job.moments import Moments
from emr_serverless_job.projection import Projection, choose_k, fit_projection, principal_axes


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


def correlated_rows(n: int = 200, d: int = 12, seed: int = 1) -> np.ndarray:
    """Rows whose channels differ in scale by 100x, like pooled CNN channels do."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * np.geomspace(0.1, 10, d)
    return x + 3.0


def test_centred_projection_is_numpys_pca_of_the_centred_rows():
    x = correlated_rows()
    projection, spectrum = fit_projection(Moments.of(x), scaling="none", k=None, variance=0.9)
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(spectrum, singular**2 / (singular**2).sum(), atol=1e-10)
    assert projection.k == choose_k(spectrum.tolist(), 0.9)
    reference = centred @ vt[: projection.k].T
    projected = projection.project(x.astype(np.float32))
    assert projected.dtype == np.float32 and projected.shape == (len(x), projection.k)
    np.testing.assert_allclose(np.abs(projected), np.abs(reference), rtol=1e-4, atol=1e-3)


def test_standard_scaling_weighs_every_channel_alike_and_needs_more_components():
    x = correlated_rows()
    x[:, 4] = 7.0  # constant: all zeros once standardized
    moments = Moments.of(x)
    centred, _ = fit_projection(moments, scaling="none", k=None, variance=0.95)
    standard, spectrum = fit_projection(moments, scaling="standard", k=None, variance=0.95)
    assert standard.k > centred.k, "large channels dominate a centred PCA, not a standardized one"
    assert standard.scale[4] == 0.0 and np.abs(standard.components[4]).max() < 1e-12
    z = np.delete(x, 4, axis=1)
    z = (z - z.mean(0)) / z.std(0, ddof=1)
    singular = np.linalg.svd(z, compute_uv=False) ** 2
    np.testing.assert_allclose(spectrum[: z.shape[1]], singular / singular.sum(), atol=1e-10)
    with pytest.raises(ValueError, match="scaling 'minmax'"):
        fit_projection(moments, scaling="minmax", k=2, variance=0.9)


def test_projection_round_trips_through_bytes_and_pickle():
    import pickle

    projection, _ = fit_projection(
        Moments.of(correlated_rows()), scaling="standard", k=3, variance=1
    )
    x = correlated_rows(seed=2).astype(np.float32)
    for copy in (
        Projection.from_bytes(projection.to_bytes()),
        pickle.loads(pickle.dumps(projection)),
    ):
        np.testing.assert_array_equal(copy.project(x), projection.project(x))
    assert projection.project(np.empty((0, 12), np.float32)).shape == (0, 3)
    with pytest.raises(ValueError, match="do not fit 12-d rows"):
        Projection(projection.mean, projection.scale, projection.components[:5])
