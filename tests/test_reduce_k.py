"""Choosing k from the explained-variance spectrum."""

from __future__ import annotations

import pytest

from emr_serverless_job.reduce import choose_k


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
