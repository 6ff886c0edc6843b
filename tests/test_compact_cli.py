"""The compaction command: its request is built by the shared builder (pure, no AWS), the job
takes what it is sent, the watcher leaves the run alone, and on loopback ``--dry-run`` starts
one dry-run job run, ``--print-request`` starts nothing, and a bad configuration nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from emr_serverless_job.config import parse_args
from fruits_ops import compact as command
from lambda_trigger import request as rq
from lambda_trigger.outcomes import decide
from lambda_trigger.settings import deployment_from_environment
from tests.loopback import job_runs
from tests.test_erase_trigger import ENV

NOW = datetime(2026, 12, 2, 14, 15, 2, tzinfo=UTC)


def test_the_request_is_a_small_compaction_run_the_job_accepts():
    deployment = deployment_from_environment(ENV)
    request = command.compaction_request(deployment, 7, True, NOW, "1a2b3c4d5e")
    again = command.compaction_request(deployment, 7, True, NOW, "1a2b3c4d5e")
    assert request == again  # pure: time and nonce given
    run_id = "compact-20261202t141502z-1a2b3c4d"
    assert request["name"] == request["clientToken"] == request["tags"]["run-id"] == run_id
    assert request["tags"]["pipeline"] == rq.COMPACT_TAG
    args = request["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert args[:2] == ["--compact", "7"] and args[-1] == "--dry-run"
    params = request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]
    assert "spark.executor.memoryOverhead=1g" in params  # no Python workers: erase's size
    job = parse_args(args)  # the job takes what it is sent
    assert (job.compact, job.dry_run, job.run_id) == (7.0, True, run_id)
    real = command.compaction_request(deployment, 0.5, False, NOW, "1a2b3c4d")
    real_args = real["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert real_args[:2] == ["--compact", "0.5"] and "--dry-run" not in real_args
    with pytest.raises(ValueError, match="0 or more"):
        rq.for_compaction(-1, run_id)


def test_the_watcher_neither_retries_nor_alerts_on_a_compaction():
    request = command.compaction_request(deployment_from_environment(ENV), 7, False, NOW, "0" * 8)
    assert decide("failed", request["tags"]).decision == "ignore"


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        command.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--older-than-days" in out and "(default: 7.0)" in out and "--dry-run" in out


def test_dry_run_starts_one_dry_run_job_run(stack, capsys):
    assert command.main(["--dry-run"], env=stack.environment) == 0
    (run,) = job_runs(stack)
    args = run["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert args[:2] == ["--compact", "7"] and args[-1] == "--dry-run"
    assert run["tags"]["pipeline"] == rq.COMPACT_TAG
    assert capsys.readouterr().out.strip() == run["jobRunId"]


def test_print_request_starts_nothing(stack, capsys):
    assert command.main(["--print-request", "--older-than-days", "30"], env=stack.environment) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["jobDriver"]["sparkSubmit"]["entryPointArguments"][:2] == ["--compact", "30"]
    assert job_runs(stack) == []


def test_bad_configuration_exits_2_and_starts_nothing(stack, capsys):
    assert command.main(["--older-than-days", "-1"], env=stack.environment) == 2
    assert "--older-than-days -1.0: 0 or more" in capsys.readouterr().err
    env = {k: v for k, v in stack.environment.items() if k != "APPLICATION_ID"}
    assert command.main([], env=env) == 2
    assert "APPLICATION_ID" in capsys.readouterr().err
    assert job_runs(stack) == []


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--wait", "--poll-seconds", "-1"], "--poll-seconds -1.0: 0 or more seconds"),
        (["--wait", "--poll-seconds", "nan"], "--poll-seconds nan: 0 or more seconds"),
        (["--output", ""], "--output '': empty"),
    ],
)
def test_a_bad_flag_is_refused_before_any_run_is_started(stack, capsys, argv, said):
    """GIVEN a value the command cannot follow a run with WHEN compacting THEN exit 2 naming the
    flag as typed, and no StartJobRun (a bad poll used to fail only once the run was billed)."""
    assert command.main(argv, env=stack.environment) == 2
    assert f"configuration error: {said}" in capsys.readouterr().err
    assert job_runs(stack) == []
