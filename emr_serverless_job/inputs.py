"""What a run reads: every image of a folder or prefix, or the images a manifest lists.

Whatever is named as an input ends either in ``images`` (to be decoded) or in
``rejected`` with a reason (too large, listed but missing, a bad manifest line);
nothing named as an input is dropped without a row saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import statistics
import tempfile
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from pyspark.sql import DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from emr_serverless_job import hadoopfs
from emr_serverless_job.images import IMAGE_GLOB, is_image_path

NOT_FOUND = "listed in the manifest but not found"
DELETED = "deleted while the run was reading"
HIDDEN_NAME = "file name starts with '_' or '.', which Spark never reads: rename the file"
# Spark's streaming file sink log, which a manifest's file list is written as.
SINK_LOG_FOLDER = "_spark_metadata"
SINK_LOG_VERSION = "v1"
# Packing size for a manifest entry without "size", when none of the others has one either.
ASSUMED_SIZE_BYTES = 1 << 20
SINK_LOG_BLOCK_BYTES = 128 << 20  # a field of the log; binaryFile never splits a file
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
    sizes: dict[str, int] = field(default_factory=dict)  # bytes, where a line said


@dataclass(frozen=True)
class Inputs:
    images: DataFrame  # path, length, modificationTime, content
    rejected: DataFrame  # path, size_bytes, reason
    fingerprint: str  # stable digest of what was asked for; names the default run id
    expected: int = 0  # inputs named up front: files listed, or manifest entries
    duplicates: int = 0
    listed: list[str] | None = None  # every file named or listed, as ``path`` spells it
    gone_reason: str = DELETED  # why a listed file without a row has none, when it is gone


def parse_manifest(text: str) -> ManifestEntries:
    """JSON Lines of ``{"uri": ...}`` (size and etag optional) to image URIs.

    Blank lines are skipped; a line that is not a JSON object with a string ``uri``,
    or whose URI is not an image, becomes a problem with its line number. A ``size`` that
    is not a whole number of bytes is ignored: it only helps pack files into tasks.
    """
    uris: list[str] = []
    sizes: dict[str, int] = {}
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
        size = entry.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            sizes[uri] = size
    return ManifestEntries(uris=uris, problems=problems, duplicates=duplicates, sizes=sizes)


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


def is_hidden_name(path: str) -> bool:
    """Hadoop's hidden files, which Spark's file sources skip wherever they are named."""
    name = path.rsplit("/", 1)[-1]
    return name.startswith(".") or (name.startswith("_") and "=" not in name)


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


def sink_log_uri(spelled: str) -> str:
    """A file as ``spark_spelling`` spells it, as the escaped URI a Spark file log stores
    and Hadoop turns back into ``Path(URI)``: the path percent-encoded (spaces, ``%``,
    ``#``, ``?``, non-ASCII)."""
    scheme, _, rest = spelled.partition(":")
    authority = ""
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        authority, rest = f"//{host}", "/" + path
    return f"{scheme}:{authority}{quote(rest, safe='/')}"


def _sink_log_line(spelled: str, size: int) -> str:
    """One file of a ``_spark_metadata`` log, in the fields Spark's file sink writes."""
    return json.dumps(
        {
            "path": sink_log_uri(spelled),
            "size": size,
            "isDir": False,
            "modificationTime": 0,
            "blockReplication": 1,
            "blockSize": SINK_LOG_BLOCK_BYTES,
            "action": "add",
        }
    )


def _manifest_files(spark: SparkSession, sizes: dict[str, int | None]) -> DataFrame:
    """``binaryFile`` over exactly the files a manifest names (keyed by ``spark_spelling``),
    without looking them up.

    ``spark.read.load(paths)`` checks every path on the driver (a request per file on S3)
    and then lists them in a Spark job. A folder holding a ``_spark_metadata`` log (what
    Spark's own streaming file sink writes) is read as exactly the files the log names,
    with their sizes from the log and no listing, so the driver writes that log for the
    manifest in a local scratch folder and reads it back: no request per file, no job.
    Sizes only pack files into tasks (the reader takes each file's real length when it
    opens it); a missing file is skipped by the scan and becomes a rejection afterwards
    (``unscanned``). The log is read once, when the relation is resolved, so the scratch
    folder goes at once. ``recursiveFileLookup`` stops Spark from taking ``key=value``
    folders of the bucket for partition columns.
    """
    known = [size for size in sizes.values() if size is not None]
    typical = int(statistics.median(known)) if known else ASSUMED_SIZE_BYTES
    lines = [
        _sink_log_line(spelled, typical if size is None else size)
        for spelled, size in sizes.items()
    ]
    with tempfile.TemporaryDirectory(prefix="manifest-index-") as scratch:
        log = os.path.join(scratch, SINK_LOG_FOLDER)
        os.mkdir(log)
        with open(os.path.join(log, "0"), "w", encoding="utf-8") as out:
            out.write("\n".join([SINK_LOG_VERSION, *lines]) + "\n")
        files = (
            _binary_files(spark)
            .option("recursiveFileLookup", "true")
            .option("ignoreMissingFiles", "true")
            .load(f"file://{scratch}")
        )
        taken = len(files._jdf.inputFiles())
    if taken != len(sizes):
        raise RuntimeError(
            f"Spark took {taken} of the manifest's {len(sizes)} files from its file log; "
            "is spark.sql.streaming.fileStreamSink.ignoreMetadata set?"
        )
    return files


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


def input_files(files: DataFrame) -> list[str]:
    """The URIs of the files a file-source DataFrame reads, fetched from the JVM in one call.

    ``DataFrame.inputFiles()`` returns a Java array that py4j reads one element per round
    trip: 1.8 s for 5,000 local files and 8-13 s for 20,000, nearly all of a backfill's list
    stage. Joined by Scala's ``mkString`` they cross as one string; a URI never holds a
    line break (``java.net.URI`` escapes control characters).
    """
    jvm = files.sparkSession.sparkContext._jvm
    joined = jvm.scala.Predef.genericWrapArray(files._jdf.inputFiles()).mkString("\n")
    return joined.split("\n") if joined else []


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
    listed = [hadoop_path_string(uri) for uri in input_files(files)]
    return Inputs(
        images=images,
        rejected=too_large,
        fingerprint=content_digest(location.encode()),
        expected=len(listed),
        listed=listed,
    )


def from_manifest(spark: SparkSession, location: str, max_bytes: int) -> Inputs:
    """The images a manifest lists; bad lines, missing, empty and oversized files are rejected.

    The driver reads the manifest and nothing else: no request and no Spark job per file
    (see ``_manifest_files``). Files that are gone, empty or skipped surface after the read,
    as inputs with no row (``unscanned``).
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
    sizes: dict[str, int | None] = {}  # one entry per file, however the manifest spelled it
    for uri in entries.uris:
        sizes.setdefault(spark_spelling(uri), entries.sizes.get(uri))
    duplicates = entries.duplicates + len(entries.uris) - len(sizes)
    files = _manifest_files(spark, sizes) if sizes else _empty_files_frame(spark)
    images, too_large = _split_by_size(files, max_bytes)
    rejected = too_large
    if rows:  # a DataFrame of Python rows costs ~1 s the first time in a session: only then
        rejected = spark.createDataFrame(rows, REJECTED_SCHEMA).unionByName(too_large)
    return Inputs(
        images=images,
        rejected=rejected,
        fingerprint=content_digest(raw),
        expected=len(sizes) + len(entries.problems),
        duplicates=duplicates,
        listed=list(sizes),
        gone_reason=NOT_FOUND,
    )


def unscanned(
    spark: SparkSession, listed: list[str], seen: DataFrame, gone_reason: str
) -> DataFrame:
    """Listed files that Spark's scan produced no row for, as rejections with a reason.

    Spark skips zero-length files while scanning, and missing ones where a manifest named
    them; they are still inputs and must be accounted for. Only called when counts show a
    gap, so the lookups here are few.
    """
    listed_frame = spark.createDataFrame([(path,) for path in listed], "path string")
    missing = [row["path"] for row in listed_frame.join(seen, "path", "left_anti").collect()]
    rows: list[tuple[str, int | None, str]] = []
    for path, status in zip(missing, hadoopfs.stat_many(spark, missing), strict=True):
        if status is None:
            rows.append((path, None, gone_reason))
        else:
            size = status[1]
            reason = size_reason(size, 1 << 62) or (
                HIDDEN_NAME if is_hidden_name(path) else "skipped by Spark's scan"
            )
            rows.append((path, size, reason))
    return spark.createDataFrame(rows, REJECTED_SCHEMA)
