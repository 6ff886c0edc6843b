"""One run: list inputs, featurize each image once, reduce, write tables and the run report.

Output layout under ``--output`` (each table partitioned by run id; a rerun with the
same run id replaces its own folders and nothing else):

    features/run_id=<id>/   path, label, sha256, size_bytes, width, height, features,
                            pca_features, pca_model, featurized_at
    errors/run_id=<id>/     path, label, sha256, size_bytes, reason
    reports/run_id=<id>/report.json
    pca_model/              (default --pca-model) every PCA fit, one version each, and the
                            pointer to the current one (reduce.py): current.json,
                            versions/<id>/projection.npz + featurizer.json
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from py4j.protocol import Py4JError
from pyspark import SparkFiles, StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from emr_serverless_job import hadoopfs, inputs, reduce
from emr_serverless_job.config import JobConfig
from emr_serverless_job.featurize import (
    INPUT_COLUMNS,
    RESULT_SCHEMA,
    Counters,
    FeaturizerSpec,
    distribute,
    distribute_weights,
    make_function,
)
from emr_serverless_job.model import FEATURE_DIM, FP32, ModelError, file_sha256, read_onnx_model
from emr_serverless_job.run_report import RANDOM_WEIGHTS_WARNING, RunReport
from fruits_contract import (
    BACKFILL_MODE,
    BACKFILL_RUN_PREFIX,
    BATCH_RUN_PREFIX,
    ERRORS_TABLE,
    FEATURES_COLUMNS,
    FEATURES_TABLE,
    FEATURIZED_AT_COLUMN,
    MANIFEST_MODE,
    RUN_ID_PARTITION,
    digest_run_id,
    iso_utc,
    logs,
    now_iso,
    report_path,
)
from fruits_contract.logs import log

# Per-file cost Spark assumes when packing small files into read partitions. Each Python UDF
# task has a fixed overhead (BENCHMARKS-history.md, "openCostInBytes"); Spark's default (4 MiB)
# puts a few dozen small photos in a task, 128 KiB about a thousand in a 128 MiB split, so that
# overhead stays a small part of a task, while multi-megabyte photos still spread over many.
FILE_OPEN_COST_BYTES = 128 << 10
# At least this many read partitions per core, so small inputs still use every core and
# one slow partition does not leave the others idle at the end.
PARTITIONS_PER_CORE = 4
ERROR_SAMPLE_LOGGED = 20
# A run writes its features in as few Parquet files as this size allows (one for any batch
# the trigger sends) and its errors in one: at one batch every two minutes, Spark's one file
# per task (dozens of files of a few KB per batch, BENCHMARKS.md) left readers tens of
# thousands of files a day to open. 128 MiB is Parquet's default row group and a common read split.
TARGET_FILE_BYTES = 128 << 20
# A run with more rows than one file of this size splits them over up to one file per core,
# so that no core waits while one task encodes every float (the write stage of a backfill was
# one task while the other core waited: BENCHMARKS.md, "The write stage of a backfill").
# Files never get smaller than this, and compaction merges them later anyway.
MIN_FILE_BYTES = 8 << 20
# Whole-stage code generation fuses each distinct plan's operators (the featurizing pass, the
# counts, the moments, each write) into one class compiled with Janino on the driver before its
# first task: 1.6 s of a 5,000-photo pass's start was that compile (jstack). Fusing pays off
# over millions of narrow rows; a run's rows are few and heavy (photo bytes, 1,280 floats) and
# its plans only filter, select and move them. Off, 5,000-photo backfills were 0-1.6 s faster
# (BENCHMARKS.md); not measured on a million photos, so a request's own
# --conf spark.sql.codegen.wholeStage=true wins. A string: Spark's conf values are.
WHOLE_STAGE_CODEGEN = "false"
WHOLE_STAGE_CODEGEN_KEY = "spark.sql.codegen.wholeStage"
# What a features row takes on disk: 4 bytes per float of both vectors (floats barely
# compress) and the path, label, hash and sizes.
ROW_OVERHEAD_BYTES = 256


class ReconciliationError(RuntimeError):
    """Some inputs ended in neither table: the run is marked failed even though it wrote."""


@contextmanager
def timed(report: RunReport, stage: str) -> Iterator[None]:
    log("stage_started", stage=stage, run_id=report.run_id)
    start = time.perf_counter()
    yield
    seconds = round(time.perf_counter() - start, 3)
    report.timings_s[stage] = seconds
    log("stage_finished", stage=stage, run_id=report.run_id, seconds=seconds)


def default_run_id(found: inputs.Inputs, is_backfill: bool) -> str:
    """Derived from what was asked for, so the same request lands in the same partition (and
    in the one the trigger named: the contract's rule)."""
    return digest_run_id(
        BACKFILL_RUN_PREFIX if is_backfill else BATCH_RUN_PREFIX, found.fingerprint
    )


def configure_session(spark: SparkSession, config: JobConfig) -> None:
    """Set before anything is read, for the reads planned after: how photos are packed into
    tasks (``FILE_OPEN_COST_BYTES``, ``PARTITIONS_PER_CORE``), how many make one Arrow
    batch for the featurizer (``--batch-size``), and no whole-stage compile
    (``WHOLE_STAGE_CODEGEN``) unless the request set it."""
    conf = spark.conf
    if not spark.sparkContext.getConf().contains(WHOLE_STAGE_CODEGEN_KEY):
        conf.set(WHOLE_STAGE_CODEGEN_KEY, WHOLE_STAGE_CODEGEN)
    partitions = str(spark.sparkContext.defaultParallelism * PARTITIONS_PER_CORE)
    conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.batch_size))
    conf.set("spark.sql.files.openCostInBytes", str(FILE_OPEN_COST_BYTES))
    conf.set("spark.sql.files.minPartitionNum", partitions)
    # A manifest names its files one by one, and Spark lists more than 32 paths in a job of
    # one task per path (up to 10,000): seconds of task overhead where a few tasks per core
    # list the same paths in under one (BENCHMARKS-history.md).
    conf.set("spark.sql.sources.parallelPartitionDiscovery.parallelism", partitions)


def _jit_max_tier(spark: SparkSession) -> int | None:
    """The driver JVM's highest compilation tier (1: C1 only, 4: C1 and C2); None where
    the JVM is not HotSpot. Shows whether the JVM options a run was given took effect."""
    jvm = spark.sparkContext._jvm
    try:
        bean_class = jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean")
        bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(bean_class)
        return int(bean.getVMOption("TieredStopAtLevel").getValue())
    except Py4JError:
        return None


def _collectors(spark: SparkSession) -> list[str] | None:
    """The driver JVM's garbage collectors ("PS Scavenge" and "PS MarkSweep" for ParallelGC,
    "G1 Young Generation"... for G1): shows which one EMR's runtime gave the run."""
    try:
        beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory
        return sorted(str(bean.getName()) for bean in beans.getGarbageCollectorMXBeans())
    except Py4JError:
        return None


def label_of(path: F.Column) -> F.Column:
    """The parent folder's name, exactly as written (spaces and non-ASCII kept)."""
    return F.element_at(F.split(path, "/"), -2)


def features_files(rows: int, k: int, cores: int = 1) -> int:
    """How many files ``rows`` feature rows of ``k`` PCA values are written in: as few as
    ``TARGET_FILE_BYTES`` allows, or one per core while each still holds ``MIN_FILE_BYTES``."""
    data_bytes = rows * (4 * (FEATURE_DIM + k) + ROW_OVERHEAD_BYTES)
    by_size = -(-data_bytes // TARGET_FILE_BYTES)
    by_cores = min(cores, data_bytes // MIN_FILE_BYTES)
    return max(1, by_size, by_cores)


def _write(spark: SparkSession, frame: DataFrame, uri: str) -> None:
    """Replace this run's folder: a rerun never duplicates rows, other runs are untouched.

    The new files are added beside the old ones, which go only once the new are written:
    Spark's overwrite deletes the folder first, and a refit (a backfill reruns its prefix's
    run id) left every photo of that folder without a row while it wrote, and for good if the
    run failed there. Meanwhile a reader sees both, and the current view the newer. A rerun
    after a failure half way removes the partial files with the old ones.
    """
    before = hadoopfs.files_in(spark, uri)
    frame.write.mode("append").parquet(uri)
    for old in before:
        hadoopfs.delete(spark, old)


def _as_errors(rejected: DataFrame) -> DataFrame:
    """Rejections that were never decoded, in the error table's columns."""
    return rejected.select(
        "path",
        label_of(F.col("path")).alias("label"),
        F.lit(None).cast("string").alias("sha256"),
        "size_bytes",
        "reason",
    )


def _weights_identity(shipped: str | None) -> str | None:
    """sha256 of the weights file as the workers get it (works for s3:// weights too)."""
    if shipped is None:
        return None
    return file_sha256(SparkFiles.get(shipped))


@dataclass(frozen=True)
class Featurizer:
    """The runtime a run uses, resolved on the driver before any input is read."""

    config: JobConfig  # with the image size resolved
    identity: str  # what a saved PCA model must have been fitted with
    weights: str  # where the weights came from, for the report
    weights_sha256: str | None
    random_weights: bool
    model: str | None = None  # the .onnx file (runtime onnx)
    model_sha256: str | None = None
    shipped_weights: str | None = None
    shipped_model: str | None = None
    precision: str = FP32  # of the features: a PCA model is only reused at the same one

    @property
    def image_size(self) -> int:
        return self.config.image_size or 0  # resolved: always set once the model is read


def resolve_featurizer(config: JobConfig, spark: SparkSession) -> Featurizer:
    """Ship the model or weights and check them; a mismatch stops the run here.

    An exported model carries the sha256 of the Keras weights it came from, so a PCA
    model fitted on TensorFlow features is accepted by ONNX runs of the same weights
    (their features agree to 1e-4) and vice versa.
    """
    if config.runtime == "onnx" and config.model:
        shipped = distribute(spark, config.model)
        local = SparkFiles.get(shipped)
        info = read_onnx_model(local)
        if config.image_size is not None and config.image_size != info.image_size:
            raise ModelError(
                f"--image-size {config.image_size} does not match the model: {config.model} "
                f"takes {info.image_size} px images (drop --image-size, or export at that size)"
            )
        model_sha256 = file_sha256(local)
        return Featurizer(
            replace(config, image_size=info.image_size),
            identity=info.weights_sha256 or model_sha256,
            weights=info.weights_source,
            weights_sha256=info.weights_sha256,
            random_weights=info.is_random,
            model=config.model,
            model_sha256=model_sha256,
            shipped_model=shipped,
            precision=info.precision,
        )
    shipped_weights = distribute_weights(spark, config.weights)
    weights_sha256 = _weights_identity(shipped_weights)
    return Featurizer(
        config,
        identity=weights_sha256 or config.weights.describe(),
        weights=config.weights.describe(),
        weights_sha256=weights_sha256,
        random_weights=config.weights.is_random,
        shipped_weights=shipped_weights,
    )


def _load_reduction(
    config: JobConfig, spark: SparkSession, report: RunReport, chosen: Featurizer
) -> reduce.Reduction | None:
    """A manifest run's saved reduction, checked against this run before any work is done."""
    loaded = reduce.load(
        spark,
        config.pca_model,
        image_size=chosen.image_size,
        weights=chosen.identity,
        precision=chosen.precision,
    )
    if loaded is None:
        report.pca["status"] = (
            f"no PCA model at {config.pca_model} yet: pca_features left empty; "
            "run a backfill (--input) to fit one"
        )
        report.warnings.append(str(report.pca["status"]))
    else:
        report.pca["status"] = (
            f"loaded version {loaded.info.version} from {config.pca_model} "
            f"(fitted by run {loaded.info.fitted_by_run})"
        )
    return loaded


def _fit_reduction(
    config: JobConfig,
    spark: SparkSession,
    ok: DataFrame,
    n_ok: int,
    report: RunReport,
    chosen: Featurizer,
) -> reduce.Reduction | None:
    """A backfill's new PCA version, fitted on its decodable images but not saved yet
    (``write_tables`` saves it); None, with a warning in the report, when too few decoded."""
    if n_ok < reduce.MIN_ROWS_TO_FIT:
        report.pca["status"] = (
            f"not fitted: {n_ok} decodable image(s), at least {reduce.MIN_ROWS_TO_FIT} needed"
        )
        report.warnings.append(str(report.pca["status"]))
        return None
    fitted = reduce.fit(
        spark,
        ok,
        k=config.pca_k,
        variance=config.pca_variance,
        scaling=config.pca_scaling,
        image_size=chosen.image_size,
        weights=chosen.identity,
        precision=chosen.precision,
        run_id=report.run_id,
        rows=n_ok,
        version=reduce.new_version(datetime.now(UTC)),
    )
    report.pca["status"] = (
        f"fitted on {n_ok} images, saved as version {fitted.info.version} in {config.pca_model}"
    )
    return fitted


def run(config: JobConfig, spark: SparkSession) -> RunReport:
    """Run the job on an existing session and return its report (also written as JSON).

    One function per stage, in the order a run goes through them, each recording its part of
    the report as it ends. A manifest run loads its PCA version before listing, so a mismatch
    stops it before any work; the featurized images stay cached while the stages that read
    them run, and no longer.
    """
    configure_session(spark, config)
    started = time.perf_counter()
    started_clock = datetime.now(UTC)
    chosen = resolve_featurizer(config, spark)
    config = chosen.config
    report = start_report(config, chosen, iso_utc(started_clock))
    preloaded = None if config.is_backfill else _load_reduction(config, spark, report, chosen)
    found = list_inputs(config, spark, report)
    with featurize_images(config, spark, report, chosen, found, preloaded) as featurized:
        reduced = reduce_features(config, spark, report, chosen, featurized, preloaded)
        tables = write_tables(config, spark, report, reduced, featurized, started_clock)
        _log_error_sample(featurized.errors, report.run_id)
        # Read after every stage has run: any recomputation of the UDF would show here.
        report.images_featurized = featurized.counters.images.value
        report.models_built = featurized.counters.models_built.value
    report_uri = write_report(config, spark, report, tables, started)
    check_accounted(report, found.expected, report_uri)
    return report


def start_report(config: JobConfig, chosen: Featurizer, started_at: str) -> RunReport:
    """The report as the run starts: what it was asked for and what it runs with. Its run id is
    the one asked for until the inputs name the default (``list_inputs``). Random weights are
    said here, in the report and the log, before anyone can mistake the features for real."""
    report = RunReport(
        run_id=config.run_id or "",
        mode=BACKFILL_MODE if config.is_backfill else MANIFEST_MODE,
        source=config.input or config.manifest or "",
        output=config.output,
        started_at=started_at,
        runtime=config.runtime,
        model=chosen.model,
        model_sha256=chosen.model_sha256,
        weights=chosen.weights,
        weights_sha256=chosen.weights_sha256,
        random_weights=chosen.random_weights,
        image_size=chosen.image_size,
        batch_size=config.batch_size,
        featurizer=reduce.featurizer_record(chosen.image_size, chosen.identity, chosen.precision),
    )
    if report.random_weights:
        report.warnings.append(RANDOM_WEIGHTS_WARNING)
        log("random_weights", logs.WARNING, detail=RANDOM_WEIGHTS_WARNING)
    return report


def list_inputs(config: JobConfig, spark: SparkSession, report: RunReport) -> inputs.Inputs:
    """Every input the run was asked for, each to be read or already rejected with a reason.
    The inputs name the default run id, so the report carries its final id from here on."""
    with timed(report, "list"):
        if config.input is not None:
            found = inputs.from_folder(spark, config.input, config.max_file_bytes)
        else:
            found = inputs.from_manifest(spark, config.manifest or "", config.max_file_bytes)
    report.run_id = config.run_id or default_run_id(found, config.is_backfill)
    report.duplicates_skipped = found.duplicates
    return found


@dataclass(frozen=True)
class Featurized:
    """What the featurizing pass leaves, cached, for the stages after it."""

    ok: DataFrame  # the decoded images: features (and pca_features when projected already)
    errors: DataFrame  # every input that is no features row, in the error table's columns
    rows: int  # len(ok), counted by the pass
    counters: Counters  # images through the model, models built: read once every stage ran


@contextmanager
def featurize_images(
    config: JobConfig,
    spark: SparkSession,
    report: RunReport,
    chosen: Featurizer,
    found: inputs.Inputs,
    preloaded: reduce.Reduction | None,
) -> Iterator[Featurized]:
    """Each image through the model exactly once, and every input that became no features row
    gathered in one error table. A context, not a function, because both stay cached while the
    stages inside it read them and must be released when they end, whether or not they fail."""
    counters = Counters.create(spark)
    decoded = _decoded(config, spark, chosen, found, counters, preloaded)
    errors: DataFrame | None = None
    try:
        with timed(report, "featurize"):
            outcomes = _count_by(decoded, "error")  # fills the cache: the one pass over images
        rejected, rejections = _rejections(spark, found, decoded, outcomes.total())
        errors = (
            decoded.filter(F.col("error").isNotNull())
            .select("path", "label", "sha256", "size_bytes", F.col("error").alias("reason"))
            .unionByName(_as_errors(rejected))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        rows = record_counts(report, outcomes, rejections)
        ok = decoded.filter(F.col("error").isNull()).drop("error")
        yield Featurized(ok=ok, errors=errors, rows=rows, counters=counters)
    finally:
        decoded.unpersist()
        found.rejected.unpersist()  # cached by _rejections when Spark counted it
        if errors is not None:
            errors.unpersist()


def _decoded(
    config: JobConfig,
    spark: SparkSession,
    chosen: Featurizer,
    found: inputs.Inputs,
    counters: Counters,
    preloaded: reduce.Reduction | None,
) -> DataFrame:
    """The images through the featurizing function, to be cached by its first action. A
    manifest run projects in the same pass, with the version it loaded; a backfill fits first."""
    spec = FeaturizerSpec(
        image_size=chosen.image_size,
        weights=config.weights,
        batch_size=config.batch_size,
        weights_file=chosen.shipped_weights,
        runtime=config.runtime,
        model_file=chosen.shipped_model,
    )
    projection = spark.sparkContext.broadcast(preloaded.projection) if preloaded else None
    return (
        found.images.select(*INPUT_COLUMNS)
        .mapInArrow(make_function(spec, counters, projection), RESULT_SCHEMA)
        .select(
            "path",
            label_of(F.col("path")).alias("label"),
            *(name for name in RESULT_SCHEMA.names if name != "path"),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )


def _rejections(
    spark: SparkSession, found: inputs.Inputs, decoded: DataFrame, read: int
) -> tuple[DataFrame, Counter[str | None]]:
    """The inputs rejected before decoding, with their count per reason (counted by the
    driver where it made every rejection, by a Spark job otherwise). Spark's scan skips
    zero-length files silently, so when the listing named more files than were read or
    rejected, each listed file with no row yet is looked at and given one."""
    rejections: Counter[str | None]
    if found.rejections is not None:
        rejected, rejections = found.rejected, Counter(found.rejections)
    else:  # cached, so that the rows counted are the rows the errors table gets
        rejected = found.rejected.persist(StorageLevel.MEMORY_AND_DISK)
        rejections = _count_by(rejected, "reason")
    if found.listed is not None and read + rejections.total() < found.expected:
        seen = decoded.select("path").unionByName(rejected.select("path"))
        rejected = rejected.unionByName(
            inputs.unscanned(spark, found.listed, seen, found.gone_reason)
        )
        rejections = _count_by(rejected, "reason")
    return rejected, rejections


def record_counts(
    report: RunReport, outcomes: Counter[str | None], rejections: Counter[str | None]
) -> int:
    """Put the run's counts in the report and return how many images were featurized.

    ``outcomes`` counts the featurizing pass's rows by error (None: featurized), ``rejections``
    the inputs never decoded, by reason. Throughput counts every image the pass read, those it
    could not decode too: each took its turn through the featurizing function.
    """
    failed = Counter(outcomes)
    featurized = failed.pop(None, 0)
    report.errors_by_reason = dict(failed + rejections)
    report.features = featurized
    report.errors = sum(report.errors_by_reason.values())
    report.inputs = featurized + report.errors
    featurize_s = report.timings_s["featurize"]
    read = featurized + failed.total()
    report.images_per_second = round(read / featurize_s, 2) if featurize_s else 0.0
    return featurized


@dataclass(frozen=True)
class Reduced:
    """The PCA stage's result: the version that projects this run's rows, and those rows."""

    reduction: reduce.Reduction | None  # None: no version (too few images, or none fitted yet)
    features: DataFrame  # the features table's rows; pca_features null without a version


def reduce_features(
    config: JobConfig,
    spark: SparkSession,
    report: RunReport,
    chosen: Featurizer,
    featurized: Featurized,
    preloaded: reduce.Reduction | None,
) -> Reduced:
    """A backfill fits a new version on its decoded images and projects them with it; a manifest
    run's images were projected by the featurizing pass, with the version it loaded."""
    with timed(report, "pca"):
        reduction = (
            _fit_reduction(config, spark, featurized.ok, featurized.rows, report, chosen)
            if config.is_backfill
            else preloaded
        )
    if reduction is not None:
        report.pca.update(pca_record(reduction.info, config.pca_model))
    if config.is_backfill and reduction is not None:
        features = reduce.apply(spark, reduction, featurized.ok.drop("pca_features"))
    else:  # projected by the featurizing pass already (null when there is no model)
        features = reduce.in_space(featurized.ok, reduction)
    return Reduced(reduction, features)


def pca_record(info: reduce.ReductionInfo, model: str) -> dict[str, object]:
    """What the report says of the version that projected the run, beside its status."""
    return {
        "k": info.k,
        "scaling": info.scaling,
        "precision": info.precision,
        "explained_variance": round(info.explained_variance, 6),
        "component_variance": [round(v, 6) for v in info.component_variance],
        "model": model,
        "version": info.version,
    }


def table_uris(output: str, run_id: str) -> dict[str, str]:
    """This run's partition of each table, in the order the report lists them."""
    return {
        table: f"{output}/{table}/{RUN_ID_PARTITION}={run_id}"
        for table in (FEATURES_TABLE, ERRORS_TABLE)
    }


def write_tables(
    config: JobConfig,
    spark: SparkSession,
    report: RunReport,
    reduced: Reduced,
    featurized: Featurized,
    featurized_at: datetime,
) -> dict[str, str]:
    """Replace this run's partitions of the features and errors tables (``_write``), the
    features in files sized to their rows (``features_files``), the errors in one; returns
    the partitions' URIs. A backfill's new version is saved before its rows, so readers can
    re-project them the moment they appear, and made current only after them."""
    tables = table_uris(config.output, report.run_id)
    reduction = reduced.reduction
    k = reduction.info.k if reduction is not None else 0
    files = features_files(featurized.rows, k, spark.sparkContext.defaultParallelism)
    refit = config.is_backfill and reduction is not None
    with timed(report, "write"):
        if refit:
            reduce.save_version(spark, reduction, config.pca_model)
        _write(
            spark,
            reduced.features.coalesce(files)
            .withColumn(FEATURIZED_AT_COLUMN, F.lit(featurized_at))
            .select(*FEATURES_COLUMNS),
            tables[FEATURES_TABLE],
        )
        _write(spark, featurized.errors.coalesce(1), tables[ERRORS_TABLE])
        if refit:
            reduce.point_to(spark, reduction, config.pca_model)
    return tables


def write_report(
    config: JobConfig,
    spark: SparkSession,
    report: RunReport,
    tables: dict[str, str],
    started: float,
) -> str:
    """Complete the report (tables, total time, the Spark it ran on), write it as JSON beside
    the tables and log the run's end; returns the report's URI. It is written before the
    accounting is checked, so a run that fails that check leaves the report saying why."""
    report_uri = f"{config.output}/{report_path(report.run_id)}"
    report.tables = {**tables, "report": report_uri}
    report.timings_s["total"] = round(time.perf_counter() - started, 3)
    report.finished_at = now_iso()
    report.spark = spark_record(spark)
    hadoopfs.write_bytes(spark, report_uri, report.to_json().encode())
    log(
        "run_finished",
        run_id=report.run_id,
        inputs=report.inputs,
        features=report.features,
        errors=report.errors,
        images_per_second=report.images_per_second,
        report=report_uri,
    )
    return report_uri


def spark_record(spark: SparkSession) -> dict[str, object]:
    """The Spark and the driver's Python the run ran on, as the report records them: what shows
    whether a deployment's interpreter and JVM options took effect."""
    return {
        "version": spark.version,
        "master": spark.sparkContext.master,
        "default_parallelism": spark.sparkContext.defaultParallelism,
        "driver_python": sys.executable,
        "driver_python_resolved": os.path.realpath(sys.executable),
        "driver_jit_max_tier": _jit_max_tier(spark),
        "driver_gc": _collectors(spark),
        "whole_stage_codegen": spark.conf.get(WHOLE_STAGE_CODEGEN_KEY),
    }


def check_accounted(report: RunReport, expected: int, report_uri: str) -> None:
    """Every input named up front must have ended in a table: otherwise the run failed (exit
    1), even though it wrote, and the report it wrote says which counts differ."""
    if report.inputs != expected:
        raise ReconciliationError(
            f"{expected} inputs were named but {report.inputs} were accounted for "
            f"({report.features} features + {report.errors} errors); see {report_uri}"
        )


def _count_by(frame: DataFrame, column: str) -> Counter[str | None]:
    """Rows per value of ``column`` in one Spark job (None counts the nulls)."""
    return Counter({row[column]: row["count"] for row in frame.groupBy(column).count().collect()})


def _log_error_sample(errors: DataFrame, run_id: str) -> None:
    """A few rejected inputs (``ERROR_SAMPLE_LOGGED``), paths included, in the driver's log: why
    a run rejected photos shows without opening the errors table, which holds every one."""
    for row in errors.limit(ERROR_SAMPLE_LOGGED).collect():
        log(
            "input_rejected",
            logs.WARNING,
            run_id=run_id,
            path=row["path"],
            reason=row["reason"],
        )
