"""Shared command-line plumbing: error reporting, exit codes, consoles.

This is the only place (with the other ``cli`` modules) that prints or exits.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import TextIO

from rich.console import Console

from sdrpc_build.errors import Interrupted, SdrpcError

__all__ = ["err_console", "out_console", "report_error", "run_main"]


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
    if exc.hint:
        print(f"{prog}: hint: {exc.hint}", file=stream)
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
        return 141  # 128 + SIGPIPE, as a shell reports it
    except KeyboardInterrupt:
        return report_error(
            Interrupted(
                "interrupted", hint="run the same command again; nothing half-written was kept"
            ),
            prog,
            debug,
        )
    except Exception as exc:  # an sdrpc bug: one line unless --debug
        if debug:
            raise
        print(f"{prog}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            f"{prog}: hint: run again with --debug for a traceback and report it", file=sys.stderr
        )
        return 1
