"""Moments merged from pieces equal NumPy's statistics over all rows, however they are split."""

from __future__ import annotations

import numpy as np
import pytest

from emr_serverless_job.moments import Moments


def features(rows: int = 300, dimension: int = 12, seed: int = 0) -> np.ndarray:
    """ReLU-like features: non-negative, correlated, far from zero mean, one dead column."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(rows, dimension)) @ rng.normal(size=(dimension, dimension)), 0)
    x += 50.0  # a large offset: naive sum-of-squares formulas lose digits here
    x[:, 3] = 0.0  # a feature no image activates
    return x.astype(np.float32)


@pytest.mark.parametrize("cuts", [[], [1], [7, 8, 150], [0, 0, 299]])
def test_merged_pieces_equal_numpy_on_all_rows(cuts):
    x = features()
    pieces = [Moments.of(part) for part in np.split(x, cuts)]
    merged = pieces[0]
    for piece in pieces[1:]:
        merged = merged.merge(piece)
    reference = x.astype(np.float64)
    assert merged.count == len(x)
    np.testing.assert_allclose(merged.mean, reference.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        merged.scatter / (len(x) - 1), np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(merged.std(), reference.std(axis=0, ddof=1), rtol=1e-9)


def test_correlation_is_pearson_with_constant_features_zeroed():
    x = features()
    x[:, 5] = 0.7  # constant but not zero: still exactly no spread
    moments = Moments.of(x[:100]).merge(Moments.of(x[100:]))
    std = moments.std()
    assert std[3] == 0.0 and std[5] == 0.0 and np.all(np.delete(std, [3, 5]) > 0)
    correlation = moments.correlation()
    varying = np.delete(np.arange(x.shape[1]), [3, 5])
    np.testing.assert_allclose(
        correlation[np.ix_(varying, varying)],
        np.corrcoef(x[:, varying].astype(np.float64), rowvar=False),
        atol=1e-12,
    )
    assert not correlation[[3, 5], :].any() and not correlation[:, [3, 5]].any()


def test_bytes_round_trip_and_shape_errors():
    moments = Moments.of(features(rows=20, dimension=5))
    again = Moments.from_bytes(moments.to_bytes())
    assert again.count == 20
    np.testing.assert_array_equal(again.mean, moments.mean)
    np.testing.assert_array_equal(again.scatter, moments.scatter)
    with pytest.raises(ValueError, match="dimension 5 need 30 values"):
        Moments.from_bytes(moments.to_bytes()[:-8])
    with pytest.raises(ValueError, match="cannot merge 5-d and 4-d"):
        moments.merge(Moments.empty(4))
    with pytest.raises(ValueError, match="2-d array"):
        Moments.of(np.zeros(5))


def test_fewer_than_two_rows_have_no_spread():
    one = Moments.of(features(rows=1))
    assert one.count == 1 and not one.std().any()
    assert Moments.empty(3).merge(Moments.empty(3)).count == 0


def test_worker_side_rounds_read_arrow_batches_as_spark_sends_them():
    """The two mapInArrow rounds of the PCA fit, fed plain Arrow: sliced arrays (non-zero
    offsets), an empty batch, a second partition's piece merged in."""
    import pyarrow as pa

    from emr_serverless_job import reduce

    x = features(rows=50, dimension=6)
    column = pa.array([list(row) for row in x], pa.list_(pa.float32()))

    def batches(lo: int, hi: int, step: int) -> list[pa.RecordBatch]:
        parts = [column.slice(lo, 0)] + [
            column.slice(i, min(step, hi - i)) for i in range(lo, hi, step)
        ]
        return [pa.RecordBatch.from_arrays([part], ["features"]) for part in parts]

    first = list(reduce._partition_moments(iter(batches(0, 20, 7))))
    second = list(reduce._partition_moments(iter(batches(20, 50, 9))))
    assert list(reduce._partition_moments(iter([]))) == [], "an empty partition adds no piece"
    (merged,) = list(reduce._merge_moments(iter(first + second)))
    moments = Moments.from_bytes(merged.column(0)[0].as_py())
    reference = x.astype(np.float64)
    assert moments.count == 50
    np.testing.assert_allclose(moments.mean, reference.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        moments.scatter / 49, np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-12
    )
    ragged = pa.RecordBatch.from_arrays([pa.array([[1.0, 2.0], [1.0]], column.type)], ["features"])
    with pytest.raises(ValueError, match="of one length"):
        list(reduce._partition_moments(iter([ragged])))


def test_spark_brings_the_pieces_to_the_driver_whole_empty_partitions_and_all(spark):
    """The driver's side on a real session, through the Arrow collect (``_collect_as_arrow``,
    PySpark's private path: docs/spark-internals.md): rows spread over more partitions than
    there are rows, so some pieces are empty; a frame with no rows at all fits nothing."""
    from emr_serverless_job import reduce
    from emr_serverless_job.vectors import VECTOR_TYPE

    x = features(rows=5, dimension=4)
    schema = f"features {VECTOR_TYPE.simpleString()}"
    frame = spark.createDataFrame([(row.tolist(),) for row in x], schema).repartition(8)
    moments = reduce.feature_moments(spark, frame)
    reference = x.astype(np.float64)
    assert moments.count == 5
    np.testing.assert_allclose(moments.mean, reference.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(moments.covariance(), np.cov(reference, rowvar=False), rtol=1e-5)
    with pytest.raises(ValueError, match="no feature vectors"):
        reduce.feature_moments(spark, frame.limit(0))
