"""Run one StartJobRun request here the way EMR Serverless runs it, and answer like GetJobRun.

What the service does, and what this does in its place:

- the driver starts in a fresh working directory that holds every ``spark.archives`` entry
  unpacked under its ``#alias`` (``./environment``), with the environment the request's
  ``spark.emr-serverless.driverEnv.*`` confs give, and nothing of the caller's Python;
- executors are separate JVMs (Spark's ``local-cluster`` master: a worker per executor) that
  fetch and unpack the same archives in their own working directories, as Spark does on EMR;
- the entry point, ``--py-files`` and archives are read from ``s3://`` by Spark itself, through
  a local mirror of the buckets the request names (``mirror.py``), synced back after the run;
- driver and executor logs land under the request's ``logUri`` as
  ``applications/<app>/jobs/<run>/SPARK_DRIVER/stdout.gz`` (and ``stderr.gz``,
  ``SPARK_EXECUTOR/<id>/...``).

Not emulated: IAM (every S3 call is allowed), EMRFS' ``_$folder$`` markers, capacity limits,
pre-initialized capacity and dynamic allocation (the executors are fixed).
"""

from __future__ import annotations

import gzip
import os
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

from emr_emulator.mirror import Mirror
from emr_emulator.releases import spark_version_of
from emr_emulator.submit import (
    Launch,
    RequestError,
    launch,
    local_cluster,
    s3_mirror_conf,
    spark_submit_command,
)

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


def failure_details(code: int, stderr: str) -> str:
    """The last exception lines of the driver's log, as the service quotes them."""
    lines = [
        line.strip() for line in stderr.splitlines() if any(m in line for m in FAILURE_MARKERS)
    ]
    return STATE_DETAILS_FAILED.format(code=code, lines=" | ".join(lines[-FAILURE_LINES:]))


def _upload_logs(
    s3: Any, log_uri: str, application_id: str, job_run_id: str, logs: dict[str, Path]
) -> list[str]:
    """Every log gzipped under the service's layout; returns the URIs written."""
    parts = urlsplit(log_uri)
    prefix = f"{parts.path.strip('/')}/applications/{application_id}/jobs/{job_run_id}"
    written = []
    for name, path in logs.items():
        if not path.is_file():
            continue
        key = f"{prefix.lstrip('/')}/{name}.gz"
        s3.put_object(Bucket=parts.netloc, Key=key, Body=gzip.compress(path.read_bytes()))
        written.append(f"s3://{parts.netloc}/{key}")
    return written


def _executor_logs(home: Path) -> dict[str, Path]:
    logs = {}
    for app in sorted((home / "work").glob("app-*")):
        for executor in sorted(p for p in app.iterdir() if p.is_dir()):
            for stream in ("stdout", "stderr"):
                logs[f"SPARK_EXECUTOR/{executor.name}/{stream}"] = executor / stream
    return logs


def _driver_environment(run: Launch, home: Path) -> dict[str, str]:
    env = {"PATH": SYSTEM_PATH, "HOME": str(home.parent), "SPARK_HOME": str(home)}
    env.update({name: os.environ[name] for name in INHERITED if name in os.environ})
    env.setdefault("LANG", DEFAULT_LANG)
    return {**env, **run.driver_env}


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
) -> dict[str, Any]:
    """Run ``request`` to its end; returns a GetJobRun-like ``jobRun`` (plus ``emulator``)."""
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
    for bucket in run.buckets:
        mirror.pull(s3, bucket)
    home = spark_home(folder / "spark-home")
    driver_dir = folder / "driver"
    driver_dir.mkdir()
    state, details, code = "SUCCESS", "", 0
    for archive in run.archives:
        local = _local(archive.uri, mirror)
        if not local.is_file():
            state, details = "FAILED", f"could not fetch {archive.uri}: no such object"
            break
        unpack(local, driver_dir / archive.alias)
    master = local_cluster(run.conf, workers)
    command = spark_submit_command(
        str(home / "bin" / "spark-submit"),
        run,
        master,
        {**s3_mirror_conf(run.buckets, str(mirror.root)), "spark.ui.enabled": "false"},
    )
    stdout, stderr = driver_dir.parent / "driver.stdout", driver_dir.parent / "driver.stderr"
    timeout = 60 * int(request.get("executionTimeoutMinutes", 720))
    started = time.monotonic()
    if state == "SUCCESS":
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                command,
                cwd=driver_dir,
                env=_driver_environment(run, home),
                stdout=out,
                stderr=err,
                start_new_session=True,  # executors are its children: one group to stop
            )
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
                state = "CANCELLED"
                details = f"Job run exceeded executionTimeoutMinutes ({timeout // 60})"
        if state == "SUCCESS" and code != 0:
            state = "FAILED"
            details = failure_details(code, stderr.read_text(errors="replace"))
    duration = time.monotonic() - started
    synced = {bucket: mirror.push(s3, bucket) for bucket in run.buckets}
    log_uri = (
        request.get("configurationOverrides", {})
        .get("monitoringConfiguration", {})
        .get("s3MonitoringConfiguration", {})
        .get("logUri")
    )
    logs = {"SPARK_DRIVER/stdout": stdout, "SPARK_DRIVER/stderr": stderr, **_executor_logs(home)}
    written = _upload_logs(s3, log_uri, application_id, job_run_id, logs) if log_uri else []
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
            "uploaded": {bucket: up for bucket, (up, _) in synced.items()},
            "deleted": {bucket: gone for bucket, (_, gone) in synced.items()},
            "warnings": warnings,
        },
    }
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
        result["emulator"]["workdir"] = None
    return result


__all__ = ["RequestError", "run_job"]
