"""sdrpc doctor: which backends can this machine build, and what to install for the others.

Exit codes: 0 every requested backend can be built (without ``--backend``: at
least one can); the others are listed by ``--help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from rich.table import Table

from sdrpc_build.build.doctor import DoctorReport, diagnose, system_probes
from sdrpc_build.build.doctor.preflight import blocked_error
from sdrpc_build.build.recipe_checks import suggest
from sdrpc_build.build.recipes import Recipe, list_recipes
from sdrpc_build.build.toolchain import current_platform
from sdrpc_build.cli._common import Parser, out_console, run_parsed
from sdrpc_build.errors import ExitCode, RecipeError, ToolError
from sdrpc_build.paths import cache_dir

__all__ = ["main", "make_parser"]

PROG = "sdrpc doctor"

_STYLE = {"ok": "green", "warning": "yellow", "missing": "red", "too-old": "red"}


def make_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Check this machine for the tools each backend needs (cmake, compilers, "
        "nvcc, Vulkan SDK, hipcc, ...), say how to install what is missing, and list the "
        "backends that can be built here.",
        exit_codes=(
            ExitCode.OK,
            ExitCode.USAGE,
            ExitCode.RECIPE,
            ExitCode.TOOL,
            ExitCode.INTERRUPTED,
        ),
    )
    p.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help="check only this backend (repeatable; default: all)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="cache root whose free space is checked (env SDRPC_CACHE_DIR)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--debug", action="store_true", help="tracebacks for errors")
    return p


def _print(report: DoctorReport) -> None:
    con = out_console()
    tools = Table(title=f"tools ({report.platform})")
    for col in ("check", "status", "found", "to install"):
        tools.add_column(col)
    for c in report.checks:
        style = _STYLE.get(c.status, "")
        tools.add_row(
            c.name, f"[{style}]{c.status}[/{style}]", c.detail, "" if c.status == "ok" else c.hint
        )
    con.print(tools)
    backends = Table(title="backends")
    for col in ("backend", "buildable", "missing", "notes"):
        backends.add_column(col)
    for b in report.backends:
        mark = "[green]yes[/green]" if b.buildable else "[red]no[/red]"
        if b.buildable_with:  # only what sdrpc-build fetches itself is missing
            mark = f"[yellow]buildable with {b.buildable_with}[/yellow]"
        backends.add_row(b.backend, mark, ", ".join(b.missing), "; ".join(b.notes))
    con.print(backends)
    can = report.buildable
    con.print(f"can build here: {', '.join(can) if can else 'none of the backends checked'}")
    for b in report.backends:
        if b.buildable_with:
            con.print(
                f"buildable with {b.buildable_with}: sdrpc-build --backend {b.backend} "
                f"{b.buildable_with}"
            )


def _wanted(names: list[str], recipes: list[Recipe]) -> list[str]:
    known = sorted(r.name for r in recipes)
    for name in names:
        if name not in known:
            raise RecipeError(
                f"unknown backend {name!r}{suggest(name, known)}",
                hint=f"known backends: {', '.join(known)}; "
                "without --backend, sdrpc doctor checks them all",
            )
    return names


def _cmd(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    recipes = list_recipes()
    wanted = _wanted(args.backend, recipes) if args.backend else None
    report = diagnose(
        recipes,
        system_probes(env, current_platform()),
        cache_dir(env, args.cache_dir),
        wanted,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print(report)
    if wanted is not None:
        blocked = [b for b in report.backends if not b.buildable]
        if blocked:
            if not args.json:  # the error sdrpc-build gives for it, word for word
                raise blocked_error(blocked[0])
            return ToolError.exit_code
    elif not report.buildable:
        if not args.json:
            raise ToolError(
                "no backend can be built on this machine",
                hint="install a C/C++ compiler, cmake and git (see the table above)",
            )
        return ToolError.exit_code
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_parsed(PROG, make_parser(), argv, lambda args: _cmd(args, os.environ))


if __name__ == "__main__":
    sys.exit(main())
