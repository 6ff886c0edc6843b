"""Feature vectors between NumPy matrices and Arrow list columns, a whole batch at a time.

Spark's pandas UDFs hand an ``array<float>`` result back to the JVM by turning every cell
into a Python list of Python floats (1280 calls per image: a large part of the int8 model's
own time, docs/job.md). The job's Python functions exchange
Arrow batches instead (``mapInArrow``), and these two functions convert between a batch's
list column and one (n, d) matrix through the column's buffers, with no object per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import types as T

FLOAT_LIST = pa.list_(pa.float32())
# The same column as Spark declares it, in every table and function result: elements are
# never null, so every run's Parquet files share one schema.
VECTOR_TYPE = T.ArrayType(T.FloatType(), containsNull=False)


def to_matrix(vectors: pa.Array) -> np.ndarray:
    """A list<float> column without nulls, all of one length, as an (n, d) matrix."""
    if len(vectors) == 0:
        return np.empty((0, 0), dtype=np.float32)
    lengths = pc.list_value_length(vectors)
    if vectors.null_count or pc.min(lengths).as_py() != pc.max(lengths).as_py():
        raise ValueError("feature vectors must all be present and of one length")
    values = vectors.flatten().to_numpy()
    return values.reshape(len(vectors), len(values) // len(vectors))


def to_list_array(matrix: np.ndarray | None, rows: Sequence[int], length: int) -> pa.Array:
    """A list<float> column of ``length`` cells: row ``i`` of ``matrix`` in cell ``rows[i]``
    (``rows`` ascending), null in every other cell; all null when ``matrix`` is None."""
    if matrix is None or not len(rows):
        return pa.nulls(length, FLOAT_LIST)
    values = np.ascontiguousarray(matrix, dtype=np.float32)
    if values.shape[0] != len(rows):
        raise ValueError(f"{values.shape[0]} vectors for {len(rows)} rows")
    sizes = np.zeros(length, dtype=np.int32)
    sizes[np.asarray(rows)] = values.shape[1]
    offsets = np.zeros(length + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    absent = np.ones(length, dtype=bool)
    absent[np.asarray(rows)] = False
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(values.reshape(-1)), type=FLOAT_LIST, mask=pa.array(absent)
    )
