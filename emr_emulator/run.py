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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emr_emulator.image import pythons_problem
from emr_emulator.limits import (
    KILLED_EXIT_CODE,
    Watchdog,
    container_mib,
    killed_details,
)
from emr_emulator.mirror import Mirror, PushScope, remote_exists
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
    written under ``logUri``, never over an existing object (``mirror.Mirror.push``)."""
    import pyspark

    run = launch(request)
    application_id = application_id or request.get("applicationId", "local")
    job_run_id = job_run_id or uuid.uuid4().hex[:16]
    created = _now()
    folder = Path(workdir or tempfile.mkdtemp(prefix=f"emr-{job_run_id}-"))
    warnings = []
    expected = spark_version_of(release_label) if release_label else None
    if release_label and expected != pyspark.__version__:
        warnings.append(
            f"{release_label} runs Spark {expected or 'unknown to this emulator'}; "
            f"this emulator runs PySpark {pyspark.__version__}"
        )
    mirror = Mirror(folder / "s3")
    wanted = pull(s3, run, mirror)
    buckets = sorted({*run.buckets, *wanted.buckets})
    for bucket in buckets:  # each is a mount of the s3:// scheme, even with nothing copied
        (mirror.root / bucket).mkdir(parents=True, exist_ok=True)
    home = spark_home(folder / "spark-home")
    container = _container_environment(home)
    launcher = java_launcher(folder, run, container)
    if launcher is None or "JAVA_HOME" in run.executor_env:
        warnings.append(
            "executors start in the driver's environment, driverEnv included (no Java found, "
            "or the request's spark.executorEnv.JAVA_HOME bypasses the emulator's launcher)"
        )
    driver_dir = folder / "driver"
    driver_dir.mkdir()
    state, details, code = "SUCCESS", "", 0
    for archive in run.archives:
        local = _local(archive.uri, mirror)
        if not local.is_file():
            state, details = "FAILED", f"could not fetch {archive.uri}: no such object"
            break
        unpack(local, driver_dir / archive.alias)
    if state == "SUCCESS":
        problem = pythons_problem(driver_dir, run.driver_env, run.executor_env, host_pythons)
        if problem:
            state, code = "FAILED", 1
            details = STATE_DETAILS_FAILED.format(code=code, lines=problem)
    stdout, stderr = driver_dir.parent / "driver.stdout", driver_dir.parent / "driver.stderr"
    if details:
        stderr.write_text(details + "\n")  # where the service's driver log would say it
    master = local_cluster(run.conf, workers)
    command = spark_submit_command(
        str(home / "bin" / "spark-submit"),
        run,
        master,
        {**s3_mirror_conf(buckets, str(mirror.root)), "spark.ui.enabled": "false"},
    )
    timeout = 60 * int(request.get("executionTimeoutMinutes", 720))
    started = time.monotonic()
    watchdog = None
    sizes = (container_mib(run.conf, "driver"), container_mib(run.conf, "executor"))
    if not Watchdog.available():
        warnings.append("no /proc here: worker memory is not held to the request's sizes")
    if state == "SUCCESS":
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                command,
                cwd=driver_dir,
                env=_driver_environment(run, container, launcher),
                stdout=out,
                stderr=err,
                start_new_session=True,  # executors are its children: one group to stop
            )
            if Watchdog.available():
                watchdog = Watchdog(process.pid, *sizes).start()
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
                state = "CANCELLED"
                details = f"Job run exceeded executionTimeoutMinutes ({timeout // 60})"
            finally:
                if watchdog is not None:
                    watchdog.stop()
        killed = watchdog.killed if watchdog is not None else []
        if any(kill.worker == "driver" for kill in killed):
            code = KILLED_EXIT_CODE
        if state == "SUCCESS" and code != 0:
            state = "FAILED"
            cause = killed_details(killed) if killed else None
            details = failure_details(code, stderr.read_text(errors="replace"), first=cause)
    duration = time.monotonic() - started
    scope = (
        PushScope.for_run(run.argument("--output"), run.argument("--run-id"), push_also)
        if push
        else PushScope()
    )
    synced = {bucket: mirror.push(s3, bucket, scope) for bucket in buckets}
    log_uri = (
        request.get("configurationOverrides", {})
        .get("monitoringConfiguration", {})
        .get("s3MonitoringConfiguration", {})
        .get("logUri")
    )
    logs = {"SPARK_DRIVER/stdout": stdout, "SPARK_DRIVER/stderr": stderr, **_executor_logs(home)}
    written, kept = (
        _upload_logs(s3, log_uri, application_id, job_run_id, logs)
        if log_uri and push
        else ([], [])
    )
    result = {
        "applicationId": application_id,
        "jobRunId": job_run_id,
        "name": request.get("name", ""),
        "state": state,
        "stateDetails": details,
        "createdAt": created,
        "updatedAt": _now(),
        "executionRole": request.get("executionRoleArn", ""),
        "releaseLabel": release_label or "",
        "jobDriver": request["jobDriver"],
        "configurationOverrides": request.get("configurationOverrides", {}),
        "tags": request.get("tags", {}),
        "executionTimeoutMinutes": timeout // 60,
        "totalExecutionDurationSeconds": round(duration),
        "emulator": {
            "workdir": str(folder),
            "master": master,
            "command": command,
            "exitCode": code,
            "sparkVersion": pyspark.__version__,
            "droppedConf": run.dropped,
            "driverEnv": run.driver_env,
            "logs": written,
            "logsNotWritten": kept,
            "pushScope": list(scope.prefixes),
            "uploaded": {bucket: pushed.uploaded for bucket, pushed in synced.items()},
            "notPushed": {bucket: pushed.refused for bucket, pushed in synced.items()},
            "pulled": {**wanted.to_json(), "copied": len(mirror.snapshot)},
            "notInS3": {f"s3://{b}/{key}": why for (b, key), why in mirror.absent.items()},
            "notMirrored": {f"s3://{b}/{key}": why for (b, key), why in mirror.skipped.items()},
            "memory": watchdog.report() if watchdog is not None else None,
            "notEmulated": list(NOT_EMULATED),
            "warnings": warnings,
        },
    }
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
        result["emulator"]["workdir"] = None
    return result


__all__ = ["RequestError", "run_job"]
