"""The one settings resolver of the operator commands (and of fruits_build/upload.py).

Each deployment setting (``APPLICATION_ID``, ``OUTPUT_URI``, ``RAW_URI``, ...) is taken from,
in this order, the first that gives it a value:

1. its flag (``--application-id``, ``--output``, ``--raw``, ...), as typed;
2. the environment variable of the setting's own name, the Lambda's (``$APPLICATION_ID``);
   an empty variable counts as unset;
3. the output of the stack named by ``--stack`` that carries it (``ApplicationId``);
4. its built-in default (``RUNTIME`` onnx, ...), if it has one; else it is missing.

**Flag > environment > stack output > default**, for every command and every setting: a value
typed for this one invocation beats one exported for the shell session, which beats the
deployment's record. A variable that contradicts the stack named by ``--stack`` (its output for
the setting, or its artifacts prefix for the model and weights URIs) is refused unless the
flag decides (``disagreement``): a shell left exporting another stage's values must not act on
this one. An empty flag (``--raw ""``) is refused rather than read as "not given":
leave the flag out to fall back. The stack is read once, when ``--stack`` is given, whether or
not any setting ends up taken from it (so a stack that cannot be read is always refused).

Every command then says where each setting came from in the same words: a refusal names the
flag, variable or stack output as the user gave it (``lambda_trigger.settings.Sources``), and
before doing anything the command prints each setting it runs with, its value and its origin,
on stderr (``say_origins``). docs/cli.md states the same rule for users.
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from fruits_contract import cli as convention
from fruits_contract.cli import flag_error, say
from lambda_trigger import settings as config

ORDER = "flag > environment > stack output > default"
# Said once, in the epilog of the settings group of every command that takes the settings flags.
SETTINGS_ORDER = (
    "Each deployment setting is taken from its flag, else from the environment variable of the "
    "same name as the Lambda's (APPLICATION_ID, OUTPUT_URI, ...), else from the stack's output "
    "with --stack, else its built-in default; the command prints where each came from, and a "
    "bad value is refused (exit 2) naming the flag, variable or output it came from, as is a "
    "variable that disagrees with --stack's output for a setting no flag gives."
)
REGION_HELP = "AWS region (default: the AWS CLI's, from AWS_REGION or ~/.aws/config)"
STACK_HELP = (
    "read the deployment settings a flag or the environment does not give from this "
    "CloudFormation stack's outputs"
)

# flag dest -> the setting (environment variable, and stack output in CamelCase) it stands for:
# what every command that starts a job run reads.
DEPLOYMENT_FLAGS = {
    "application_id": config.APPLICATION_ID,
    "job_role_arn": config.JOB_ROLE_ARN,
    "artifacts": config.ARTIFACTS_URI,
    "output": config.OUTPUT_URI,
    "logs": config.LOGS_URI,
    "weights": config.WEIGHTS_URI,
    "model": config.MODEL_URI,
    "runtime": config.RUNTIME,
    "image_size": config.IMAGE_SIZE,
    "max_executors": config.MAX_EXECUTORS,
    "timeout_minutes": config.JOB_TIMEOUT_MINUTES,
}
DEFAULT = "default"

Parsed = TypeVar("Parsed")


@dataclass(frozen=True)
class Resolved:
    """The settings a command runs with, as given (strings, what ``config`` parses), and where
    each came from: ``--output``, ``$OUTPUT_URI`` or ``stack fruits output OutputUri``."""

    values: dict[str, str]
    origins: dict[str, str]
    flags: Mapping[str, str]  # setting -> its flag, for a missing one's hint
    stack: Mapping[str, str] = field(default_factory=dict)  # every output of --stack, by setting

    @property
    def sources(self) -> config.Sources:
        """For ``config``'s errors: a setting from the environment is named by its variable
        alone (the Lambda's wording), so only flags and stack outputs are listed as given."""
        given = {n: o for n, o in self.origins.items() if not o.startswith("$")}
        return config.Sources(given=given, flags=self.flags)


def setting_name(output_key: str) -> str:
    """A stack output key (``ApplicationId``) as the setting it carries (``APPLICATION_ID``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", output_key).upper()


def stack_settings(cloudformation: Any, stack: str) -> dict[str, str]:
    """Every output of the stack, keyed by the setting it carries."""
    outputs = cloudformation.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    return {setting_name(o["OutputKey"]): o["OutputValue"] for o in outputs}


def flag_name(dest: str) -> str:
    return f"--{dest.replace('_', '-')}"


def origins_help(name: str, stack_output: bool | None = None) -> str:
    """``(default: $OUTPUT_URI, else stack output OutputUri, else ...)``: where a setting's value
    comes from when its flag is not given, in the resolver's order."""
    if stack_output is None:
        stack_output = name in config.STACK_OUTPUTS
    origins = [f"${name}"]
    if stack_output:
        origins.append(f"stack output {config.output_key(name)}")
    default = config.FIELDS.get(name, (None, None))[1] or config.DERIVED_DEFAULTS.get(name)
    if default is not None:
        origins.append(str(default))
    return f"(default: {', else '.join(origins)})"


def setting_help(name: str) -> str:
    """A settings flag's help: what the setting is and where its value comes from otherwise."""
    return f"{config.DESCRIPTIONS[name]} {origins_help(name)}"


def add_stack_flags(parser: argparse.ArgumentParser) -> None:
    """``--stack`` and ``--region``, which every command that reads settings takes."""
    parser.add_argument("--stack", help=STACK_HELP)
    parser.add_argument("--region", help=REGION_HELP)


def add_setting_flags(parser: argparse.ArgumentParser, flags: Mapping[str, str]) -> None:
    """One flag per setting (flag dest -> setting name), each saying where else it comes from."""
    settings = parser.add_argument_group("deployment settings", textwrap.fill(SETTINGS_ORDER))
    for flag, name in flags.items():
        settings.add_argument(
            flag_name(flag), dest=flag, metavar=name.rsplit("_", 1)[-1], help=setting_help(name)
        )


def empty_flags(args: argparse.Namespace, flags: Mapping[str, str]) -> list[str]:
    """The flags typed with an empty value: refused, not read as "not given" (which would
    quietly take the environment's or the stack's value instead of what was typed)."""
    problems = []
    if getattr(args, "stack", None) == "":
        problems.append(flag_error("--stack", "", "empty: name the stack, or leave --stack out"))
    for flag, name in flags.items():
        value = getattr(args, flag)
        if value is not None and not str(value).strip():
            problems.append(
                flag_error(
                    flag_name(flag), value, f"empty: leave the flag out to take ${name} or --stack"
                )
            )
    return problems


def read_stack(session: Any, stack: str | None) -> dict[str, str]:
    """The outputs of ``--stack`` (none without it); a stack that cannot be read (no such
    stack, no region, no credentials) is refused naming the flag, not a traceback."""
    if not stack:
        return {}
    try:
        return stack_settings(session.client("cloudformation"), stack)
    except (BotoCoreError, ClientError) as error:
        raise config.SettingsError(f"--stack {stack}: {error}") from None


def choose(
    args: argparse.Namespace,
    env: Mapping[str, str],
    stack: Mapping[str, str],
    flags: Mapping[str, str],
    names: Iterable[str] = (),
) -> Resolved:
    """Pure: each setting ``flags`` (flag dest -> setting) or ``names`` name, taken in the
    resolver's order (flag > environment > stack output); unset ones are left out.

    A variable that disagrees with the output of the stack named on the same command line is
    refused (``SettingsError``) unless the setting's flag decides: a ``$RAW_URI`` left exported
    from another stage must not send ``erase --stack prod --delete-objects`` to its bucket.
    """
    flag_of = {name: flag for flag, name in flags.items()}
    stack_name = getattr(args, "stack", None)
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    conflicts: list[str] = []
    for name in dict.fromkeys([*flags.values(), *names]):
        flag = flag_of.get(name)
        given = getattr(args, flag) if flag else None
        if given is not None:
            values[name], origins[name] = str(given), flag_name(flag)
        elif env.get(name, "").strip():
            values[name], origins[name] = env[name], f"${name}"
            conflict = disagreement(name, env[name], stack, stack_name)
            if conflict:
                remedy = f"pass {flag_name(flag)} to choose, or " if flag else ""
                conflicts.append(f"{conflict} ({remedy}unset ${name})")
        elif stack.get(name):
            values[name] = stack[name]
            origins[name] = f"stack {stack_name} output {config.output_key(name)}"
    if conflicts:
        raise config.SettingsError("; ".join(conflicts))
    return Resolved(values, origins, {n: flag_name(f) for f, n in flags.items()}, dict(stack))


def same_setting(name: str, a: str, b: str) -> bool:
    """Whether two spellings mean one value, as the setting's parser reads them
    (``s3://b/raw`` and ``s3://b/raw/`` are one prefix); raw text where either does not parse."""
    parse = config.FIELDS.get(name, (None, None))[0]
    if parse is not None:
        try:
            return bool(parse(a) == parse(b))
        except ValueError:
            pass
    return a.strip() == b.strip()


def disagreement(name: str, value: str, stack: Mapping[str, str], stack_name: str | None) -> str:
    """Why a variable's ``value`` contradicts the named stack, or "" where it does not: the
    stack's own output for the setting differs, or (for the artifacts' URIs, which the stack
    does not output) the value is not under the stack's artifacts prefix."""
    if stack.get(name) and not same_setting(name, value, stack[name]):
        output = f"stack {stack_name} output {config.output_key(name)}"
        return f"${name}={value} but {output} is {stack[name]}"
    artifacts = stack.get(config.ARTIFACTS_URI, "").rstrip("/")
    if name in config.DERIVED_DEFAULTS and artifacts and not value.startswith(f"{artifacts}/"):
        key = config.output_key(config.ARTIFACTS_URI)
        return f"${name}={value} is not under stack {stack_name} output {key} {artifacts}/"
    return ""


def resolve_settings(
    session: Any,
    args: argparse.Namespace,
    env: Mapping[str, str],
    flags: Mapping[str, str] = DEPLOYMENT_FLAGS,
    names: Iterable[str] = (),
) -> Resolved:
    """The settings a command runs with and where each came from (the module's order): those
    with a flag (``flags``: dest -> setting) and those it reads without one (``names``).
    Raises ``config.SettingsError`` for an empty flag or a stack that cannot be read, before
    any other AWS call; the values themselves are checked by ``config``'s parsers."""
    problems = empty_flags(args, flags)
    if problems:
        raise config.SettingsError("; ".join(problems))
    return choose(args, env, read_stack(session, getattr(args, "stack", None)), flags, names)


def origin_lines(resolved: Resolved, names: Iterable[str] | None = None) -> list[str]:
    """Each setting with its value and where it came from, one line each, in one layout for
    every command; a setting nobody gave shows its built-in default."""
    lines = [f"settings ({ORDER}):"]
    for name in dict.fromkeys(names if names is not None else resolved.flags):
        if name in resolved.values:
            lines.append(f"  {name}={resolved.values[name]}  ({resolved.origins[name]})")
            continue
        default = config.DERIVED_DEFAULTS.get(name) or config.FIELDS.get(name, (None, None))[1]
        base = resolved.values.get(config.ARTIFACTS_URI)
        if name in config.DERIVED_DEFAULTS and base:  # ARTIFACTS_URI/... as it will be
            default = default.replace(config.ARTIFACTS_URI, base.rstrip("/"), 1)
        if default in (None, ""):
            lines.append(f"  {name}=  (not set)")
        else:
            lines.append(f"  {name}={default}  ({DEFAULT})")
    return lines


def say_origins(
    resolved: Resolved, say: Callable[[str], None], names: Iterable[str] | None = None
) -> None:
    """Print ``origin_lines`` (stderr, by the commands: stdout stays the command's output)."""
    for line in origin_lines(resolved, names):
        say(line)


def open_settings(
    args: argparse.Namespace,
    env: Mapping[str, str] | None,
    parse: Callable[[dict[str, str], config.Sources], Parsed],
    flags: Mapping[str, str] = DEPLOYMENT_FLAGS,
    names: Iterable[str] = (),
) -> tuple[Any, Parsed]:
    """What every command that reads the deployment does first, in one place: a boto3 session
    in ``--region``, the settings resolved in the module's order and parsed by ``parse`` (a
    ``config`` parser; ``env`` None is this process's), then each one said on stderr with its
    origin. A setting that cannot be resolved or parsed (``parse`` raises ``SettingsError`` or
    a ``Refusal``) is a ``Refusal``: exit 2, before any call but the stack's. Any other error
    is a bug, not a bad setting, and keeps its traceback (exit 1)."""
    import boto3

    names = tuple(names)
    env = os.environ if env is None else env
    try:
        session = boto3.session.Session(region_name=args.region)
        resolved = resolve_settings(session, args, env, flags, names)
        parsed = parse(resolved.values, resolved.sources)
    except convention.Refusal:
        raise
    except config.SettingsError as error:
        raise convention.Refusal(str(error)) from error
    say_origins(resolved, say, names or None)
    return session, parsed
