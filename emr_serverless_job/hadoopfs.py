"""Small files on whatever filesystem Spark reads: local folders here, S3 through EMRFS on EMR.

The driver uses these for manifests, run reports and the PCA model's metadata, so
that the job needs no boto3 and the same code serves ``/tmp/...`` and ``s3://...``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyspark.sql import SparkSession

STAT_THREADS = 16
T = TypeVar("T")


def _path_and_fs(spark: SparkSession, uri: str) -> tuple[object, object]:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    return path, path.getFileSystem(conf)


def exists(spark: SparkSession, uri: str) -> bool:
    path, fs = _path_and_fs(spark, uri)
    return bool(fs.exists(path))


def stat(spark: SparkSession, uri: str) -> tuple[str, int] | None:
    """(qualified path as Spark writes it in ``path`` columns, length), or None if absent."""
    path, fs = _path_and_fs(spark, uri)
    try:
        status = fs.getFileStatus(path)
    except Exception as error:  # py4j wraps java.io.FileNotFoundException
        if "FileNotFoundException" in str(error) or "No such file" in str(error):
            return None
        raise
    if status.isDirectory():
        return None
    return str(status.getPath().toString()), int(status.getLen())


def map_files(
    spark: SparkSession, uris: list[str], look: Callable[[SparkSession, str], T]
) -> list[T]:
    """``look`` at many files, in parallel (one or two requests each on S3)."""
    if not uris:
        return []
    with ThreadPoolExecutor(max_workers=min(STAT_THREADS, len(uris))) as pool:
        return list(pool.map(lambda uri: look(spark, uri), uris))


def cause(error: Exception) -> str:
    """The Java exception's class and message, from py4j's long wrapped text."""
    java = getattr(error, "java_exception", None)
    if java is not None:
        return f"{java.getClass().getSimpleName()}: {java.getMessage()}"
    return f"{type(error).__name__}: {error}".splitlines()[0]


def read_failure(spark: SparkSession, uri: str) -> str | None:
    """Why the first byte of a file cannot be read, or None when it can."""
    try:
        path, fs = _path_and_fs(spark, uri)
        stream = fs.open(path)
        try:
            stream.read()
        finally:
            stream.close()
    except Exception as error:
        return cause(error)
    return None


def delete(spark: SparkSession, uri: str) -> None:
    """Remove a file or a folder and everything under it; nothing there is fine."""
    path, fs = _path_and_fs(spark, uri)
    fs.delete(path, True)


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    path, fs = _path_and_fs(spark, uri)
    stream = fs.open(path)
    try:
        jvm = spark.sparkContext._jvm
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Create or replace one file."""
    path, fs = _path_and_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()
