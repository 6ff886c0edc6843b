"""The trigger's configuration: one typed object, built in one place from the environment.

template.yaml sets these variables on the Lambda; the operator commands build the same
mapping from their flags, the environment and the stack's outputs (fruits_ops/resolver.py).
Every variable is checked before anything is read from the queue or written anywhere, and all
problems are reported at once.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.config import Config

from fruits_contract import IMAGE_SIZES, MODEL_FILE, RUNTIMES, WEIGHTS_FILE
from fruits_contract.cli import flag_error
from lambda_trigger.request import DEFAULT_MAX_EXECUTORS, Deployment

APPLICATION_ID = "APPLICATION_ID"
JOB_ROLE_ARN = "JOB_ROLE_ARN"
RAW_URI = "RAW_URI"
ARTIFACTS_URI = "ARTIFACTS_URI"
MANIFESTS_URI = "MANIFESTS_URI"
OUTPUT_URI = "OUTPUT_URI"
LOGS_URI = "LOGS_URI"
WEIGHTS_URI = "WEIGHTS_URI"
MODEL_URI = "MODEL_URI"
RUNTIME = "RUNTIME"
IMAGE_SIZE = "IMAGE_SIZE"
MAX_EXECUTORS = "MAX_EXECUTORS"
JOB_TIMEOUT_MINUTES = "JOB_TIMEOUT_MINUTES"
MAX_ATTEMPTS = "MAX_ATTEMPTS"  # submissions of one batch before the watcher gives up
ALERTS_TOPIC_ARN = "ALERTS_TOPIC_ARN"  # where the watcher says a run failed for good
DEFAULT_MAX_ATTEMPTS = 3

# What each setting is, for the commands' --help (each flag that sets one says it once, there).
DESCRIPTIONS = {
    APPLICATION_ID: "the EMR Serverless application that runs the job",
    JOB_ROLE_ARN: "the IAM role the job run assumes",
    RAW_URI: "s3:// prefix where photos arrive",
    ARTIFACTS_URI: "s3:// prefix of the uploaded artifacts (./dev upload)",
    MANIFESTS_URI: "s3:// prefix of the batch manifests and their receipts",
    OUTPUT_URI: "the output location: s3:// prefix of the tables and reports (the job's --output)",
    LOGS_URI: "s3:// prefix of the job runs' logs",
    WEIGHTS_URI: "s3:// URI of the weights .h5 (runtime tensorflow)",
    MODEL_URI: "s3:// URI of the .onnx model (runtime onnx)",
    RUNTIME: f"the job's --runtime ({', '.join(RUNTIMES)})",
    IMAGE_SIZE: "the job's --image-size",
    MAX_EXECUTORS: "most executors a run may hold",
    JOB_TIMEOUT_MINUTES: "minutes before the service cancels a run",
    MAX_ATTEMPTS: "submissions of one batch before the watcher gives up",
    ALERTS_TOPIC_ARN: "SNS topic told about runs that failed for good",
}
# What an empty WEIGHTS_URI or MODEL_URI stands for (_deployment derives them so).
DERIVED_DEFAULTS = {
    WEIGHTS_URI: f"{ARTIFACTS_URI}/{WEIGHTS_FILE}",
    MODEL_URI: f"{ARTIFACTS_URI}/{MODEL_FILE}",
}
# The settings template.yaml's stack also outputs (as OutputUri for OUTPUT_URI, and so on), which
# --stack reads; tests/test_cli.py keeps this equal to the template.
STACK_OUTPUTS = (
    APPLICATION_ID,
    JOB_ROLE_ARN,
    RAW_URI,
    ARTIFACTS_URI,
    MANIFESTS_URI,
    OUTPUT_URI,
    LOGS_URI,
    RUNTIME,
    IMAGE_SIZE,
    MAX_EXECUTORS,
    ALERTS_TOPIC_ARN,
)

S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
APPLICATION_ID_PATTERN = re.compile(r"^[0-9a-z]{1,64}$")
ROLE_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
TOPIC_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}$")


# Each AWS call of the Lambdas gives up long before their 60 s timeout (botocore's default
# read timeout is 60 s): a hung call then fails the invocation with its own error in the log
# and the event is delivered again, instead of the function timing out silently. Worst case
# per call: 2 attempts x (5 s connect + 15 s read) = 40 s.
CLIENT_CONFIG = Config(
    connect_timeout=5, read_timeout=15, retries={"mode": "standard", "total_max_attempts": 2}
)


class SettingsError(ValueError):
    """One or more variables are missing or malformed; raised before any side effect."""


class BadValue(ValueError):
    """A value a setting cannot take. ``str()`` reads as before (``'raw/' is not an s3://...``,
    what the Lambda logs); ``problem`` is the same without its subject, for a command to put
    after the flag its user typed (``--input raw/: not an s3://...``)."""

    def __init__(self, shown: str, predicate: str) -> None:
        super().__init__(f"{shown} {predicate}")
        self.problem = predicate.removeprefix("is ")


def output_key(name: str) -> str:
    """The stack output (``OutputUri``) that carries a setting (``OUTPUT_URI``)."""
    return "".join(part.capitalize() for part in name.split("_"))


@dataclass(frozen=True)
class Sources:
    """Where a command's settings came from, so that an error names what its user typed: a
    flag (``--output``) or a stack output, for each setting given so; and the flag that sets
    each setting, for one that is not set at all. Empty (the Lambda): variable names only."""

    # setting -> "--output", or "stack fruits output OutputUri"
    given: Mapping[str, str] = field(default_factory=dict)
    flags: Mapping[str, str] = field(default_factory=dict)  # setting -> "--output"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending with "/"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"


@dataclass(frozen=True)
class Settings:
    deployment: Deployment
    raw: S3Location  # uploads here trigger runs
    manifests: S3Location  # one JSON Lines manifest (and its receipt) per batch
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    alerts_topic_arn: str = ""


def parse_s3_location(value: str) -> S3Location:
    """``s3://bucket/prefix`` (trailing slash optional) to a bucket and a ``prefix/``."""
    match = S3_URI.match(value.strip())
    if not match:
        raise BadValue(repr(value), "is not an s3://bucket/prefix URI")
    key = (match["key"] or "").strip("/")
    return S3Location(bucket=match["bucket"], prefix=f"{key}/" if key else "")


def _s3_object(value: str) -> str:
    location = parse_s3_location(value)
    if not location.prefix:
        raise BadValue(repr(value), "names a bucket, not a file in it")
    return f"s3://{location.bucket}/{location.prefix.rstrip('/')}"


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    """A ``FIELDS`` parser of a whole number from ``low`` to ``high``, both included; its
    BadValue names the bounds, so the error says what the setting accepts."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError as error:
            raise BadValue(repr(value), "is not a whole number") from error
        if not low <= number <= high:
            raise BadValue(str(number), f"is not between {low} and {high}")
        return number

    return parse


def _matching(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not regex.match(value):
            raise BadValue(repr(value), f"is not {what}")
        return value

    return parse


def _runtime(value: str) -> str:
    if value not in RUNTIMES:
        raise BadValue(repr(value), f"is not one of {', '.join(RUNTIMES)}")
    return value


def _image_size(value: str) -> int:
    size = _bounded_int(1, 10_000)(value)
    if size not in IMAGE_SIZES:
        raise BadValue(str(size), f"is not one of {', '.join(map(str, IMAGE_SIZES))}")
    return size


# name -> (parser, default; None means required)
FIELDS: dict[str, tuple[Callable[[str], Any], Any]] = {
    APPLICATION_ID: (_matching(APPLICATION_ID_PATTERN, "an EMR Serverless application id"), None),
    JOB_ROLE_ARN: (_matching(ROLE_ARN_PATTERN, "an IAM role ARN"), None),
    RAW_URI: (parse_s3_location, None),
    ARTIFACTS_URI: (parse_s3_location, None),
    MANIFESTS_URI: (parse_s3_location, None),
    OUTPUT_URI: (parse_s3_location, None),
    LOGS_URI: (parse_s3_location, None),
    WEIGHTS_URI: (_s3_object, ""),
    MODEL_URI: (_s3_object, ""),
    RUNTIME: (_runtime, "onnx"),
    IMAGE_SIZE: (_image_size, 224),
    MAX_EXECUTORS: (_bounded_int(1, 1000), DEFAULT_MAX_EXECUTORS),
    JOB_TIMEOUT_MINUTES: (_bounded_int(5, 10_080), 120),
    MAX_ATTEMPTS: (_bounded_int(1, 10), DEFAULT_MAX_ATTEMPTS),
    ALERTS_TOPIC_ARN: (_matching(TOPIC_ARN_PATTERN, "an SNS topic ARN"), ""),
}


DEPLOYMENT_FIELDS = (
    APPLICATION_ID,
    JOB_ROLE_ARN,
    ARTIFACTS_URI,
    OUTPUT_URI,
    LOGS_URI,
    WEIGHTS_URI,
    MODEL_URI,
    RUNTIME,
    IMAGE_SIZE,
    MAX_EXECUTORS,
    JOB_TIMEOUT_MINUTES,
)


NO_SOURCES = Sources()


def _read(env: Mapping[str, str], name: str, sources: Sources = NO_SOURCES) -> Any:
    """One setting parsed, or its default when unset or blank; an error names what the user
    typed (a flag or a stack output, as ``sources`` says), else the variable."""
    parse, default = FIELDS[name]
    raw = env.get(name, "").strip()
    if not raw:
        if default is None:
            flag = sources.flags.get(name)
            hint = f" (pass {flag}, set {name}, or --stack NAME)" if flag else ""
            raise SettingsError(f"{name} is not set{hint}")
        return default
    try:
        return parse(raw)
    except BadValue as error:
        given = sources.given.get(name)
        if given and given.startswith("--"):
            raise SettingsError(flag_error(given, raw, error.problem)) from error
        if given:
            raise SettingsError(f"{given} ({name}) {shlex.quote(raw)}: {error.problem}") from error
        raise SettingsError(f"{name}: {error}") from error
    except ValueError as error:
        raise SettingsError(f"{name}: {error}") from error


def _read_all(
    env: Mapping[str, str], names: tuple[str, ...], sources: Sources = NO_SOURCES
) -> dict[str, Any]:
    """Every setting of ``names`` read and all their problems raised as one SettingsError, so a
    configuration is fixed in one go, not one variable per attempt."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name in names:
        try:
            values[name] = _read(env, name, sources)
        except SettingsError as error:
            problems.append(str(error))
    if problems:
        raise SettingsError("; ".join(problems))
    return values


def read_settings(
    env: Mapping[str, str], names: tuple[str, ...], sources: Sources = NO_SOURCES
) -> dict[str, Any]:
    """Only the settings ``names``, each checked, and named in its errors, as every other
    reader here does it: for a command that needs a few of them (the upload: ARTIFACTS_URI)."""
    return _read_all(env, names, sources)


def _deployment(values: dict[str, Any]) -> Deployment:
    """The job's side of checked values (``DEPLOYMENT_FIELDS``); an empty WEIGHTS_URI or
    MODEL_URI stands for the artifact of that name (``DERIVED_DEFAULTS``)."""

    def uri(name: str) -> str:
        return values[name].uri.rstrip("/")

    return Deployment(
        application_id=values[APPLICATION_ID],
        job_role_arn=values[JOB_ROLE_ARN],
        artifacts_uri=uri(ARTIFACTS_URI),
        output_uri=uri(OUTPUT_URI),
        logs_uri=uri(LOGS_URI),
        weights_uri=values[WEIGHTS_URI] or f"{uri(ARTIFACTS_URI)}/{WEIGHTS_FILE}",
        model_uri=values[MODEL_URI] or f"{uri(ARTIFACTS_URI)}/{MODEL_FILE}",
        runtime=values[RUNTIME],
        image_size=values[IMAGE_SIZE],
        max_executors=values[MAX_EXECUTORS],
        timeout_minutes=values[JOB_TIMEOUT_MINUTES],
    )


def deployment_from_environment(
    env: Mapping[str, str], sources: Sources = NO_SOURCES
) -> Deployment:
    """What a backfill needs: the job's side of the settings only."""
    return _deployment(_read_all(env, DEPLOYMENT_FIELDS, sources))


def preflight_from_environment(
    env: Mapping[str, str], sources: Sources = NO_SOURCES
) -> tuple[Deployment, S3Location]:
    """What a preflight needs: the job's side of the settings and where photos arrive (it
    reads one); every problem of either named at once."""
    values = _read_all(env, (*DEPLOYMENT_FIELDS, RAW_URI), sources)
    return _deployment(values), values[RAW_URI]


def from_environment(env: Mapping[str, str], sources: Sources = NO_SOURCES) -> Settings:
    """Validate every variable; a SettingsError names each missing or malformed one (as the
    user gave it: ``sources``)."""
    values = _read_all(env, tuple(FIELDS), sources)
    return Settings(
        deployment=_deployment(values),
        raw=values[RAW_URI],
        manifests=values[MANIFESTS_URI],
        max_attempts=values[MAX_ATTEMPTS],
        alerts_topic_arn=values[ALERTS_TOPIC_ARN],
    )
