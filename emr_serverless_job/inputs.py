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
import stat
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from pyspark.sql import DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from emr_serverless_job import hadoopfs
from fruits_contract import (
    EMPTY_FILE,
    IMAGE_SUFFIXES,
    NOT_AN_IMAGE_SUFFIX,
    SIZE_FIELD,
    URI_FIELD,
    is_image_name,
)

NOT_FOUND = "listed in the manifest but not found"
DELETED = "deleted while the run was reading"
HIDDEN_NAME = "file name starts with '_' or '.', which Spark never reads: rename the file"
HIDDEN_FOLDER = (
    "in a folder whose name starts with '_' or '.', which Spark never lists: "
    "move the file out of it"
)
NOT_A_FILE = "not a regular file"
DANGLING_LINK = "symbolic link to nothing"
# The schemes a run reads: S3 through EMRFS (s3://) or the S3A connector, and local files.
READ_SCHEMES = ("s3", "s3a", "s3n", "file")
S3_SCHEMES = ("s3", "s3a", "s3n")
# Hadoop's glob of every name a run reads, in any letter case (Spark's pathGlobFilter).
IMAGE_GLOB = "*.{%s}" % ",".join(  # noqa: UP031 (braces of the glob itself)
    "".join(f"[{c.lower()}{c.upper()}]" for c in suffix.lstrip(".")) for suffix in IMAGE_SUFFIXES
)
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
class ManifestLine:
    """One non-blank line of a JSON Lines manifest: an object with a ``uri`` string, or why not."""

    number: int  # from 1, counting blank lines
    entry: dict[str, object]  # the parsed object; empty when ``problem`` is set
    uri: str = ""
    problem: str = ""  # 'not valid JSON: ...' or 'no "uri" string in the object'

    @property
    def where(self) -> str:
        return f"manifest line {self.number}"


def manifest_lines(text: str) -> Iterator[ManifestLine]:
    """The manifest's lines in order, blank ones skipped: what every manifest reader shares
    (the job's image manifests here, erase.py's erasure manifests)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            yield ManifestLine(number, {}, problem=f"not valid JSON: {error.msg}")
            continue
        uri = entry.get(URI_FIELD) if isinstance(entry, dict) else None
        if not isinstance(uri, str) or not uri.strip():
            yield ManifestLine(number, {}, problem=f'no "{URI_FIELD}" string in the object')
            continue
        yield ManifestLine(number, entry, uri)


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
    # Rejections per reason when the driver made every one of them (a local folder's listing):
    # counted here instead of by a Spark job over ``rejected``. None: count the frame.
    rejections: Counter[str] | None = None


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
    for line in manifest_lines(text):
        if line.problem:
            problems.append((line.where, line.problem))
            continue
        uri = line.uri
        if not is_image_name(uri):
            problems.append((uri, NOT_AN_IMAGE_SUFFIX))
            continue
        reason = address_reason(uri) or hidden_reason(uri)
        if reason is not None:
            problems.append((uri, reason))
            continue
        if uri in seen:
            duplicates += 1
            continue
        seen.add(uri)
        uris.append(uri)
        size = line.entry.get(SIZE_FIELD)
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


def _split_uri(uri: str) -> tuple[str | None, str, str]:
    """(scheme or None, authority, path) of a URI as written, without any normalization."""
    match = SCHEME.match(uri)
    scheme, rest = (match.group(1).lower(), match.group(2)) if match else (None, uri)
    authority = ""
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        rest = slash + rest
    return scheme, authority, rest


def address_reason(uri: str) -> str | None:
    """Why a run cannot read ``uri`` as written, or None when it can.

    Hadoop's ``Path`` normalizes what it is given: ``raw/Kiwi//a.jpg`` and
    ``raw/./Kiwi/a.jpg`` are read as ``raw/Kiwi/a.jpg``, ``raw/../output/d.jpg`` as
    ``output/d.jpg``, and a name with a colon is taken for a URI scheme. S3 keeps such keys as
    distinct objects, so reading them would read another photo, or a file outside ``raw/``;
    each becomes an error row under its own key instead.
    """
    scheme, authority, path = _split_uri(uri)
    if scheme is None and not path.startswith("/"):
        return "relative path: a manifest names each file by absolute URI (s3://bucket/key)"
    if scheme is not None and scheme not in READ_SCHEMES:
        return f"unsupported scheme '{scheme}:' (a run reads {', '.join(READ_SCHEMES)} URIs)"
    if scheme in S3_SCHEMES and not authority:
        return f"no bucket in the URI (expected {scheme}://bucket/key)"
    segments = path.split("/")[1:]
    if "" in segments:
        return "key has an empty folder name ('//'), which Hadoop would read as another key"
    if "." in segments or ".." in segments:
        return "key has a '.' or '..' folder, which Hadoop would read as another key"
    if ":" in path:
        return "key has a ':', which Hadoop reads as a URI scheme: rename the object"
    return None


def _is_hidden(name: str) -> bool:
    """Names Spark's file scan skips: starting with ``.``, or with ``_`` but without ``=`` (a
    partition folder). Its listing keeps Parquet's ``_metadata``/``_common_metadata`` names,
    but its scan of data files drops them too."""
    return name.startswith(".") or (name.startswith("_") and "=" not in name)


def is_hidden_name(path: str) -> bool:
    """Hadoop's hidden files, which Spark's file sources skip wherever they are named."""
    return _is_hidden(path.rsplit("/", 1)[-1])


def hidden_reason(uri: str, below: int = 0) -> str | None:
    """Why Spark would skip ``uri`` for its hidden name or folder, or None. Folders are
    counted from the bucket (S3) or from ``below`` segments of the path (a local folder)."""
    _, _, path = _split_uri(uri)
    *folders, name = path.split("/")[1:]
    if _is_hidden(name):
        return HIDDEN_NAME
    if any(_is_hidden(folder) for folder in folders[below:]):
        return HIDDEN_FOLDER
    return None


def size_reason(size: int, max_bytes: int) -> str | None:
    """Why a file of this size is not read, or None when it is fine to read."""
    if size == 0:
        return EMPTY_FILE
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
            .option("ignoreCorruptFiles", "true")
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


def local_folder(location: str) -> str | None:
    """The local path of a folder given as ``/path`` or ``file:``, None for any other scheme."""
    scheme, authority, path = _split_uri(location)
    if scheme is None or (scheme == "file" and not authority):
        return os.path.abspath(path)
    return None


@dataclass(frozen=True)
class Listed:
    """One file a local folder holds: as ``path`` spells it, with a size or a rejection."""

    path: str
    size: int | None
    reason: str | None


def list_local(root: str, max_bytes: int) -> list[Listed]:
    """Every file under ``root`` a run reads, each read or rejected, from the file system.

    Hadoop's local listing stops the whole listing at a name with a colon ("Relative path in
    absolute URI") and Spark's skips hidden folders and dangling links without a word, so a
    local folder is listed here: each file with an image suffix ends in this list, with a
    reason where it will not be read.
    """
    depth = len(root.rstrip("/").split("/")) - 1
    found: list[Listed] = []
    for folder, folders, names in os.walk(root):
        folders.sort()
        for name in sorted(names):
            if not is_image_name(name):
                continue
            full = os.path.join(folder, name)
            spelled = spark_spelling(full)
            reason = address_reason(full) or hidden_reason(full, below=depth)
            size = None
            if reason is None:
                try:
                    status = os.stat(full)
                except FileNotFoundError:
                    reason = DANGLING_LINK if os.path.islink(full) else DELETED
                except OSError as error:
                    reason = f"cannot read the file's status: {error.strerror}"
                else:
                    size = status.st_size
                    if not stat.S_ISREG(status.st_mode):
                        reason = NOT_A_FILE
                    else:
                        reason = size_reason(size, max_bytes)
            found.append(Listed(spelled, size, reason))
    return found


def _from_local_folder(spark: SparkSession, root: str, max_bytes: int) -> Inputs:
    """A local folder's files read through a file log, as a manifest's are (no Hadoop listing)."""
    listed = list_local(root, max_bytes)
    readable: dict[str, int | None] = {f.path: f.size for f in listed if f.reason is None}
    files = _manifest_files(spark, readable) if readable else _empty_files_frame(spark)
    rows = [(f.path, f.size, f.reason) for f in listed if f.reason is not None]
    rejected = spark.createDataFrame(rows, REJECTED_SCHEMA) if rows else _no_rejections(spark)
    return Inputs(
        images=files,
        rejected=rejected,
        fingerprint=content_digest(root.encode()),
        expected=len(listed),
        listed=list(readable),
        rejections=Counter(reason for _, _, reason in rows),
    )


def _no_rejections(spark: SparkSession) -> DataFrame:
    """An empty rejections frame planned in the JVM alone: a frame of Python rows, even an
    empty one, costs each Spark job that reads it tasks over a Python RDD (0.17-0.25 s to
    count warm, 0.76 s in a run's first count; BENCHMARKS.md, "Fixed costs of a run")."""
    return spark.range(0).select(
        *(F.lit(None).cast(field.dataType).alias(field.name) for field in REJECTED_SCHEMA)
    )


def from_folder(spark: SparkSession, location: str, max_bytes: int) -> Inputs:
    """Every image under ``location``, recursively, in any letter case.

    A local folder is listed in Python (``list_local``). Elsewhere (S3) Spark's file index
    lists it; empty files and files gone or unreadable when the scan reaches them are skipped
    by the scan and found afterwards by ``listed`` (see ``unscanned``). Spark's listing skips
    hidden names and folders (``_drafts/``): ``hidden_inputs`` finds them, and each becomes
    an error row saying to rename or move it.
    """
    if not hadoopfs.exists(spark, location):
        raise InputError(f"--input: nothing at {location}")
    local = local_folder(location)
    if local is not None:
        return _from_local_folder(spark, local, max_bytes)
    files = (
        _binary_files(spark)
        .option("pathGlobFilter", IMAGE_GLOB)
        .option("recursiveFileLookup", "true")
        .option("ignoreMissingFiles", "true")
        .option("ignoreCorruptFiles", "true")
        .load(location)
    )
    images, too_large = _split_by_size(files, max_bytes)
    # Spark lists `_metadata*.jpg` but never scans it: only its hidden row stands for it.
    listed = [
        path
        for path in (hadoop_path_string(uri) for uri in input_files(files))
        if not is_hidden_name(path)
    ]
    below = len(_split_uri(location)[2].strip("/").split("/"))
    hidden = [
        (path, None, hidden_reason(path, below=below) or HIDDEN_NAME)
        for path in hidden_inputs(spark, location, listed)
    ]
    if hidden:
        too_large = too_large.unionByName(spark.createDataFrame(hidden, REJECTED_SCHEMA))
    return Inputs(
        images=images,
        rejected=too_large,
        fingerprint=content_digest(location.encode()),
        expected=len(listed) + len(hidden),
        listed=listed,
    )


HIDDEN_GLOB = "{_,.}*"


def _hidden_children(spark: SparkSession, folder: str) -> list[tuple[str, bool]]:
    return hadoopfs.children_matching(spark, folder, HIDDEN_GLOB)


def hidden_inputs(spark: SparkSession, location: str, listed: list[str]) -> list[str]:
    """Images under ``location`` that Spark's listing skipped for a hidden name or folder.

    Spark never lists ``_drafts/``, ``.trash/`` or ``_IMG_1.jpg``, so a backfill gave them
    no row and no count. Each folder that holds a listed file (and each folder between it and
    ``location``) is asked for its hidden entries only, one listing per folder in parallel;
    the hidden folders found, rare, are listed whole. A folder that holds no visible image at
    any depth is not asked: ``reconcile`` still finds its photos.
    """
    root = hadoop_path_string(location).rstrip("/")
    folders = {root}
    for path in listed:
        parent = path.rsplit("/", 1)[0]
        while len(parent) > len(root) and parent not in folders:
            folders.add(parent)
            parent = parent.rsplit("/", 1)[0]
    found: list[str] = []
    for entries in hadoopfs.map_files(spark, sorted(folders), _hidden_children):
        for path, is_folder in entries:
            name = path.rsplit("/", 1)[-1]
            if not _is_hidden(name):  # a partition-like `_x=1` folder, which Spark lists
                continue
            found.extend(hadoopfs.files_under(spark, path) if is_folder else [path])
    return sorted(path for path in found if is_image_name(path))


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
    # A DataFrame of Python rows is slow the first time in a session (BENCHMARKS-history.md,
    # "Python rows"): built only when there are rejections to hold.
    if rows:
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

    Spark skips zero-length files while scanning, missing ones (``ignoreMissingFiles``: gone
    since the listing, or never there where a manifest named them) and unreadable ones
    (``ignoreCorruptFiles``: permission denied, an S3 403 from SSE-C, KMS or Glacier); they
    are still inputs and must be accounted for, with the cause. Only called when counts show
    a gap, so the lookups here are few.
    """
    listed_frame = spark.createDataFrame([(path,) for path in listed], "path string")
    missing = [row["path"] for row in listed_frame.join(seen, "path", "left_anti").collect()]
    rows = [
        (path, size, reason)
        for path, (size, reason) in zip(
            missing, hadoopfs.map_files(spark, missing, _why_unscanned), strict=True
        )
    ]
    return spark.createDataFrame(
        [(path, size, reason or gone_reason) for path, size, reason in rows], REJECTED_SCHEMA
    )


def _why_unscanned(spark: SparkSession, path: str) -> tuple[int | None, str | None]:
    """(size, reason) of a file the scan skipped; reason None means it is gone."""
    try:
        status = hadoopfs.stat(spark, path)
    except Exception as error:  # a HEAD refused (403) must not fail the run
        return None, f"unreadable: {hadoopfs.cause(error)}"
    if status is None:
        return None, None
    size = status[1]
    reason = size_reason(size, 1 << 62) or hidden_reason(path)
    if reason is None:
        failure = hadoopfs.read_failure(spark, path)
        reason = f"unreadable: {failure}" if failure else "skipped by Spark's scan"
    return size, reason
