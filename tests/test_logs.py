"""One way to log: the driver, the workers, the operator commands and the Lambdas write lines
a single CloudWatch Logs Insights query (or ``jq``) reads alike (fruits_contract/logs.py)."""

from __future__ import annotations

import io
import json
import re

import pytest

from emr_serverless_job import job
from emr_serverless_job.run_report import RunReport
from fruits_contract import cli as convention
from fruits_contract import logs
from fruits_ops import backfill

# RFC 3339 in UTC with milliseconds, as powertools writes it with use_rfc3339=True, utc=True.
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def powertools_line(message: str, **fields: object) -> dict:
    """One line of the trigger Lambda's own Logger (lambda_trigger/handler.py), captured."""
    from lambda_trigger import handler

    stream = io.StringIO()
    previous = handler.logger.registered_handler.setStream(stream)
    try:
        handler.logger.info(message, extra=fields)
    finally:
        handler.logger.registered_handler.setStream(previous)
    return json.loads(stream.getvalue())


def test_a_line_has_the_keys_and_clock_of_the_lambdas_powertools_logger():
    ours = json.loads(logs.line("image_rejected", path="s3://b/raw/a.jpg", reason="empty"))
    theirs = powertools_line("object ignored", object="s3://b/raw/a.txt")
    for record in (ours, theirs):
        assert set(logs.RESERVED_KEYS) <= set(record)
        assert TIMESTAMP.match(record["timestamp"]), record["timestamp"]
        assert record["level"] == logs.INFO
    assert ours["message"] == "image_rejected" and ours["reason"] == "empty"
    assert ours["service"] == logs.JOB_SERVICE


def test_a_worker_line_is_one_write_even_with_a_non_ascii_path(monkeypatch):
    """Workers run unbuffered: a line split over two writes can be glued to another
    worker's line in the executor log (seen in CI: two ``model_built`` lines on one)."""
    writes: list[str] = []

    class Recorder:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    monkeypatch.setattr("sys.stderr", Recorder())
    logs.log("image_rejected", path="s3://b/raw/ä b.jpg", reason="empty")
    assert len(writes) == 1 and writes[0].endswith("\n")
    assert json.loads(writes[0])["path"] == "s3://b/raw/ä b.jpg"


@pytest.mark.parametrize(
    ("write", "named"),
    [
        (lambda: logs.line("random_weights", timestamp="yesterday"), "timestamp"),
        (lambda: logs.log("stage_finished", message="again"), "message"),
        (lambda: logs.log("stage_finished", level="LOUD"), "'LOUD' is not one of"),
        (lambda: convention.say("counted", message="x"), "message"),
        (lambda: convention.say("counted", service="mine"), "service"),
        (lambda: convention.say("counted", stream="stdout"), "stream"),
    ],
)
def test_a_field_cannot_overwrite_the_lines_own_keys(write, named, capsys):
    """Every way a caller could pass a reserved name (or a level no reader filters on) is one
    ValueError naming it, and nothing is written."""
    with pytest.raises(ValueError, match=named):
        write()
    assert capsys.readouterr().err == ""


def test_parse_finds_lines_after_a_progress_bar_and_skips_everything_else():
    first, second = logs.line("model_built", pid=1), logs.line("image_rejected", path="p")
    text = "\n".join(
        [
            "26/12/03 07:00:00 INFO Executor: Running task 0.0",
            "[Stage 1:>                 (0 + 2) / 2]" + first,
            '{"not": "ours"}',
            "Traceback (most recent call last):",
            second,
        ]
    )
    assert [line["message"] for line in logs.parse(text)] == ["model_built", "image_rejected"]


def test_the_drivers_stage_timing_is_logged_as_lines(capsys):
    report = RunReport(
        run_id="r1", mode="manifest", source="s", output="o", started_at="2026-12-03T00:00:00Z"
    )
    with job.timed(report, "featurize"):
        pass
    lines = logs.parse(capsys.readouterr().err)
    assert [line["message"] for line in lines] == ["stage_started", "stage_finished"]
    assert {line["stage"] for line in lines} == {"featurize"}
    assert lines[1]["seconds"] == report.timings_s["featurize"]


def test_what_an_operator_command_says_on_stderr_is_log_lines(stack, capsys):
    raw = f"s3://{stack.bucket}/raw/"
    assert backfill.main(["--input", raw, "--print-request"], env=stack.environment) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if line.strip()]
    assert said, "the backfill said where its settings came from"
    parsed = logs.parse(captured.err)
    assert len(parsed) == len(said)
    assert {line["service"] for line in parsed} == {logs.OPS_SERVICE}
    json.loads(captured.out)  # stdout stays the command's output: the request
