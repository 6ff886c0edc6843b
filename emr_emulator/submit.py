"""A StartJobRun request as EMR Serverless would launch it: a plain function on plain data.

EMR Serverless reads ``jobDriver.sparkSubmit`` literally: the entry point, its arguments,
and ``sparkSubmitParameters`` as spark-submit options. Confs under ``spark.emr-serverless.``
mean something to the service only: ``driverEnv.NAME=VALUE`` becomes the driver's
environment and only the driver's (executors get ``spark.executorEnv.*``, which Spark passes
on), the others are dropped here, by name. Every other option and conf is passed to
spark-submit unchanged; the emulator only adds what stands in for the service itself (the
master, and the Hadoop settings that serve ``s3://`` from a local mirror).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

EMR_ONLY_PREFIX = "spark.emr-serverless."
DRIVER_ENV_PREFIX = "spark.emr-serverless.driverEnv."
EXECUTOR_ENV_PREFIX = "spark.executorEnv."
# spark-submit options that the service decides, not the request.
SERVICE_OPTIONS = ("--master", "--deploy-mode")
SWITCHES = ("--verbose", "--supervise")  # spark-submit options without a value
ARCHIVES_CONF = "spark.archives"
S3_URI = re.compile(r"s3a?://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/|$)")
DEFAULT_EXECUTOR_CORES = 1
DEFAULT_EXECUTOR_MEMORY_MB = 1024
MEMORY = re.compile(r"^(\d+)([kmgt]?)b?$", re.IGNORECASE)
MEMORY_UNITS_MB = {"k": 1 / 1024, "": 1 / (1024 * 1024), "m": 1, "g": 1024, "t": 1024 * 1024}


class RequestError(ValueError):
    """The request is not one EMR Serverless would accept; nothing was started."""


@dataclass(frozen=True)
class Archive:
    """One ``spark.archives`` entry: where it is, and the folder name it is unpacked under."""

    uri: str
    alias: str


@dataclass(frozen=True)
class Launch:
    """What the service does with one request, before any file is fetched."""

    entry_point: str
    arguments: list[str]
    options: list[str]  # spark-submit options other than --conf, in order
    conf: dict[str, str]  # passed to spark-submit as given
    driver_env: dict[str, str]  # spark.emr-serverless.driverEnv.*
    dropped: dict[str, str] = field(default_factory=dict)  # meaningful on EMR only
    archives: list[Archive] = field(default_factory=list)

    def argument(self, flag: str) -> str | None:
        """The value after ``flag`` in the entry point's arguments (the job's ``--output``,
        ``--run-id``), if it is there."""
        for index, token in enumerate(self.arguments[:-1]):
            if token == flag:
                return self.arguments[index + 1]
        return None

    @property
    def executor_env(self) -> dict[str, str]:
        """``spark.executorEnv.*``: the only environment of the request executors get."""
        return {
            key.removeprefix(EXECUTOR_ENV_PREFIX): value
            for key, value in self.conf.items()
            if key.startswith(EXECUTOR_ENV_PREFIX)
        }

    @property
    def buckets(self) -> list[str]:
        """Every S3 bucket the run names: mirrored before it (and pushed to only if asked)."""
        texts = [self.entry_point, *self.arguments, *self.options, *self.conf.values()]
        return sorted({match for text in texts for match in S3_URI.findall(text)})


def parse_archives(value: str) -> list[Archive]:
    """``uri#alias,uri2``: Spark unpacks each under its alias, or under its file name."""
    archives = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        uri, _, alias = item.partition("#")
        archives.append(Archive(uri=uri, alias=alias or urlsplit(uri).path.rsplit("/", 1)[-1]))
    return archives


def _pairs(parameters: str) -> list[tuple[str, str | None]]:
    """``sparkSubmitParameters`` split as a shell would, into (option, value) pairs (a switch
    has no value); a stray word raises RequestError instead of shifting every pair after it."""
    tokens = shlex.split(parameters)
    pairs: list[tuple[str, str | None]] = []
    index = 0
    while index < len(tokens):
        flag = tokens[index]
        if not flag.startswith("--"):
            raise RequestError(f"sparkSubmitParameters: {flag!r} is not a spark-submit option")
        if flag in SWITCHES:
            pairs.append((flag, None))
            index += 1
            continue
        if index + 1 >= len(tokens):
            raise RequestError(f"sparkSubmitParameters: {flag} has no value")
        pairs.append((flag, tokens[index + 1]))
        index += 2
    return pairs


def launch(request: dict[str, Any]) -> Launch:
    """Split a StartJobRun request into what spark-submit gets and what the service uses."""
    try:
        driver = request["jobDriver"]["sparkSubmit"]
        entry_point = driver["entryPoint"]
    except (KeyError, TypeError) as error:
        raise RequestError(f"not a Spark job request: no jobDriver.sparkSubmit ({error})") from None
    options: list[str] = []
    conf: dict[str, str] = {}
    driver_env: dict[str, str] = {}
    dropped: dict[str, str] = {}
    archives: list[Archive] = []
    for flag, value in _pairs(driver.get("sparkSubmitParameters", "")):
        if value is None:
            options.append(flag)
        elif flag == "--conf":
            key, sep, setting = value.partition("=")
            if not sep:
                raise RequestError(f"sparkSubmitParameters: --conf {value!r} is not KEY=VALUE")
            if key.startswith(DRIVER_ENV_PREFIX):
                driver_env[key.removeprefix(DRIVER_ENV_PREFIX)] = setting
            elif key.startswith(EMR_ONLY_PREFIX):
                dropped[key] = setting
            else:
                conf[key] = setting
                if key == ARCHIVES_CONF:
                    archives += parse_archives(setting)
        elif flag in SERVICE_OPTIONS:
            dropped[flag] = value
        else:
            options += [flag, value]
            if flag == "--archives":
                archives += parse_archives(value)
    return Launch(
        entry_point=entry_point,
        arguments=list(driver.get("entryPointArguments", [])),
        options=options,
        conf=conf,
        driver_env=driver_env,
        dropped=dropped,
        archives=archives,
    )


def memory_mb(value: str) -> int:
    """A Spark memory setting (``6g``, ``512m``, plain bytes) in whole MiB."""
    match = MEMORY.match(value.strip())
    if not match:
        raise RequestError(f"{value!r} is not a Spark memory size")
    return max(1, int(int(match[1]) * MEMORY_UNITS_MB[match[2].lower()]))


def local_cluster(conf: dict[str, str], workers: int) -> str:
    """``local-cluster[workers,cores,MiB]`` shaped like the request's executors.

    Each worker is a separate JVM-launching process that starts one executor of the
    request's ``spark.executor.cores`` and ``spark.executor.memory``, so the confs pass
    unchanged (the cores are logical: a 4-core executor runs 4 tasks on a 2-core machine).
    """
    cores = int(conf.get("spark.executor.cores", DEFAULT_EXECUTOR_CORES))
    memory = (
        memory_mb(conf["spark.executor.memory"])
        if "spark.executor.memory" in conf
        else DEFAULT_EXECUTOR_MEMORY_MB
    )
    return f"local-cluster[{workers},{cores},{memory}]"


def s3_mirror_conf(buckets: list[str], mirror: str) -> dict[str, str]:
    """Hadoop settings that serve ``s3://BUCKET/key`` from ``mirror/BUCKET/key``.

    Hadoop's ViewFileSystemOverloadScheme keeps the ``s3://`` scheme (paths in listings,
    Parquet ``path`` columns and errors read exactly as on EMR) and sends every path of a
    bucket to its folder in the mirror.
    """
    conf = {"spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.viewfs.ViewFileSystemOverloadScheme"}
    for bucket in buckets:
        conf[f"spark.hadoop.fs.viewfs.mounttable.{bucket}.linkFallback"] = (
            f"file://{mirror.rstrip('/')}/{bucket}"
        )
    return conf


def spark_submit_command(
    spark_submit: str, run: Launch, master: str, service_conf: dict[str, str]
) -> list[str]:
    """The request's options and confs as given, then what stands in for the service."""
    command = [spark_submit, "--master", master, *run.options]
    for key, value in {**run.conf, **service_conf}.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, run.entry_point, *run.arguments]
