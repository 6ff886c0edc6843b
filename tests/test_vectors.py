"""Feature vectors between matrices and Arrow list columns, without Spark."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from emr_serverless_job.vectors import FLOAT_LIST, to_list_array, to_matrix


def test_rows_land_in_their_cells_and_the_rest_are_null():
    matrix = np.arange(6, dtype=np.float64).reshape(2, 3)  # float64 in, float32 out
    column = to_list_array(matrix, [1, 3], 5)
    assert column.type == FLOAT_LIST
    assert column.to_pylist() == [None, [0.0, 1.0, 2.0], None, [3.0, 4.0, 5.0], None]
    np.testing.assert_array_equal(to_matrix(column.drop_null()), matrix.astype(np.float32))


def test_no_matrix_or_no_rows_is_a_column_of_nulls():
    assert to_list_array(None, [], 3).to_pylist() == [None, None, None]
    assert to_list_array(np.empty((0, 4)), [], 2).null_count == 2


def test_a_mismatch_between_vectors_and_rows_is_refused():
    with pytest.raises(ValueError, match="2 vectors for 3 rows"):
        to_list_array(np.zeros((2, 4)), [0, 1, 2], 3)


def test_to_matrix_refuses_nulls_and_ragged_rows():
    assert to_matrix(pa.array([], FLOAT_LIST)).shape == (0, 0)
    for bad in ([[1.0, 2.0], None], [[1.0, 2.0], [3.0]]):
        with pytest.raises(ValueError, match="one length"):
            to_matrix(pa.array(bad, FLOAT_LIST))
