"""The command-line convention every entry point follows (docs/cli.md), defined once.

The job (which ships this package in its zip), the operator commands, the build and the emulator
build their parsers with it, so that ``--help``, a renamed flag, a refused value and an exit code
look and mean the same in each: a person who learnt one command has learnt how all of them talk.
Standard library only, like the rest of the contract.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fruits_contract import logs

# The exit codes (docs/cli.md has the table). 2 is argparse's own code for a bad flag, so a value
# refused after parsing exits as a malformed one does; the service and the emulator read the
# job's exit code, which is why they are part of the contract.
EXIT_OK = 0
EXIT_FAILED = 1  # the run or the work failed (reconcile: photos without a row were found)
EXIT_USAGE = 2  # bad usage or configuration, refused before any side effect
EXIT_INTERRUPTED = 130  # interrupted (Ctrl-C, 128 + SIGINT) while following a run that goes on
USAGE_MEANING = "bad usage or configuration, refused before any side effect"

# What every refusal (exit 2) starts with, so that a wrapper or a person finds it with one grep.
USAGE_PREFIX = "configuration error: "


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """argparse's defaults formatter (each flag's help ends with its default), without the
    ``(default: None)`` of a flag whose value comes from elsewhere (its help says from where:
    an environment variable, a stack output, another flag); descriptions keep their own line
    breaks (several are module docstrings)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _paragraph(text: str) -> str:
    """One-line texts are wrapped to the terminal's 80 columns; texts with their own line breaks
    (docstrings) are kept as written."""
    return text if "\n" in text else textwrap.fill(text, width=79)


def exit_codes(failed: str | None, more: Mapping[int, str] | None = None) -> str:
    """The ``exit codes:`` line of a command's ``--help``: what 1 means for it (None: it never
    exits 1), and any other code it uses; 0 and 2 mean the same everywhere."""
    codes = {EXIT_OK: "done", EXIT_USAGE: USAGE_MEANING, **(more or {})}
    if failed is not None:
        codes[EXIT_FAILED] = failed
    listed = (f"{code} {meaning}" for code, meaning in sorted(codes.items()))
    return "exit codes: " + "; ".join(listed)


def parser(
    prog: str,
    description: str | None,
    failed: str | None,
    more_codes: Mapping[int, str] | None = None,
) -> argparse.ArgumentParser:
    """A parser that follows the convention: defaults in ``--help``, the program named as typed,
    and its exit codes (``failed``: what exit 1 means for this command) at the end."""
    return argparse.ArgumentParser(
        prog=prog,
        description=_paragraph(description) if description else None,
        epilog=_paragraph(exit_codes(failed, more_codes) + " (docs/cli.md)"),
        formatter_class=HelpFormatter,
    )


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: still sets the new flag's value, and says once what to type."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, replacement: str, **kwargs: Any
    ) -> None:
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"warning: {option_string} is deprecated, use {self.replacement} (same value)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: argparse.Action) -> None:
    """Keep ``old`` working for ``new`` (what ``add_argument`` returned) so nobody's script
    breaks; hidden from ``--help``, which shows only the one name to learn."""
    parser.add_argument(
        old,
        dest=new.dest,
        type=new.type,
        metavar=new.metavar,
        action=_DeprecatedAlias,
        replacement=new.option_strings[0],
        default=argparse.SUPPRESS,  # never hides the new flag's default
        help=argparse.SUPPRESS,
    )


def flag_error(flag: str, value: object, problem: object) -> str:
    """``--input raw/: not an s3://bucket/prefix URI``: the flag as the user typed it, the value
    as the shell would take it back, and what is wrong with it."""
    return f"{flag} {shlex.quote(str(value))}: {problem}"


def say(line: str, /, level: str = logs.INFO, **fields: object) -> None:
    """What a command tells its user, as one log line (``fruits_contract.logs``) on stderr:
    stdout carries only its output (a job run id, a request, a report), for a script to read,
    and the lines a command logs read like the job's and the Lambdas' in the same query."""
    logs.check_fields(fields, level)  # service= too, before log() could take it as its own
    if "stream" in fields:
        raise ValueError("log field 'stream' is logs.log()'s own parameter: rename the field")
    logs.log(line, level, logs.OPS_SERVICE, **fields)


class Refusal(ValueError):
    """Stop before any side effect: the command exits 2 with this message (``refusing``)."""


def refusing(main: Callable[..., int]) -> Callable[..., int]:
    """A command's ``main`` whose refusals, raised anywhere before its first side effect, end
    as one ``configuration error: ...`` line and exit 2, so its body reads as the steps."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except Refusal as refusal:
            return refuse(str(refusal))

    return run


def checked_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    problems_of: Callable[[argparse.Namespace], list[str]] | None = None,
) -> argparse.Namespace:
    """The flags parsed and, with ``problems_of``, checked together: every problem with them is
    named in one refusal, before a setting is read or AWS is asked anything."""
    args = parser.parse_args(argv)
    problems = problems_of(args) if problems_of else []
    if problems:
        raise Refusal("; ".join(problems))
    return args


def refuse(message: str) -> int:
    """Say why a command stops before doing anything, and return the code it exits with."""
    print(f"{USAGE_PREFIX}{message}", file=sys.stderr)
    return EXIT_USAGE
