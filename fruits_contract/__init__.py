"""The facts the job, the Lambdas, the commands, the build and the emulator share, defined once.

Each side used to keep its own copy of these (the Lambda package shipped without the job's
code, so it could not import them), and tests kept the copies equal. This module is the one
definition: standard library only, so it imports in the job's venv archive, in the Lambda's
bundle and in the development venv alike. It ships in both:

- the job package, ``emr_serverless_job.zip`` (``fruits_build/build.py``: ``job_package``), passed
  as ``--py-files``, which puts this package on the driver's and the executors' path;
- the Lambda bundle (``lambda_trigger/Makefile``, run by ``sam build``), next to
  ``lambda_trigger/`` at the bundle's root.

What belongs here: a name, a value or a rule that one side writes and another reads (an S3
key, a flag, a column, a tag of time, a run id). What does not: anything with a third-party
import, and facts only one side uses (they stay with that side).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

# --- the photos a run reads --------------------------------------------------------------------

# Photos the job decodes. Read by the job (what it decodes), the trigger (which uploads start a
# run), reconcile (which objects need a row) and the emulator (which objects a run reads): a
# suffix one of them reads and another ignores would reach no run and no reconcile.
DECODED_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# The formats phones send that the job does not decode (HEIC/HEIF): read all the same, so that
# each ends in an error row saying so instead of in no row at all.
UNDECODED_SUFFIXES = (".heic", ".heif")
# Every name a run reads, in any letter case. The suffix only selects files: the bytes decide
# the format.
IMAGE_SUFFIXES = DECODED_SUFFIXES + UNDECODED_SUFFIXES


def is_image_name(name: str) -> bool:
    """Whether a run reads this key or path (each such object ends in a features or an error
    row): the job's listing, the trigger's filter, reconcile's and the emulator's, alike."""
    return name.lower().endswith(IMAGE_SUFFIXES)


# --- error reasons that more than one module writes --------------------------------------------

# A name a run does not read: the job's manifest reader and the trigger's event filter say it in
# the same words, so an operator finds both with one search.
NOT_AN_IMAGE_SUFFIX = f"not an image suffix ({', '.join(IMAGE_SUFFIXES)})"
# A zero-byte object: the job's listing rejects it before reading, the decoder when it reads
# one anyway (a manifest entry without a size); one row reason either way.
EMPTY_FILE = "empty file (0 bytes)"

# --- the model --------------------------------------------------------------------------------

# The job's --runtime choices; the Lambda's RUNTIME setting and the stack's Runtime parameter
# must name one, or every run it starts fails its flag check.
RUNTIMES = ("onnx", "tensorflow")
# MobileNetV2's ImageNet input sizes (the job's --image-size); the Lambda's IMAGE_SIZE is
# checked against them before it sends a run that would stop at once.
IMAGE_SIZES = (96, 128, 160, 192, 224)
# The job's --pca-scaling choices, which the backfill command passes through.
PCA_SCALINGS = ("none", "standard")
# The least cosine of an int8 model's features to the fp32 ones, per photo: the build ships no
# int8 model under it (fruits_build/export_onnx.py, on the build machine's CPU) and the preflight
# fails a deployment under it (on the job's own CPUs, whose int8 kernels may differ).
INT8_MIN_COSINE = 0.98

# --- what the build uploads under s3://BUCKET/artifacts/, by name -------------------------------

# fruits_build/build.py writes these names, fruits_build/upload.py sends them, the StartJobRun
# request (lambda_trigger/request.py) names them, the job's preflight compares them.
ENTRY_POINT = "main.py"
JOB_PACKAGE = "emr_serverless_job.zip"
VENV_ARCHIVE = "pyspark_venv.tar.gz"
WEIGHTS_FILE = "mobilenet_v2_weights.h5"
MODEL_FILE = "mobilenet_v2.onnx"
# What fruits_build/build.py measured; upload.py sends it last, the preflight reads it.
ARTIFACTS_MANIFEST = "artifacts.json"
# The archive's interpreter as every process sees it (spark.archives=...#environment): the
# request sets it for driver and executors, the build checks where its link ends, the
# preflight checks that the processes run it.
VENV_PYTHON = "./environment/bin/python"

# --- the JVM ----------------------------------------------------------------------------------

# C1 compiler only: the JVMs only move bytes here (the model runs in Python), and in a run of
# minutes the optimising C2 compiler cost more than it saved: 25 of the 52 JVM CPU-seconds of a
# 5,000 photo run on 2 cores (BENCHMARKS.md, "JIT"). Local runs give it to their JVMs
# (emr_serverless_job.main); the request gives it to EMR's driver and executors.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1"

# --- the job's flags that name what a run reads -------------------------------------------------

# The request puts one of them first in the entry point's arguments; the job's parser accepts
# exactly one; the watcher reads it back from a run to say what failed; the emulator copies
# what it names.
INPUT_FLAG = "--input"  # a prefix or folder (a backfill)
MANIFEST_FLAG = "--manifest"  # a batch of uploads
ERASE_FLAG = "--erase"  # an erasure manifest
PREFLIGHT_FLAG = "--preflight"  # one photo, to check a deployment
COMPACT_FLAG = "--compact"  # merge old batch partitions (its value: their minimum age in days)
SOURCE_FLAGS = (INPUT_FLAG, MANIFEST_FLAG, ERASE_FLAG, PREFLIGHT_FLAG, COMPACT_FLAG)

# --- run ids ----------------------------------------------------------------------------------

# What the job accepts as --run-id (a partition value, a StartJobRun name, part of a token); the
# trigger's and the preflight command's ids match it.
RUN_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# A run's default id is its kind and 16 hex digits of the sha256 of what it reads: the trigger
# names the run it starts, and the job, given no --run-id, names the same one, so a
# redelivered batch or a repeated backfill lands in the same partition.
RUN_ID_DIGITS = 16
BATCH_RUN_PREFIX = "batch-"
BACKFILL_RUN_PREFIX = "backfill-"
ERASE_RUN_PREFIX = "erase-"
# A preflight's and a compaction's id is its UTC time and a nonce: each is its own run.
PREFLIGHT_RUN_PREFIX = "preflight-"
COMPACT_RUN_PREFIX = "compact-"
PREFLIGHT_NONCE_DIGITS = 8
# A run report's "mode", the kind of run that wrote reports/run_id=RUN/report.json: the job's two
# featurizing modes (compaction and erase runs write their own there): the plots read only these.
BACKFILL_MODE = "backfill"
MANIFEST_MODE = "manifest"
FEATURIZING_MODES = (BACKFILL_MODE, MANIFEST_MODE)


def digest_run_id(prefix: str, sha256_hex: str) -> str:
    """The run id of a kind (``prefix``) for a sha256 hex digest of what it reads."""
    return f"{prefix}{sha256_hex[:RUN_ID_DIGITS]}"


def batch_run_id(manifest: bytes) -> str:
    """A batch's run id: its manifest's bytes name it (the same batch, the same run)."""
    return digest_run_id(BATCH_RUN_PREFIX, hashlib.sha256(manifest).hexdigest())


def backfill_run_id(location: str) -> str:
    """A backfill's run id: its prefix names it, trailing slashes ignored (``s3://b/raw`` and
    ``s3://b/raw/`` are one backfill). The job hashes its normalized ``--input``, which for a
    remote location is exactly this."""
    return digest_run_id(
        BACKFILL_RUN_PREFIX, hashlib.sha256(location.rstrip("/").encode()).hexdigest()
    )


def erase_run_id(manifest: bytes) -> str:
    """An erase run's id: a redelivered batch of deletions names the same run."""
    return digest_run_id(ERASE_RUN_PREFIX, hashlib.sha256(manifest).hexdigest())


def timed_run_id(prefix: str, now: datetime, nonce: str) -> str:
    """``<prefix>20261202t141502z-1a2b3c4d``: UTC time and 8 hex digits of ``nonce``."""
    if not re.fullmatch(r"[0-9a-f]{%d,}" % PREFLIGHT_NONCE_DIGITS, nonce):  # noqa: UP031
        raise ValueError(f"nonce {nonce!r}: at least 8 lowercase hex digits")
    stamp = f"{now.astimezone(UTC):%Y%m%dt%H%M%S}z"
    return f"{prefix}{stamp}-{nonce[:PREFLIGHT_NONCE_DIGITS]}"


def preflight_run_id(now: datetime, nonce: str) -> str:
    """A preflight's id; the preflight command and the job (given no --run-id) name it alike."""
    return timed_run_id(PREFLIGHT_RUN_PREFIX, now, nonce)


def compaction_run_id(now: datetime, nonce: str) -> str:
    """A compaction's id, so its client token never repeats another day's."""
    return timed_run_id(COMPACT_RUN_PREFIX, now, nonce)


# --- the job's layout under --output -----------------------------------------------------------

# Tables, partitioned by RUN_ID_PARTITION. The job writes them; reconcile reads the path column
# of features and errors; the emulator copies what an erase run reads; the stack's job role is
# checked against them.
FEATURES_TABLE = "features"
ERRORS_TABLE = "errors"
ERASURES_TABLE = "erasures"  # tombstones of erased photos
RUN_ID_PARTITION = "run_id"
# Every table's photo column, as the job writes it: reconcile reads only this column.
PATH_COLUMN = "path"
# The features table's other columns that readers rely on: the job writes them, the current
# view, the inventory and the erase run read them.
FEATURIZED_AT_COLUMN = "featurized_at"  # when the run that wrote the row started
PCA_MODEL_COLUMN = "pca_model"  # the PCA model version that projected the row
# The features table's columns, in the order the job writes them (and the current view returns
# them, with the run id).
FEATURES_COLUMNS = (
    PATH_COLUMN,
    "label",
    "sha256",
    "size_bytes",
    "width",
    "height",
    "features",
    "pca_features",
    PCA_MODEL_COLUMN,
    FEATURIZED_AT_COLUMN,
)
# reports/run_id=<id>/report.json: one JSON report per run (featurize or erase).
REPORTS_FOLDER = "reports"
REPORT_FILE = "report.json"
# The PCA model: versions/<id>/ never rewritten, a pointer naming the current one written last.
# The emulator copies the pointer, then the version it names.
PCA_MODEL_FOLDER = "pca_model"
PCA_POINTER_FILE = "current.json"
PCA_VERSIONS_FOLDER = "versions"
# A compaction merges batch partitions at least this many days old by default: a week, far
# past the watcher's retries (the job's --compact and the compaction command's default).
COMPACT_MIN_AGE_DAYS = 7.0
# A preflight's report, under --output: the job writes it, the preflight command reads it, the
# emulator pushes it back.
PREFLIGHT_REPORT = "reports/preflight/{run_id}/report.json"
# A preflight's write check: a marker written, read back and deleted under --output.
PREFLIGHT_MARKER_FOLDER = "_preflight"


def report_path(run_id: str) -> str:
    """A run's report under --output: the job writes it; the erase run, the current view and
    the inventory read it."""
    return f"{REPORTS_FOLDER}/{RUN_ID_PARTITION}={run_id}/{REPORT_FILE}"


# --- manifests and receipts, under the manifests prefix ----------------------------------------

# One JSON object per line: "uri" always (s3://bucket/key, the key URL-decoded), "size" and
# "etag" when S3 sent them, "erased_at" in an erasure manifest (the deletion's eventTime). The
# trigger and the erase command write them; the job reads them.
URI_FIELD = "uri"
SIZE_FIELD = "size"
ETAG_FIELD = "etag"
ERASED_AT_FIELD = "erased_at"
MANIFEST_SUFFIX = ".jsonl"
# A run's receipt, next to its manifest: the trigger, reconcile and the erase command start it,
# the watcher records every end in it.
RECEIPT_SUFFIX = ".jobrun.json"


def manifest_name(run_id: str) -> str:
    return f"{run_id}{MANIFEST_SUFFIX}"


def receipt_name(run_id: str) -> str:
    return f"{run_id}{RECEIPT_SUFFIX}"


# --- what EMR Serverless says about a run -------------------------------------------------------

# The EventBridge event of a job run's state change (EMR Serverless User Guide, "Automating EMR
# Serverless with Amazon EventBridge"): the watcher accepts only it, the stack's rule matches
# it, the emulator sends it.
EVENT_SOURCE = "aws.emr-serverless"
EVENT_DETAIL_TYPE = "EMR Serverless Job Run State Change"
# Where the service writes a run's logs under the request's logUri; the emulator writes there
# too. The watcher's alert points at the driver's stdout: Spark's PythonRunner merges the
# driver's Python stderr (the job's log lines, a traceback) into the JVM's stdout; the JVM's
# own log4j lines are in stderr.
DRIVER_STDOUT_LOG = "SPARK_DRIVER/stdout.gz"


def job_run_logs(log_uri: str, application_id: str, job_run_id: str) -> str:
    """The folder of one run's logs: ``<logUri>/applications/<app>/jobs/<run>``."""
    return f"{log_uri.rstrip('/')}/applications/{application_id}/jobs/{job_run_id}"


# --- times ------------------------------------------------------------------------------------


def iso_utc(moment: datetime) -> str:
    """``2026-12-02T10:15:02.123Z``: the one format of every time this pipeline writes (reports,
    receipts, erasure requests). UTC, so strings of one format sort as the instants do;
    milliseconds, so an erasure's time compares with a run's start within the same second. Every
    reader parses with ``datetime.fromisoformat``, which also reads the ``+00:00`` seconds that
    reports written before this format carry."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    """The current time as :func:`iso_utc` writes it."""
    return iso_utc(datetime.now(UTC))
