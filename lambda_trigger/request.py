"""The StartJobRun request: one pure function shared by the Lambda and the backfill command.

Everything EMR Serverless needs to run the job is decided here, from plain data, so the
request a batch of uploads produces and the one an operator's backfill produces can only
differ where they mean to: the job's input flag, the run id and the client token. A preflight
differs from them there too, and in its pipeline tag and shorter timeout: never in the entry
point, archive, job package, model or Spark parameters it proves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

# The artifacts' names, the archive's Python, the JVM options, the source flags and the run-id
# rule are the contract's: the job, the build tools and the emulator read the same ones.
from fruits_contract import (
    ARTIFACTS_MANIFEST,
    COMPACT_FLAG,
    ENTRY_POINT,
    ERASE_FLAG,
    INPUT_FLAG,
    JOB_PACKAGE,
    JVM_OPTIONS,
    MANIFEST_FLAG,
    PREFLIGHT_FLAG,
    PREFLIGHT_REPORT,
    VENV_ARCHIVE,
    VENV_PYTHON,
    backfill_run_id,
    batch_run_id,
    erase_run_id,
)
from lambda_trigger import sizing

CLIENT_TOKEN_LENGTH = 64  # StartJobRun's clientToken: 1-64 of [A-Za-z0-9._-]
REPLACED_DIGITS = 12  # of the replaced job run id's digest, in a retry's client token
PIPELINE_TAG = "fruits-features"
# Tags every job run of this pipeline carries: the watcher reads them to know what it started.
PIPELINE_KEY = "pipeline"
RUN_ID_KEY = "run-id"
ATTEMPT_KEY = "attempt"
LAST_ATTEMPT_KEY = "last-attempt"
# A preflight (emr_serverless_job/preflight.py) is tagged as its own pipeline: the watcher leaves
# it alone (no receipt, no retry, no alert about photos), since it featurizes nothing.
PREFLIGHT_TAG = "fruits-features-preflight"
# Seconds of work on a warm application; the rest is the application's and the workers' start.
PREFLIGHT_TIMEOUT_MINUTES = 15
# GetJobRun's field -> StartJobRun's parameter, for what a resubmission repeats unchanged.
RESUBMITTED_FIELDS = {
    "applicationId": "applicationId",
    "executionRole": "executionRoleArn",
    "name": "name",
    "jobDriver": "jobDriver",
    "configurationOverrides": "configurationOverrides",
    "executionTimeoutMinutes": "executionTimeoutMinutes",
    "tags": "tags",
}

# Worker sizes: sizing.py, from the run's photos and bytes (a batch holds one small executor, a
# backfill every executor the stack allows). The largest executor, as a backfill gets it:
DRIVER_CORES, _DRIVER_HEAP, _DRIVER_OVERHEAD = sizing.DRIVER
DRIVER_MEMORY = f"{_DRIVER_HEAP}g"
DRIVER_MEMORY_OVERHEAD = f"{_DRIVER_OVERHEAD}g"
EXECUTOR_CORES = sizing.LARGE_EXECUTOR["onnx"][0]
EXECUTOR_MEMORY = {runtime: f"{heap}g" for runtime, (_, heap, _) in sizing.LARGE_EXECUTOR.items()}
EXECUTOR_MEMORY_OVERHEAD = {
    runtime: f"{overhead}g" for runtime, (_, _, overhead) in sizing.LARGE_EXECUTOR.items()
}
# A new account may hold 16 vCPUs of EMR Serverless at once (quota L-D05C8A75): a 2-vCPU
# driver and 3 executors of 4 vCPUs use 14 (template.yaml's MaxExecutors default).
DEFAULT_MAX_EXECUTORS = 3
# An erase run (emr_serverless_job/erase.py) runs no model and no Python worker: it reads the
# path columns and rewrites the few partitions that hold an erased photo, in the JVM. Its
# executors need no Python memory overhead (a 4-vCPU worker of 8 GB instead of 10-14) and
# two of them are plenty.
ERASE_SPARK_CONF = (
    ("spark.executor.memory", "7g"),
    ("spark.executor.memoryOverhead", "1g"),
    ("spark.dynamicAllocation.initialExecutors", "2"),
    ("spark.dynamicAllocation.maxExecutors", "2"),
    ("spark.default.parallelism", str(2 * EXECUTOR_CORES)),
)

# A compaction run (emr_serverless_job/compact.py) merges old batch partitions: like an erase
# run it reads and writes Parquet in the JVM only, so it gets the same small executors. It is
# tagged as its own pipeline, as a preflight is: the watcher neither retries nor alerts on it
# (a failed compaction loses nothing, and the next one finishes what it left), and its run id
# is fruits_contract.compaction_run_id (each is its own run; the job's reports say so).
COMPACT_TAG = "fruits-features-compaction"
COMPACT_SPARK_CONF = ERASE_SPARK_CONF
DRY_RUN_FLAG = "--dry-run"


@dataclass(frozen=True)
class Deployment:
    """Where the deployed stack keeps things; identical for every run of one stack."""

    application_id: str
    job_role_arn: str
    artifacts_uri: str  # s3://bucket/artifacts (no trailing slash)
    output_uri: str
    logs_uri: str
    weights_uri: str
    model_uri: str = ""
    runtime: str = "onnx"  # onnx: --model (image size from the model); tensorflow: --weights
    image_size: int = 224
    max_executors: int = DEFAULT_MAX_EXECUTORS
    timeout_minutes: int = 120

    def artifact(self, name: str) -> str:
        return f"{self.artifacts_uri}/{name}"


@dataclass(frozen=True)
class JobSource:
    """What one run reads: ``--input`` (a backfill), ``--manifest`` (a batch of uploads),
    ``--erase`` (an erasure manifest), ``--preflight`` (one photo, to check a deployment) or
    ``--compact`` (its value: the minimum age in days of the batch partitions it merges)."""

    flag: str  # one of fruits_contract.SOURCE_FLAGS
    uri: str
    run_id: str
    extra_args: tuple[str, ...] = ()
    spark_conf: tuple[tuple[str, str], ...] = ()  # over the deployment's sizing
    pipeline: str = PIPELINE_TAG  # the pipeline tag: the watcher acts on PIPELINE_TAG only
    timeout_minutes: int | None = None  # at most the deployment's
    photos: int | None = None  # what the run reads, when known: its size follows (sizing.py)
    total_bytes: int | None = None


@dataclass(frozen=True)
class Attempt:
    """Which submission of a run this is, and the last one the watcher may make after a failure.

    A batch from the Lambda starts as attempt 1 of ``MAX_ATTEMPTS``; a backfill by hand as 1 of
    1 unless ``--retries`` asks for more. Numbers keep counting across a redelivered batch, so
    client tokens never repeat and a batch that failed for good gets ``MAX_ATTEMPTS`` more.
    """

    number: int = 1
    last: int = 1

    @property
    def may_retry(self) -> bool:
        return self.number < self.last

    def next(self) -> Attempt:
        return Attempt(self.number + 1, self.last)

    def tags(self) -> dict[str, str]:
        return {ATTEMPT_KEY: str(self.number), LAST_ATTEMPT_KEY: str(self.last)}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Attempt | None:
        """None for a run this pipeline did not start; runs from before attempts: 1 of 1."""
        if tags.get(PIPELINE_KEY) != PIPELINE_TAG:
            return None
        try:
            return cls(int(tags.get(ATTEMPT_KEY, 1)), int(tags.get(LAST_ATTEMPT_KEY, 1)))
        except ValueError:
            return cls()


def client_token(run_id: str, attempt: Attempt, replaces: str = "") -> str:
    """The StartJobRun token of ``attempt``: the same for the same submission, new for a new one.

    The first attempt's token is the run id (a redelivered batch starts nothing new). A retry
    by the watcher names the job run it ``replaces`` (a digest of its id, which EMR Serverless
    never gives twice): a repeated end event maps to the same token, so to the same retry,
    while two backfills of one prefix (same run id, each first run a fresh token) never share
    a retry's token. Without ``replaces`` (a batch started again after it failed for good) the
    attempt number alone, which keeps counting in the receipt, keeps tokens apart.
    """
    if attempt.number == 1 and not replaces:
        return run_id
    token = f"{run_id}-attempt-{attempt.number}"
    if replaces:
        token += "-" + hashlib.sha256(replaces.encode()).hexdigest()[:REPLACED_DIGITS]
    if len(token) > CLIENT_TOKEN_LENGTH:
        raise ValueError(f"client token {token!r} is longer than {CLIENT_TOKEN_LENGTH}")
    return token


def for_erasure(manifest_uri: str, manifest: bytes) -> JobSource:
    """An erase run of an erasure manifest, sized for the small job it is."""
    return JobSource(
        flag=ERASE_FLAG,
        uri=manifest_uri,
        run_id=erase_run_id(manifest),
        spark_conf=ERASE_SPARK_CONF,
    )


def for_manifest(
    manifest_uri: str,
    manifest: bytes,
    photos: int | None = None,
    total_bytes: int | None = None,
) -> JobSource:
    """A batch's run, sized to its ``photos`` (and their ``total_bytes``, when S3 sent sizes)."""
    return JobSource(
        flag=MANIFEST_FLAG,
        uri=manifest_uri,
        run_id=batch_run_id(manifest),
        photos=photos,
        total_bytes=total_bytes,
    )


def for_backfill(
    input_uri: str,
    extra_args: tuple[str, ...] = (),
    photos: int | None = None,
    total_bytes: int | None = None,
) -> JobSource:
    """A backfill of ``input_uri``; sized to ``photos``/``total_bytes`` when they are known (the
    backfill command counts them), else as wide as the stack allows."""
    return JobSource(
        flag=INPUT_FLAG,
        uri=input_uri,
        run_id=backfill_run_id(input_uri),
        extra_args=extra_args,
        photos=photos,
        total_bytes=total_bytes,
    )


def for_preflight(
    deployment: Deployment, raw_uri: str, run_id: str, reference_model: str | None = None
) -> JobSource:
    """A preflight: the real run's entry point, archive, job package, model and Spark
    parameters, with ``--preflight`` as its source. ``raw_uri`` is a prefix ending in ``/``
    (the job reads the first photo under it) or one object. The job also reads
    ``artifacts.json`` (what the build measured) and, if given, an fp32 ``reference_model`` to
    compare the deployed int8 model with on the job's own CPUs."""
    extra = ["--preflight-artifacts", deployment.artifact(ARTIFACTS_MANIFEST)]
    if reference_model:
        extra += ["--preflight-reference", reference_model]
    return JobSource(
        flag=PREFLIGHT_FLAG,
        uri=raw_uri,
        run_id=run_id,
        extra_args=tuple(extra),
        pipeline=PREFLIGHT_TAG,
        timeout_minutes=PREFLIGHT_TIMEOUT_MINUTES,
    )


def for_compaction(min_age_days: float, run_id: str, dry_run: bool = False) -> JobSource:
    """A compaction run of the output's batch partitions at least ``min_age_days`` old; a dry
    run only reports its plan (in the driver's stdout) and writes nothing."""
    if not 0 <= min_age_days < float("inf"):
        raise ValueError(f"min_age_days {min_age_days}: 0 or more")
    return JobSource(
        flag=COMPACT_FLAG,
        uri=f"{min_age_days:g}",
        run_id=run_id,
        extra_args=(DRY_RUN_FLAG,) if dry_run else (),
        spark_conf=COMPACT_SPARK_CONF,
        pipeline=COMPACT_TAG,
    )


def preflight_report_uri(deployment: Deployment, run_id: str) -> str:
    return f"{deployment.output_uri}/{PREFLIGHT_REPORT.format(run_id=run_id)}"


def run_size(deployment: Deployment, source: JobSource) -> sizing.RunSize:
    """A run of known photos sized to them; a backfill (its count unknown here) as wide as the
    stack allows."""
    if source.photos is None:
        return sizing.widest(deployment.runtime, deployment.max_executors)
    return sizing.size_run(
        source.photos,
        runtime=deployment.runtime,
        max_executors=deployment.max_executors,
        total_bytes=source.total_bytes,
    )


def spark_submit_parameters(deployment: Deployment, source: JobSource) -> str:
    """The venv archive as every process's Python, the job package, and the run's size
    (``source.spark_conf`` replaces single settings: an erase run's smaller executors)."""
    conf = {
        "spark.archives": f"{deployment.artifact(VENV_ARCHIVE)}#environment",
        "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": VENV_PYTHON,
        "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": VENV_PYTHON,
        "spark.executorEnv.PYSPARK_PYTHON": VENV_PYTHON,
        # Added to whatever JVM options EMR sets (extraJavaOptions would replace them).
        "spark.emr-serverless.driverEnv.JAVA_TOOL_OPTIONS": JVM_OPTIONS,
        "spark.executorEnv.JAVA_TOOL_OPTIONS": JVM_OPTIONS,
        **run_size(deployment, source).spark_conf(),
    }
    conf.update(source.spark_conf)
    # An override never exceeds the stack's cap, and the executor counts stay ordered.
    top = min(int(conf["spark.dynamicAllocation.maxExecutors"]), deployment.max_executors)
    for name in ("minExecutors", "initialExecutors", "maxExecutors"):
        key = f"spark.dynamicAllocation.{name}"
        conf[key] = str(min(int(conf[key]), top))
    cap = "spark.dynamicAllocation.maxExecutors"  # an override never exceeds the stack's cap
    conf[cap] = str(min(int(conf[cap]), deployment.max_executors))
    parts = ["--py-files", deployment.artifact(JOB_PACKAGE)]
    for key, value in conf.items():
        parts += ["--conf", f"{key}={value}"]
    return " ".join(parts)


def start_job_run_request(
    deployment: Deployment, source: JobSource, client_token: str, attempt: Attempt | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``emr-serverless.start_job_run`` (boto3), ready to send.

    ``client_token`` makes the call idempotent on the service side: the Lambda passes the
    run id, so a redelivered batch cannot start a second run; a backfill passes a fresh one.
    """
    if deployment.runtime == "onnx":
        featurizer = ["--runtime", "onnx", "--model", deployment.model_uri]
    else:
        featurizer = ["--runtime", "tensorflow", "--weights", deployment.weights_uri]
        featurizer += ["--image-size", str(deployment.image_size)]
    arguments = [
        source.flag,
        source.uri,
        "--output",
        deployment.output_uri,
        *featurizer,
        "--run-id",
        source.run_id,
        *source.extra_args,
    ]
    return {
        "applicationId": deployment.application_id,
        "clientToken": client_token,
        "executionRoleArn": deployment.job_role_arn,
        "name": source.run_id,
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": deployment.artifact(ENTRY_POINT),
                "entryPointArguments": arguments,
                "sparkSubmitParameters": spark_submit_parameters(deployment, source),
            }
        },
        "configurationOverrides": {
            "monitoringConfiguration": {
                "s3MonitoringConfiguration": {"logUri": f"{deployment.logs_uri}/"}
            }
        },
        "executionTimeoutMinutes": min(
            deployment.timeout_minutes, source.timeout_minutes or deployment.timeout_minutes
        ),
        "tags": {
            PIPELINE_KEY: source.pipeline,
            RUN_ID_KEY: source.run_id,
            **(attempt or Attempt()).tags(),
        },
    }


def request_from_job_run(job_run: dict[str, Any]) -> dict[str, Any]:
    """A submitted run (GetJobRun's ``jobRun``) as the StartJobRun parameters that made it."""
    return {want: job_run[have] for have, want in RESUBMITTED_FIELDS.items() if have in job_run}


def resubmission(job_run: dict[str, Any], attempt: Attempt) -> dict[str, Any]:
    """The same run again (same manifest or input, same run id, so the job overwrites its own
    partition), as ``attempt``, with the client token of the retry of this job run."""
    request = request_from_job_run(job_run)
    run_id = request["tags"][RUN_ID_KEY]
    return {
        **request,
        "clientToken": client_token(run_id, attempt, replaces=job_run.get("jobRunId", "")),
        "tags": {**request["tags"], **attempt.tags()},
    }
