"""Run one StartJobRun request here the way EMR Serverless runs it, and answer like GetJobRun.

What the service does, and what this does in its place:

- the driver starts in a fresh working directory that holds every ``spark.archives`` entry
  unpacked under its ``#alias`` (``./environment``), with the environment the request's
  ``spark.emr-serverless.driverEnv.*`` confs give, and nothing of the caller's Python;
- executors are separate JVMs (Spark's ``local-cluster`` master: a worker per executor) that
  fetch and unpack the same archives in their own working directories, as Spark does on EMR,
  and start in an environment of their own: the container's plus ``spark.executorEnv.*``,
  none of the driver's ``driverEnv`` (the EMR Serverless User Guide sets PYSPARK_PYTHON once
  per side, "Using Python libraries with EMR Serverless"). ``local-cluster`` would start them
  in the driver JVM's environment, so their ``java`` is a launcher that takes it away;
- the entry point, ``--py-files`` and archives are read from ``s3://`` by Spark itself, through
  a local mirror of what the request reads and nothing else (``reads.py``: the artifacts it
  names, its input prefix or its manifest and the photos listed, the output files its kind of
  run consults; ``mirror.py``: keys a folder cannot hold as they are are left out and listed);
- ``PYSPARK_PYTHON`` and ``PYSPARK_DRIVER_PYTHON`` are followed through the archive's links
  and answered for as the 7.x image would (``image.py``: Python 3.9 at ``/usr/bin/python3``,
  nothing else outside the archive), not by this machine's own Pythons;
- the driver and each executor are held to their worker's size (memory + memoryOverhead):
  one over it is killed, the JVM with its Python workers, as the service kills a worker
  (``limits.py``; ``emulator.memory`` has the limits, each worker's peak and the kills);
- nothing is written back to S3 unless asked (``push``), and then only the files the run
  created under its own output partitions (``--output``/``*/run_id=<--run-id>/``) and the
  prefixes named in ``push_also``, never over an object that exists; driver and executor logs
  then land under the request's ``logUri`` as
  ``applications/<app>/jobs/<run>/SPARK_DRIVER/stdout.gz`` (and ``stderr.gz``,
  ``SPARK_EXECUTOR/<id>/...``).

Not emulated (also listed in every result, ``emulator.notEmulated``): see NOT_EMULATED.
"""

from __future__ import annotations

import gzip
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emr_emulator.image import pythons_problem
from emr_emulator.limits import (
    DRIVER,
    KILLED_EXIT_CODE,
    Kill,
    Watchdog,
    container_mib,
    killed_details,
)
from emr_emulator.mirror import Mirror, Pushed, PushScope, remote_exists
from emr_emulator.reads import Reads, reads
from emr_emulator.releases import spark_version_of
from emr_emulator.submit import (
    Launch,
    RequestError,
    launch,
    local_cluster,
    s3_mirror_conf,
    spark_submit_command,
)
from fruits_contract import job_run_logs

NOT_EMULATED = (
    "IAM: every S3 call is allowed, whatever the job role says",
    "EMRFS: Hadoop's local file system serves s3:// from a copy; no _$folder$ markers, and "
    "keys a folder cannot hold ('//', '.', '..', '.*.crc') are not seen",
    "network isolation: the driver and executors reach whatever this machine reaches",
    "capacity: no maximum capacity and no check of worker sizes; memory is held to each "
    "worker's size by sampling its processes' RSS every 0.2 s (a shorter spike, or page cache, "
    "is not seen)",
    "pre-initialized capacity and dynamic allocation (the executors are fixed)",
    "JAVA_HOME: the driver's names the executors' java launcher",
)
EXECUTOR_MAIN = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
LAUNCHER = "java-launcher"
WORKERS = 2  # executors, each a separate JVM (the machine's 2 cores are enough)
SPARK_HOME_PARTS = ("bin", "jars", "python", "sbin")
# What the driver inherits from this process: enough to find Java and decode file names.
INHERITED = ("JAVA_HOME", "LANG", "LC_ALL", "TZ")
DEFAULT_LANG = "C.UTF-8"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # no virtualenv of the caller's
FAILURE_LINES = 5
FAILURE_MARKERS = ("Exception", "Error", "Cannot run program")
# The states a job run ends in, as GetJobRun names them.
SUCCESS, FAILED, CANCELLED = "SUCCESS", "FAILED", "CANCELLED"
DEFAULT_TIMEOUT_MINUTES = 720  # the service's executionTimeoutMinutes when a request has none
STATE_DETAILS_FAILED = (
    "Job failed, please check complete logs in configured logging destination. "
    "ExitCode: {code}. Last few exceptions: {lines}"
)


def _now() -> datetime:
    return datetime.now(UTC)


def spark_home(folder: Path) -> Path:
    """Links to the installed PySpark, so that executors' work dirs are made in ``folder``."""
    import pyspark

    installed = Path(pyspark.__file__).parent
    folder.mkdir(parents=True, exist_ok=True)
    for part in SPARK_HOME_PARTS:
        if (installed / part).exists():
            (folder / part).symlink_to(installed / part)
    return folder


def unpack(archive: Path, into: Path) -> None:
    """As Spark (Hadoop's FileUtil) unpacks an archive: ``tar`` keeps links as they are."""
    into.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".zip", ".jar"):
        with zipfile.ZipFile(archive) as packed:
            packed.extractall(into)
    else:
        subprocess.run(["tar", "-xf", str(archive), "-C", str(into)], check=True)


def _local(uri: str, mirror: Mirror) -> Path:
    parts = urlsplit(uri)
    if parts.scheme in ("s3", "s3a"):
        return mirror.path(parts.netloc, parts.path.lstrip("/"))
    return Path(parts.path if parts.scheme == "file" else uri)


def failure_details(code: int, stderr: str, first: str | None = None) -> str:
    """The last exception lines of the driver's log, as the service quotes them; ``first``
    (a worker killed for its memory) before them."""
    lines = [
        line.strip() for line in stderr.splitlines() if any(m in line for m in FAILURE_MARKERS)
    ]
    quoted = [*([first] if first else []), *lines[-FAILURE_LINES:]]
    return STATE_DETAILS_FAILED.format(code=code, lines=" | ".join(quoted))


def pull(s3: Any, run: Launch, mirror: Mirror) -> Reads:
    """Copy what ``run`` reads into ``mirror``: the objects its request names, then what its
    manifest lists and the PCA version its pointer names (``reads.reads``)."""
    wanted = reads(run)
    mirror.pull_reads(s3, wanted)
    texts = {}
    for name, at in (("manifest", wanted.manifest), ("pointer", wanted.pointer)):
        if at is not None and at in mirror.snapshot:
            texts[name] = mirror.path(*at).read_text(errors="replace")
    if texts:
        wanted = reads(run, **texts)
        mirror.pull_reads(s3, wanted)
    return wanted


def _upload_logs(
    s3: Any, log_uri: str, application_id: str, job_run_id: str, logs: dict[str, Path]
) -> tuple[list[str], list[str]]:
    """Every log gzipped under the service's layout, never over an existing object (a real
    run's logs, when the emulator replays it); returns the URIs written and those kept."""
    parts = urlsplit(job_run_logs(log_uri, application_id, job_run_id))
    prefix = parts.path.strip("/")
    written, kept = [], []
    for name, path in logs.items():
        if not path.is_file():
            continue
        key = f"{prefix}/{name}.gz"
        uri = f"s3://{parts.netloc}/{key}"
        if remote_exists(s3, parts.netloc, key):
            kept.append(uri)
            continue
        s3.put_object(Bucket=parts.netloc, Key=key, Body=gzip.compress(path.read_bytes()))
        written.append(uri)
    return written, kept


def _executor_logs(home: Path) -> dict[str, Path]:
    logs = {}
    for app in sorted((home / "work").glob("app-*")):
        for executor in sorted(p for p in app.iterdir() if p.is_dir()):
            for stream in ("stdout", "stderr"):
                logs[f"SPARK_EXECUTOR/{executor.name}/{stream}"] = executor / stream
    return logs


def _container_environment(home: Path) -> dict[str, str]:
    """What every process of the run starts with, as a container's own environment."""
    env = {"PATH": SYSTEM_PATH, "HOME": str(home.parent), "SPARK_HOME": str(home)}
    env.update({name: os.environ[name] for name in INHERITED if name in os.environ})
    env.setdefault("LANG", DEFAULT_LANG)
    return env


def _java_home(env: dict[str, str]) -> str | None:
    """The Java that ``env`` runs: its JAVA_HOME, else the ``java`` on its PATH."""
    if env.get("JAVA_HOME"):
        return env["JAVA_HOME"]
    found = shutil.which("java", path=env.get("PATH", SYSTEM_PATH))
    return str(Path(found).resolve().parent.parent) if found else None


def java_launcher(folder: Path, run: Launch, container: dict[str, str]) -> Path | None:
    """A JAVA_HOME whose ``bin/java`` runs the real one, and starts executors (the only JVMs
    whose main class is CoarseGrainedExecutorBackend) without the driver's ``driverEnv``:
    each name goes back to its container value or is unset, unless ``spark.executorEnv.*``
    set it for executors (Spark's worker already put that value in). None without Java."""
    driver_java = _java_home({**container, **run.driver_env})
    executor_java = _java_home(container)
    if driver_java is None or executor_java is None:
        return None
    unsets, sets = [], []
    for name in sorted({*run.driver_env, "JAVA_HOME"} - set(run.executor_env)):
        if name in container:
            sets.append(shlex.quote(f"{name}={container[name]}"))
        else:
            unsets += ["-u", shlex.quote(name)]
    executor = shlex.quote(f"{executor_java}/bin/java")
    script = "\n".join(
        [
            "#!/bin/sh",
            "# emr_emulator: an executor starts in its own environment, not the driver's.",
            "for arg do",
            f'  if [ "$arg" = {EXECUTOR_MAIN} ]; then',
            f'    exec env {" ".join([*unsets, *sets])} {executor} "$@"',
            "  fi",
            "done",
            f'exec {shlex.quote(f"{driver_java}/bin/java")} "$@"',
            "",
        ]
    )
    launcher = folder / LAUNCHER
    (launcher / "bin").mkdir(parents=True)
    java = launcher / "bin" / "java"
    java.write_text(script)
    java.chmod(0o755)
    return launcher


def _driver_environment(
    run: Launch, container: dict[str, str], launcher: Path | None
) -> dict[str, str]:
    """The container's environment and ``driverEnv``; JAVA_HOME names the launcher, which
    runs the driver's Java (the request's JAVA_HOME, if it gives one) for the driver."""
    env = {**container, **run.driver_env}
    if launcher is not None:
        env["JAVA_HOME"] = str(launcher)
    return env


@dataclass(frozen=True)
class JobRun:
    """The job run as the service names it when it accepts the request."""

    application_id: str
    job_run_id: str
    release_label: str | None
    created: datetime
    timeout: int  # seconds: the request's executionTimeoutMinutes

    @classmethod
    def accepted(
        cls,
        request: dict[str, Any],
        application_id: str | None,
        job_run_id: str | None,
        release_label: str | None,
    ) -> JobRun:
        """The run as StartJobRun accepts it: the ids of a real run being replayed
        (``--job-run-id``), else the request's application (or ``local``) and a fresh id; the
        service's default timeout when the request gives none."""
        minutes = int(request.get("executionTimeoutMinutes", DEFAULT_TIMEOUT_MINUTES))
        return cls(
            application_id or request.get("applicationId", "local"),
            job_run_id or uuid.uuid4().hex[:16],
            release_label,
            _now(),
            60 * minutes,
        )


@dataclass(frozen=True)
class Workdir:
    """A job run's folder as its driver starts in it: the mirror of what the request reads, a
    Spark home whose executors' work dirs are made here, the container's environment and the
    launcher that keeps the driver's environment from the executors."""

    folder: Path
    mirror: Mirror
    wanted: Reads
    buckets: list[str]  # every bucket the run reads or writes: each a mount of s3://
    home: Path
    container: dict[str, str]
    launcher: Path | None  # None: no Java found, executors get the driver's environment
    warnings: tuple[str, ...] = ()

    @property
    def driver_dir(self) -> Path:
        return self.folder / "driver"

    @property
    def stdout(self) -> Path:
        return self.folder / "driver.stdout"

    @property
    def stderr(self) -> Path:
        return self.folder / "driver.stderr"


@dataclass(frozen=True)
class Ending:
    """How a job run ends, as GetJobRun says it (state, stateDetails), and the driver's exit
    code (0 when it never started)."""

    state: str = SUCCESS
    details: str = ""
    code: int = 0


@dataclass(frozen=True)
class Driven:
    """What watching the driver found: how it ended, how long it ran, what held its memory."""

    master: str
    command: list[str]  # the spark-submit command line, run or not
    ending: Ending
    seconds: float
    watchdog: Watchdog | None  # None: no /proc here, or the driver never started
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Synced:
    """What went back to S3: the run's own files per bucket, within ``scope``, and its logs."""

    scope: PushScope
    pushed: dict[str, Pushed]
    logs: list[str]  # log objects written
    logs_kept: list[str]  # log objects already there, left as they were


def release_warnings(release_label: str | None, pyspark_version: str) -> list[str]:
    """What the emulator says when the request's release runs another Spark than it does."""
    expected = spark_version_of(release_label) if release_label else None
    if release_label and expected != pyspark_version:
        return [
            f"{release_label} runs Spark {expected or 'unknown to this emulator'}; "
            f"this emulator runs PySpark {pyspark_version}"
        ]
    return []


def stage_workdir(run: Launch, s3: Any, folder: Path) -> Workdir:
    """The run's folder before its driver starts: what the request reads copied from S3, a
    folder per bucket it names (even with nothing copied), Spark's home, the environment every
    process starts with and the executors' Java launcher."""
    mirror = Mirror(folder / "s3")
    wanted = pull(s3, run, mirror)
    buckets = sorted({*run.buckets, *wanted.buckets})
    for bucket in buckets:  # each is a mount of the s3:// scheme, even with nothing copied
        (mirror.root / bucket).mkdir(parents=True, exist_ok=True)
    home = spark_home(folder / "spark-home")
    container = _container_environment(home)
    launcher = java_launcher(folder, run, container)
    warnings: tuple[str, ...] = ()
    if launcher is None or "JAVA_HOME" in run.executor_env:
        warnings = (
            "executors start in the driver's environment, driverEnv included (no Java found, "
            "or the request's spark.executorEnv.JAVA_HOME bypasses the emulator's launcher)",
        )
    staged = Workdir(folder, mirror, wanted, buckets, home, container, launcher, warnings)
    staged.driver_dir.mkdir()
    return staged


def prepare_driver(run: Launch, staged: Workdir, host_pythons: tuple[str, ...]) -> Ending:
    """Unpack each archive under its alias in the driver's directory and answer for the
    interpreters the request names, as the service does before the driver starts. A failure
    here ends the run unstarted, written where the service's driver log would say it."""
    ending = Ending()
    for archive in run.archives:
        local = _local(archive.uri, staged.mirror)
        if not local.is_file():
            ending = Ending(FAILED, f"could not fetch {archive.uri}: no such object")
            break
        unpack(local, staged.driver_dir / archive.alias)
    if ending.state == SUCCESS:
        problem = pythons_problem(staged.driver_dir, run.driver_env, run.executor_env, host_pythons)
        if problem:
            ending = Ending(FAILED, STATE_DETAILS_FAILED.format(code=1, lines=problem), 1)
    if ending.details:
        staged.stderr.write_text(ending.details + "\n")
    return ending


def _spark_submit(run: Launch, staged: Workdir, master: str) -> list[str]:
    """The request's spark-submit, on ``master``, with s3:// served from the mirror."""
    service_conf = {
        **s3_mirror_conf(staged.buckets, str(staged.mirror.root)),
        "spark.ui.enabled": "false",
    }
    return spark_submit_command(
        str(staged.home / "bin" / "spark-submit"), run, master, service_conf
    )


def drive(run: Launch, staged: Workdir, workers: int, timeout: int, prepared: Ending) -> Driven:
    """Start the driver on a ``local-cluster`` of ``workers`` executors unless preparing it
    failed, hold it and its executors to their worker sizes and the whole run to ``timeout``
    seconds, and say how it ended, as the service does."""
    master = local_cluster(run.conf, workers)
    command = _spark_submit(run, staged, master)
    started = time.monotonic()
    sizes = (container_mib(run.conf, "driver"), container_mib(run.conf, "executor"))
    warnings: tuple[str, ...] = ()
    if not Watchdog.available():
        warnings = ("no /proc here: worker memory is not held to the request's sizes",)
    if prepared.state != SUCCESS:
        return Driven(master, command, prepared, time.monotonic() - started, None, warnings)
    watchdog: Watchdog | None = None
    with staged.stdout.open("wb") as out, staged.stderr.open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=staged.driver_dir,
            env=_driver_environment(run, staged.container, staged.launcher),
            stdout=out,
            stderr=err,
            start_new_session=True,  # executors are its children: one group to stop
        )
        if Watchdog.available():
            watchdog = Watchdog(process.pid, *sizes).start()
        try:
            ending = Ending(code=process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            details = f"Job run exceeded executionTimeoutMinutes ({timeout // 60})"
            ending = Ending(CANCELLED, details, process.wait())
        except BaseException:  # Ctrl-C or an error here: no driver or executor JVM outlives us
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        finally:
            if watchdog is not None:
                watchdog.stop()
    ending = _driver_ending(ending, watchdog.killed if watchdog is not None else [], staged)
    return Driven(master, command, ending, time.monotonic() - started, watchdog, warnings)


def _driver_ending(waited: Ending, killed: list[Kill], staged: Workdir) -> Ending:
    """A driver killed for its memory exits as the service's does; a driver that failed ends
    the run with the memory cause, then the last exceptions its log shows."""
    code = KILLED_EXIT_CODE if any(kill.worker == DRIVER for kill in killed) else waited.code
    if waited.state == SUCCESS and code != 0:
        cause = killed_details(killed) if killed else None
        stderr = staged.stderr.read_text(errors="replace")
        return Ending(FAILED, failure_details(code, stderr, first=cause), code)
    return replace(waited, code=code)


def push_back(
    request: dict[str, Any],
    run: Launch,
    s3: Any,
    staged: Workdir,
    job: JobRun,
    push: bool,
    push_also: tuple[str, ...],
) -> Synced:
    """Nothing goes back to S3 unless ``push``: then the files the run created under its own
    partitions and ``push_also``, and its logs under the request's ``logUri`` in the service's
    layout, never over an object that exists."""
    scope = (
        PushScope.for_run(run.argument("--output"), run.argument("--run-id"), push_also)
        if push
        else PushScope()
    )
    pushed = {bucket: staged.mirror.push(s3, bucket, scope) for bucket in staged.buckets}
    log_uri = (
        request.get("configurationOverrides", {})
        .get("monitoringConfiguration", {})
        .get("s3MonitoringConfiguration", {})
        .get("logUri")
    )
    logs = {
        "SPARK_DRIVER/stdout": staged.stdout,
        "SPARK_DRIVER/stderr": staged.stderr,
        **_executor_logs(staged.home),
    }
    written, kept = (
        _upload_logs(s3, log_uri, job.application_id, job.job_run_id, logs)
        if log_uri and push
        else ([], [])
    )
    return Synced(scope, pushed, written, kept)


def job_run_result(
    request: dict[str, Any],
    run: Launch,
    job: JobRun,
    staged: Workdir,
    driven: Driven,
    synced: Synced,
    warnings: list[str],
) -> dict[str, Any]:
    """GetJobRun's ``jobRun`` for the run, plus ``emulator``: what the emulator ran, what it
    copied, pushed and left out, the memory it held the workers to, and what it does not do."""
    import pyspark

    ending, watchdog = driven.ending, driven.watchdog
    mirror = staged.mirror
    return {
        "applicationId": job.application_id,
        "jobRunId": job.job_run_id,
        "name": request.get("name", ""),
        "state": ending.state,
        "stateDetails": ending.details,
        "createdAt": job.created,
        "updatedAt": _now(),
        "executionRole": request.get("executionRoleArn", ""),
        "releaseLabel": job.release_label or "",
        "jobDriver": request["jobDriver"],
        "configurationOverrides": request.get("configurationOverrides", {}),
        "tags": request.get("tags", {}),
        "executionTimeoutMinutes": job.timeout // 60,
        "totalExecutionDurationSeconds": round(driven.seconds),
        "emulator": {
            "workdir": str(staged.folder),
            "master": driven.master,
            "command": driven.command,
            "exitCode": ending.code,
            "sparkVersion": pyspark.__version__,
            "droppedConf": run.dropped,
            "driverEnv": run.driver_env,
            "logs": synced.logs,
            "logsNotWritten": synced.logs_kept,
            "pushScope": list(synced.scope.prefixes),
            "uploaded": {bucket: pushed.uploaded for bucket, pushed in synced.pushed.items()},
            "notPushed": {bucket: pushed.refused for bucket, pushed in synced.pushed.items()},
            "pulled": {**staged.wanted.to_json(), "copied": len(mirror.snapshot)},
            "notInS3": {f"s3://{b}/{key}": why for (b, key), why in mirror.absent.items()},
            "notMirrored": {f"s3://{b}/{key}": why for (b, key), why in mirror.skipped.items()},
            "memory": watchdog.report() if watchdog is not None else None,
            "notEmulated": list(NOT_EMULATED),
            "warnings": [*warnings, *staged.warnings, *driven.warnings],
        },
    }


def run_job(
    request: dict[str, Any],
    s3: Any,
    *,
    application_id: str | None = None,
    job_run_id: str | None = None,
    release_label: str | None = None,
    workdir: Path | None = None,
    workers: int = WORKERS,
    keep: bool = False,
    push: bool = False,
    push_also: tuple[str, ...] = (),
    host_pythons: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``request`` to its end; returns a GetJobRun-like ``jobRun`` (plus ``emulator``).

    S3 is only read unless ``push``: then the files the run created under its own output
    partitions and under ``push_also`` (``s3://bucket/prefix/``) are uploaded, and its logs
    written under ``logUri``, never over an existing object (``mirror.Mirror.push``). One
    function per stage below, in the order the service goes through them."""
    import pyspark

    run = launch(request)
    job = JobRun.accepted(request, application_id, job_run_id, release_label)
    folder = Path(workdir or tempfile.mkdtemp(prefix=f"emr-{job.job_run_id}-"))
    warnings = release_warnings(release_label, pyspark.__version__)
    try:
        staged = stage_workdir(run, s3, folder)
        prepared = prepare_driver(run, staged, host_pythons)
        driven = drive(run, staged, workers, job.timeout, prepared)
        synced = push_back(request, run, s3, staged, job, push, push_also)
        result = job_run_result(request, run, job, staged, driven, synced, warnings)
    finally:  # the workdir holds a copy of the bucket's photos: never left behind by accident
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    if not keep:
        result["emulator"]["workdir"] = None
    return result


__all__ = ["RequestError", "run_job"]
