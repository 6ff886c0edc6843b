"""What a run reads: every image of a folder or prefix, or the images a manifest lists.

Whatever is named as an input ends either in ``images`` (to be decoded) or in
``rejected`` with a reason (too large, listed but missing, a bad manifest line);
nothing named as an input is dropped without a row saying so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from py4j.protocol import Py4JError, Py4JJavaError
from pyspark.sql import DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from emr_serverless_job import hadoopfs
from emr_serverless_job.images import IMAGE_GLOB, is_image_path
from emr_serverless_job.logs import event

NOT_FOUND = "listed in the manifest but not found"
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)
REJECTED_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType(), False),
        T.StructField("size_bytes", T.LongType()),
        T.StructField("reason", T.StringType(), False),
    ]
)


class InputError(ValueError):
    """The input itself (folder, prefix or manifest) cannot be used; nothing was written."""


@dataclass(frozen=True)
class ManifestEntries:
    """A manifest's image URIs in order, without duplicates, plus the lines that were not."""

    uris: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what, reason)
    duplicates: int = 0


@dataclass(frozen=True)
class Inputs:
    images: DataFrame  # path, length, modificationTime, content
    rejected: DataFrame  # path, size_bytes, reason
    fingerprint: str  # stable digest of what was asked for; names the default run id
    expected: int = 0  # inputs named up front: files listed, or manifest entries
    duplicates: int = 0
    listed: list[str] | None = None  # folder runs: every listed file, as ``path`` spells it


def parse_manifest(text: str) -> ManifestEntries:
    """JSON Lines of ``{"uri": ...}`` (size and etag optional) to image URIs.

    Blank lines are skipped; a line that is not a JSON object with a string ``uri``,
    or whose URI is not an image, becomes a problem with its line number.
    """
    uris: list[str] = []
    seen: set[str] = set()
    problems: list[tuple[str, str]] = []
    duplicates = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append((f"manifest line {number}", f"not valid JSON: {error.msg}"))
            continue
        uri = entry.get("uri") if isinstance(entry, dict) else None
        if not isinstance(uri, str) or not uri.strip():
            problems.append((f"manifest line {number}", 'no "uri" string in the object'))
            continue
        if not is_image_path(uri):
            problems.append((uri, "not an image suffix (.jpg, .jpeg, .png)"))
            continue
        if uri in seen:
            duplicates += 1
            continue
        seen.add(uri)
        uris.append(uri)
    return ManifestEntries(uris=uris, problems=problems, duplicates=duplicates)


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hadoop_path_string(uri: str) -> str:
    """A listed file's URI (``file:///a%20b/x.jpg``) as Spark's ``path`` column spells it.

    Spark's file index returns URIs with escaped characters, while scanned rows carry
    Hadoop's ``Path.toString()``: the scheme, the authority if any, the decoded path.
    """
    parts = urlsplit(uri)
    authority = f"//{parts.netloc}" if parts.netloc else ""
    return f"{parts.scheme}:{authority}{unquote(parts.path)}"


def spark_spelling(uri: str) -> str:
    """A manifest URI (already decoded) as Spark's ``path`` column spells the file: what
    Hadoop's ``Path(uri).toString()`` gives, without a JVM call: a scheme-less absolute path
    becomes ``file:``, ``file:///`` becomes ``file:/``, repeated and trailing slashes go."""
    match = SCHEME.match(uri)
    scheme, rest = (match.group(1), match.group(2)) if match else ("file", uri)
    authority = ""
    if rest.startswith("//"):
        authority, _, rest = rest[2:].partition("/")
        rest = "/" + rest
    path = re.sub(r"/{2,}", "/", rest)
    if len(path) > 1:
        path = path.rstrip("/")
    if scheme == "file" or not authority:
        return f"{scheme}:{posixpath.normpath(path) if path.startswith('/') else path}"
    return f"{scheme}://{authority}{path}"


def size_reason(size: int, max_bytes: int) -> str | None:
    """Why a file of this size is not read, or None when it is fine to read."""
    if size == 0:
        return "empty file (0 bytes)"
    if size > max_bytes:
        return f"file too large: {size} bytes (limit --max-file-bytes {max_bytes})"
    return None


def _binary_files(spark: SparkSession) -> DataFrameReader:
    return spark.read.format("binaryFile")


def _empty_files_frame(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(
        [], "path string, modificationTime timestamp, length long, content binary"
    )


def _named_files(spark: SparkSession, uris: list[str]) -> DataFrame:
    """``binaryFile`` over named files, skipping those that do not exist.

    ``spark.read.load(paths)`` first checks every path on the driver (one request per file
    on S3, and a failure for one that is gone). Resolving the same data source with that
    check off leaves the listing to Spark's file index, which runs it as a job on the
    executors and skips a missing path with a warning: the driver makes no request per file.
    ``DataSource`` is Spark's internal class behind ``DataFrameReader.load``; its constructor
    has been stable across 3.x, and tests run the release's PySpark.
    """
    jvm = spark.sparkContext._jvm
    python = jvm.org.apache.spark.api.python.PythonUtils
    nothing = jvm.scala.Option.apply(None)
    source = jvm.org.apache.spark.sql.execution.datasources.DataSource.apply(
        spark._jsparkSession,
        "binaryFile",
        python.toSeq(uris),
        nothing,  # schema: binaryFile's own
        python.toSeq([]),  # partition columns
        nothing,  # bucketing
        python.toScalaMap({}),
        nothing,  # catalog table
    )
    relation = source.resolveRelation(False)  # checkFilesExist
    return DataFrame(spark._jsparkSession.baseRelationToDataFrame(relation), spark)


def _existing_files(spark: SparkSession, uris: list[str]) -> DataFrame:
    """``_named_files``, or where a Spark build lacks that constructor, the public reader
    over the files that a lookup on the driver finds (one request per file: slower, same
    rows)."""
    try:
        return _named_files(spark, uris)
    except Py4JJavaError:
        raise
    except Py4JError as error:
        event(
            "manifest_listing_fallback",
            logging.WARNING,
            reason=str(error).splitlines()[-1][:300],
            files=len(uris),
        )
    statuses = hadoopfs.stat_many(spark, uris)
    present = [uri for uri, status in zip(uris, statuses, strict=True) if status is not None]
    return _binary_files(spark).load(present) if present else _empty_files_frame(spark)


def _split_by_size(files: DataFrame, max_bytes: int) -> tuple[DataFrame, DataFrame]:
    """(files to read, oversized ones as rejections). ``binaryFile`` evaluates ``length``
    filters before opening a file, so oversized files are never read into memory."""
    limit = F.lit(max_bytes).cast("long")
    too_large = files.filter(F.col("length") > limit).select(
        "path",
        F.col("length").alias("size_bytes"),
        F.concat(
            F.lit("file too large: "),
            F.col("length").cast("string"),
            F.lit(f" bytes (limit --max-file-bytes {max_bytes})"),
        ).alias("reason"),
    )
    return files.filter(F.col("length") <= limit), too_large


def from_folder(spark: SparkSession, location: str, max_bytes: int) -> Inputs:
    """Every .jpg/.jpeg/.png under ``location``, recursively, in any letter case.

    Empty files are skipped by Spark's scan itself; ``listed`` lets the job find them
    afterwards (see ``unscanned``).
    """
    if not hadoopfs.exists(spark, location):
        raise InputError(f"--input: nothing at {location}")
    files = (
        _binary_files(spark)
        .option("pathGlobFilter", IMAGE_GLOB)
        .option("recursiveFileLookup", "true")
        .load(location)
    )
    images, too_large = _split_by_size(files, max_bytes)
    listed = [hadoop_path_string(uri) for uri in files.inputFiles()]
    return Inputs(
        images=images,
        rejected=too_large,
        fingerprint=content_digest(location.encode()),
        expected=len(listed),
        listed=listed,
    )


def from_manifest(spark: SparkSession, location: str, max_bytes: int) -> Inputs:
    """The images a manifest lists; bad lines, missing, empty and oversized files are rejected.

    Spark's file index lists the named files (on the executors, see ``_named_files``); a
    file it did not find is a rejection, and sizes come from that listing, so the driver
    reads the manifest and nothing else per file.
    """
    try:
        raw = hadoopfs.read_bytes(spark, location)
    except Exception as error:
        raise InputError(f"--manifest: cannot read {location}: {error}") from error
    try:
        entries = parse_manifest(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"--manifest: {location} is not UTF-8 text: {error}") from error
    rows: list[tuple[str, int | None, str]] = [
        (what, None, reason) for what, reason in entries.problems
    ]
    spelled: dict[str, str] = {}  # one URI per file, however the manifest spelled it
    for uri in entries.uris:
        spelled.setdefault(spark_spelling(uri), uri)
    duplicates = entries.duplicates + len(entries.uris) - len(spelled)
    files = _existing_files(spark, list(spelled.values())) if spelled else _empty_files_frame(spark)
    listed = [hadoop_path_string(uri) for uri in files.inputFiles()] if spelled else []
    found = set(listed)
    unmatched = [uri for path, uri in spelled.items() if path not in found]
    # Hadoop's own spelling of the few that did not match: missing, or spelled unusually.
    rows += [
        (uri, None, NOT_FOUND) for uri in unmatched if hadoopfs.qualified(spark, uri) not in found
    ]
    images, too_large = _split_by_size(files, max_bytes)
    return Inputs(
        images=images,
        rejected=spark.createDataFrame(rows, REJECTED_SCHEMA).unionByName(too_large),
        fingerprint=content_digest(raw),
        expected=len(spelled) + len(entries.problems),
        duplicates=duplicates,
        listed=listed,
    )


def unscanned(spark: SparkSession, listed: list[str], seen: DataFrame) -> DataFrame:
    """Listed files that Spark's scan produced no row for, as rejections with a reason.

    Spark skips zero-length files while scanning; they are still inputs and must be
    accounted for. Only called when counts show a gap, so the lookups here are few.
    """
    listed_frame = spark.createDataFrame([(path,) for path in listed], "path string")
    missing = [row["path"] for row in listed_frame.join(seen, "path", "left_anti").collect()]
    rows: list[tuple[str, int | None, str]] = []
    for path, status in zip(missing, hadoopfs.stat_many(spark, missing), strict=True):
        if status is None:
            rows.append((path, None, "deleted while the run was reading"))
        else:
            size = status[1]
            rows.append((path, size, size_reason(size, 1 << 62) or "skipped by Spark's scan"))
    return spark.createDataFrame(rows, REJECTED_SCHEMA)
