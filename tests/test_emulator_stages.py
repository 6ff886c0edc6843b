"""The emulator's stages of a job run that need no Spark: what it is named, how a run that
cannot start ends, and how a driver's exit becomes the run's state."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pyspark
import pytest

from emr_emulator.limits import KILLED_EXIT_CODE, Kill
from emr_emulator.mirror import Mirror
from emr_emulator.reads import Reads
from emr_emulator.run import (
    CANCELLED,
    FAILED,
    SUCCESS,
    Ending,
    JobRun,
    Workdir,
    _driver_ending,
    drive,
    prepare_driver,
    release_warnings,
)
from emr_emulator.submit import launch
from tests.test_emulator import the_request


def workdir(tmp_path) -> Workdir:
    staged = Workdir(tmp_path, Mirror(tmp_path / "s3"), Reads(), ["bucket"], tmp_path, {}, None)
    staged.driver_dir.mkdir()
    return staged


def test_a_release_of_another_spark_is_said_and_one_of_this_spark_is_not():
    assert release_warnings(None, pyspark.__version__) == []
    assert release_warnings("emr-7.9.0", "3.5.5") == []
    assert release_warnings("emr-7.9.0", "3.5.1") == [
        "emr-7.9.0 runs Spark 3.5.5; this emulator runs PySpark 3.5.1"
    ]
    assert "unknown to this emulator" in release_warnings("emr-99.0.0", "3.5.5")[0]


def test_a_job_run_takes_its_names_from_the_caller_then_the_request_and_its_timeout_in_seconds():
    request = {"applicationId": "00app", "executionTimeoutMinutes": 5}
    named = JobRun.accepted(request, "00other", "run1", "emr-7.9.0")
    assert (named.application_id, named.job_run_id, named.timeout) == ("00other", "run1", 300)
    unnamed = JobRun.accepted({}, None, None, None)
    assert unnamed.application_id == "local" and len(unnamed.job_run_id) == 16
    assert unnamed.timeout == 720 * 60 and unnamed.release_label is None


def test_an_archive_that_is_not_in_s3_ends_the_run_before_its_driver_starts(tmp_path):
    run = launch(the_request())
    staged = workdir(tmp_path)
    ending = prepare_driver(run, staged, ())
    archive = run.archives[0].uri
    assert ending == Ending(FAILED, f"could not fetch {archive}: no such object", 0)
    assert staged.stderr.read_text() == ending.details + "\n"  # where the driver's log would be
    driven = drive(run, staged, 2, 60, ending)
    assert driven.ending is ending and driven.watchdog is None
    assert driven.command[0] == str(tmp_path / "bin" / "spark-submit")
    assert driven.master.startswith("local-cluster[2,")
    assert not staged.stdout.exists()  # never started


def test_a_driver_killed_for_its_memory_fails_the_run_with_the_cause_first(tmp_path):
    staged = workdir(tmp_path)
    staged.stderr.write_text("java.lang.OutOfMemoryError: no\n")
    killed = [Kill("driver", 1, 900, 800, 3.0, 2)]
    ending = _driver_ending(Ending(code=-9), killed, staged)
    assert (ending.state, ending.code) == (FAILED, KILLED_EXIT_CODE)
    assert "ExitCode: 137" in ending.details and "driver at 900 MiB" in ending.details
    assert ending.details.index("driver at 900") < ending.details.index("OutOfMemoryError")


def test_a_driver_that_exits_0_succeeds_and_one_out_of_time_stays_cancelled(tmp_path):
    staged = workdir(tmp_path)
    assert _driver_ending(Ending(code=0), [], staged) == Ending(SUCCESS, "", 0)
    timed_out = Ending(CANCELLED, "Job run exceeded executionTimeoutMinutes (1)", -9)
    assert _driver_ending(timed_out, [], staged) == timed_out


class _Stopped(Exception):
    """Raised by a timer in the middle of the wait, as Ctrl-C would raise KeyboardInterrupt."""


def test_a_run_stopped_while_its_driver_runs_leaves_no_process_behind(tmp_path):
    staged = workdir(tmp_path)
    child_pid = tmp_path / "executor.pid"
    submit = staged.home / "bin" / "spark-submit"
    submit.parent.mkdir(parents=True)
    # A driver with an executor of its own, as spark-submit on local-cluster has.
    submit.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {child_pid}\nwait\n")
    submit.chmod(0o755)

    def stop(*_):
        raise _Stopped

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(_Stopped):
            drive(launch(the_request()), staged, 1, 60, Ending(SUCCESS, "", 0))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int(child_pid.read_text())
    for _ in range(50):  # the kill is sent at once; give the kernel a moment to deliver it
        if not _running(pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"executor {pid} outlived the stopped run")


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (re)parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
