"""Small files on whatever filesystem Spark reads: local folders here, S3 through EMRFS on EMR.

The driver uses these for manifests, run reports and the PCA model's metadata, so
that the job needs no boto3 and the same code serves ``/tmp/...`` and ``s3://...``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pyspark.sql import SparkSession

STAT_THREADS = 16
SUCCESS_MARKER = "_SUCCESS"
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


def first_file(
    spark: SparkSession, uri: str, accept: Callable[[str], bool], limit: int
) -> tuple[str | None, int, int]:
    """(URI, length, files looked at) of ``uri`` itself when it is a file, else of the first
    file under it that ``accept``s, skipping hidden names (``_*``, ``.*``), looking at no more
    than ``limit`` files (S3 lists a page at a time). (None, 0, n) when there is none."""
    path, fs = _path_and_fs(spark, uri)
    try:
        status = fs.getFileStatus(path)
    except Exception as error:  # py4j wraps java.io.FileNotFoundException
        if "FileNotFoundException" in str(error) or "No such file" in str(error):
            return None, 0, 0
        raise
    if not status.isDirectory():
        return str(status.getPath().toString()), int(status.getLen()), 1
    root = str(status.getPath().toString()).rstrip("/")
    files = fs.listFiles(path, True)
    looked = 0
    while looked < limit and files.hasNext():
        found = files.next()
        looked += 1
        name = str(found.getPath().toString())
        below = name[len(root) :].strip("/").split("/") if name.startswith(root) else [name]
        if any(part.startswith(("_", ".")) for part in below) or not accept(name):
            continue
        return name, int(found.getLen()), looked
    return None, 0, looked


def map_files(
    spark: SparkSession, uris: list[str], look: Callable[[SparkSession, str], T]
) -> list[T]:
    """``look`` at many files, in parallel (one or two requests each on S3)."""
    if not uris:
        return []
    with ThreadPoolExecutor(max_workers=min(STAT_THREADS, len(uris))) as pool:
        return list(pool.map(lambda uri: look(spark, uri), uris))


GLOB_SPECIALS = "\\{}[]*?"


def glob_escaped(uri: str) -> str:
    """``uri`` with Hadoop's glob characters escaped, so that it matches only itself."""
    return "".join(f"\\{c}" if c in GLOB_SPECIALS else c for c in uri)


def children_matching(spark: SparkSession, folder: str, pattern: str) -> list[tuple[str, bool]]:
    """(path, is a folder) of the entries of ``folder`` whose names match the glob
    ``pattern``: one listing of that folder, and only the matches cross to Python."""
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(
        f"{glob_escaped(folder.rstrip('/'))}/{pattern}"
    )
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    statuses = fs.globStatus(path) or []
    return [(str(s.getPath().toString()), bool(s.isDirectory())) for s in statuses]


def files_under(spark: SparkSession, folder: str) -> list[str]:
    """Every file below ``folder``, hidden ones included (Hadoop's listing filters nothing).
    One round trip per file: for the few folders Spark's own listing skipped."""
    path, fs = _path_and_fs(spark, folder)
    found = fs.listFiles(path, True)
    paths = []
    while found.hasNext():
        paths.append(str(found.next().getPath().toString()))
    return paths


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


def files_in(spark: SparkSession, uri: str) -> list[str]:
    """The files directly in folder ``uri`` but Spark's ``_SUCCESS`` marker (a write ends by
    writing it again), or none when there is no such folder. One listing."""
    path, fs = _path_and_fs(spark, uri)
    if not fs.exists(path):
        return []
    return [
        str(status.getPath().toString())
        for status in fs.listStatus(path)
        if status.isFile() and status.getPath().getName() != SUCCESS_MARKER
    ]


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


def publish(spark: SparkSession, uri: str, data: bytes) -> None:
    """Replace one small file so that a reader sees the old content or the new, never a part.

    On S3 an object appears whole when its single PUT completes (EMRFS sends it when the
    stream closes). A local file is written beside and renamed over the old one (rename(2)
    is atomic); Hadoop's create would truncate it first, and a reader could find it empty.
    """
    path, fs = _path_and_fs(spark, uri)
    if str(fs.getScheme()) != "file":
        write_bytes(spark, uri, data)
        return
    target = Path(str(fs.makeQualified(path).toUri().getPath()))
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
    os.chmod(staged, 0o644)  # mkstemp's 0600 would hide the pointer from other readers
    os.replace(staged, target)


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Create or replace one file."""
    path, fs = _path_and_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()
