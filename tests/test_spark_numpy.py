"""NumPy 2 under the PySpark that EMR runs (3.5.5, the default release's).

Spark's 3.5 branch caps NumPy below 2 in its install extras (apache/spark#47175) rather
than port the four NumPy aliases NumPy 2 removed (``np.NaN``, ``np.string_``, ``np.float_``,
``np.unicode_``; apache/spark#47083 ports them on master). The archive needs NumPy 2: the
TensorFlow runtime's ml-dtypes requires it. So the project shows, from PySpark's own source
(the ``pyspark.zip`` spark-submit puts on every Python process's path), that the job never
reaches those aliases, and the rest of the suite runs the job's pandas UDF and Spark ML
paths on exactly this PySpark and this NumPy.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyspark

REMOVED_IN_NUMPY_2 = re.compile(r"\bnp\.(NaN|string_|float_|unicode_)\b")
# Modules the job never imports (pyspark.pandas is pandas-on-Spark; tests and examples).
NOT_IMPORTED = ("pyspark/pandas/", "pyspark/tests/", "/tests/", "pyspark/examples/")
# Every remaining use, read: each sits behind an ``isinstance(value, str)`` test that returns
# first for the str values the job passes (column names to Spark ML params), so the removed
# alias is never evaluated. A new use after a PySpark upgrade fails this test until read.
REVIEWED = {
    ("pyspark/ml/param/__init__.py", "_can_convert_to_string"),
    ("pyspark/ml/param/__init__.py", "toString"),
}


def pyspark_zip() -> Path:
    return Path(pyspark.__file__).parent / "python" / "lib" / "pyspark.zip"


def uses_of_removed_aliases() -> set[tuple[str, str]]:
    """(module, enclosing function) of every line naming a removed NumPy alias."""
    found = set()
    with zipfile.ZipFile(pyspark_zip()) as archive:
        for name in archive.namelist():
            if not name.endswith(".py") or any(part in name for part in NOT_IMPORTED):
                continue
            function = "<module>"
            for line in archive.read(name).decode().splitlines():
                defined = re.match(r"\s*def (\w+)", line)
                function = defined[1] if defined else function
                code = line.split("#", 1)[0]
                if REMOVED_IN_NUMPY_2.search(code) and ">>>" not in code:
                    found.add((name, function))
    return found


def test_the_pinned_pyspark_uses_no_removed_numpy_alias_beyond_the_reviewed_ones():
    assert np.__version__.startswith("2.")
    assert pyspark.__version__ == "3.5.5"
    assert uses_of_removed_aliases() == REVIEWED


def test_the_reviewed_uses_are_behind_a_str_test_that_returns_first():
    from pyspark.ml.param import TypeConverters

    assert TypeConverters.toString("features") == "features"
    assert TypeConverters._can_convert_to_string("pca_features")
    assert TypeConverters.toString(np.str_("features")) == "features"  # a str subclass


def test_the_job_never_imports_pandas_on_spark():
    probe = (
        "import sys, emr_serverless_job.job, emr_serverless_job.reduce, "
        "emr_serverless_job.featurize, emr_serverless_job.main; "
        "print(sorted(m for m in sys.modules if m.startswith('pyspark.pandas')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
