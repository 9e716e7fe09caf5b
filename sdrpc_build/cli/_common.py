"""Shared command-line plumbing: error reporting, exit codes, consoles.

This is the only place (with the other ``cli`` modules) that prints or exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TextIO

from rich.console import Console

from sdrpc_build import __version__
from sdrpc_build.errors import (
    DEFAULT_HINTS,
    ExitCode,
    Interrupted,
    SdrpcError,
    UsageError,
    exit_codes_help,
)

__all__ = [
    "HelpFormatter",
    "Parser",
    "err_console",
    "out_console",
    "report_error",
    "run_main",
    "run_parsed",
]


class HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs; keeps the lines of a paragraph with indented lines (a table)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in text.split("\n\n"):
            if para.startswith("  ") or "\n  " in para:
                paragraphs.append("\n".join(indent + line for line in para.splitlines()))
            else:
                paragraphs.append(super()._fill_text(para, width, indent))
        return "\n\n".join(paragraphs)


class Parser(argparse.ArgumentParser):
    """argparse with sdrpc's error contract and a ``--version`` on every command.

    A usage error raises :class:`UsageError` (one line, a ``hint:`` line naming
    ``--help``, exit 2) instead of printing argparse's usage block and exiting;
    ``run_parsed`` reports it like every other error. ``exit_codes`` (from
    :class:`ExitCode`, the one table) are listed at the end of ``--help``.
    """

    def __init__(self, *args: Any, exit_codes: Iterable[ExitCode] = (), **kwargs: Any) -> None:
        codes = tuple(exit_codes)
        if codes:
            epilog = kwargs.get("epilog")
            kwargs["epilog"] = (epilog + "\n\n" if epilog else "") + exit_codes_help(codes)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"'{self.prog} --help' lists the options and their values")


def out_console(file: TextIO | None = None) -> Console:
    return Console(file=file or sys.stdout, highlight=False, soft_wrap=True)


def err_console(file: TextIO | None = None) -> Console:
    return Console(file=file or sys.stderr, highlight=False, soft_wrap=True, stderr=True)


def report_error(exc: SdrpcError, prog: str, debug: bool = False) -> int:
    """Print ``prog: error: message`` plus hint/details to stderr; return the exit code."""
    stream = sys.stderr
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
    print(f"{prog}: error: {exc.message}", file=stream)
    if exc.details:
        print(exc.details.rstrip("\n"), file=stream)
    hint = exc.hint
    if not hint and isinstance(exc, UsageError):
        hint = f"'{prog} --help' lists the options and their values"
    hint = hint or DEFAULT_HINTS.get(exc.exit_code)
    if hint:
        print(f"{prog}: hint: {hint}", file=stream)
    return exc.exit_code


def run_main(prog: str, body: Callable[[], int], debug: bool) -> int:
    """Run a command body, mapping errors to one-line messages and exit codes."""
    try:
        return body()
    except SdrpcError as exc:
        return report_error(exc, prog, debug)
    except BrokenPipeError:  # e.g. `sdrpc-check ... | head`: the reader went away
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE  # 128 + SIGPIPE, as a shell reports it
    except KeyboardInterrupt:
        return report_error(Interrupted("interrupted"), prog, debug)
    except Exception as exc:  # an sdrpc bug: one line unless --debug
        if debug:
            raise
        print(f"{prog}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            f"{prog}: hint: run again with --debug for a traceback and report it", file=sys.stderr
        )
        return ExitCode.INTERNAL


def run_parsed(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], int],
) -> int:
    """Parse ``argv`` (usage errors exit 2, ``--help`` 0) and run ``body`` via run_main."""
    raw = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in raw

    def parsed() -> int:
        try:
            args = parser.parse_args(raw)
        except SystemExit as exc:  # argparse already printed usage / help
            return ExitCode.OK if exc.code in (0, None) else ExitCode.USAGE
        return body(args)

    return run_main(prog, parsed, debug)
