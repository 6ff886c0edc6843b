"""One shape of log line for every process of the pipeline, defined once.

The Lambdas log through powertools' ``Logger`` (``use_rfc3339=True, utc=True``); the driver,
the executors' Python workers and the operator commands write the same keys here, so one
CloudWatch Logs Insights query (``filter message = "image_rejected"``) or one ``jq`` reads the
driver's stderr, an executor's and a function's log alike:

    {"level": "INFO", "message": "stage_finished", "timestamp": "2026-12-03T07:37:02.063+00:00",
     "service": "fruits-job", "stage": "featurize", "seconds": 12.4}

``message`` is the event's name (snake_case in the job, a sentence in the Lambdas and the
commands); what happened to which input are the other keys. Standard library only: it runs
on executors, in the Lambda bundle and on an operator's laptop.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TextIO

INFO = "INFO"
WARNING = "WARNING"
ERROR = "ERROR"
LEVELS = ("DEBUG", INFO, WARNING, ERROR, "CRITICAL")  # powertools' (and logging's) names
# What POWERTOOLS_SERVICE_NAME is to the Lambdas (template.yaml: fruits-trigger, fruits-watcher).
JOB_SERVICE = "fruits-job"  # the driver and its Python workers
OPS_SERVICE = "fruits-ops"  # the operator commands and the build tools
RESERVED_KEYS = ("level", "message", "timestamp", "service")


def check_fields(fields: dict[str, object], level: str = INFO) -> None:
    """Refuse (``ValueError``) a field that would overwrite one of the line's own keys, and a
    level no log reader filters on, before anything is written."""
    clash = sorted(set(fields) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"log field(s) {', '.join(clash)} would overwrite the line's own keys")
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")


def line(message: str, /, level: str = INFO, service: str = JOB_SERVICE, **fields: object) -> str:
    """One JSON object, keys in powertools' order (``check_fields`` first)."""
    check_fields(fields, level)
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    record = {"level": level, "message": message, "timestamp": timestamp, "service": service}
    return json.dumps({**record, **fields}, ensure_ascii=False, default=str)


def log(
    message: str,
    /,
    level: str = INFO,
    service: str = JOB_SERVICE,
    *,
    stream: TextIO | None = None,
    **fields: object,
) -> None:
    """Write one line to stderr (stdout stays a command's output) in a single ``write``:
    Spark runs Python workers unbuffered, and ``print`` writes the text and the newline apart,
    so two workers logging at once could glue their lines; one write under PIPE_BUF stays
    whole. ``stream`` is the one name a field cannot have."""
    (stream or sys.stderr).write(line(message, level, service, **fields) + "\n")


def parse(text: str) -> list[dict[str, object]]:
    """The lines of ``text`` (a log file, a captured stderr) that are this module's objects,
    in order; anything else (Spark's own log4j lines, a traceback) is skipped. Where a
    prefix precedes the object on a line (a log collector's), the object is still found."""
    found = []
    for raw in text.splitlines():
        start = raw.find('{"level"')
        if start < 0:
            continue
        try:
            record = json.loads(raw[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and all(key in record for key in RESERVED_KEYS):
            found.append(record)
    return found
