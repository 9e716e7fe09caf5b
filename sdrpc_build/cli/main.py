"""sdrpc: one command whose subcommands mirror the ``sdrpc-*`` scripts.

``sdrpc build ...`` is ``sdrpc-build ...``, and so on; ``sdrpc doctor`` checks
the machine and ``sdrpc quickstart`` runs the first-use walk-through. Each
subcommand's module is imported only when it runs, so one broken or slow
import never affects the others.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable
from typing import Optional, cast

from sdrpc_build import __version__
from sdrpc_build.errors import ExitCode

__all__ = ["COMMANDS", "main"]

PROG = "sdrpc"

#: subcommand -> (module under sdrpc_build.cli, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("build", "build (or find cached) an rpc-server matching an sd.cpp client"),
    "check": ("check", "check running servers against the client: protocol, GGML_MAX_NAME"),
    "launch": ("launch", "start and supervise rpc-server processes"),
    "bench": ("bench", "measure the link and the servers sd.cpp will use"),
    "doctor": ("doctor", "which backends can this machine build; what to install"),
    "quickstart": ("quickstart", "build, launch and check a server in one go"),
    "cache": ("cache", "what sdrpc keeps on disk; --prune reclaims it"),
    "up": ("up", "install and start the servers of fleet.toml on every host (sdrpc[fleet])"),
    "status": ("status", "each fleet server's unit state and restarts, per host"),
    "down": ("down", "stop and remove everything sdrpc installed on the fleet's hosts"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"usage: {PROG} COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += [
        "",
        f"'{PROG} COMMAND --help' shows a command's options; "
        f"'{PROG} build' is the same as 'sdrpc-build'.",
    ]
    return "\n".join(lines)


def _load(module: str) -> Callable[[Optional[list[str]]], int]:
    mod = importlib.import_module(f"sdrpc_build.cli.{module}")
    return cast(Callable[[Optional[list[str]]], int], mod.main)


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(f"{PROG}: error: no command given", file=sys.stderr)
        print(
            f"{PROG}: hint: '{PROG} --help' lists the commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    if args[0] in ("-h", "--help", "help"):
        print(_usage())
        return ExitCode.OK
    if args[0] == "--version":
        print(f"{PROG} {__version__}")
        return ExitCode.OK
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.5)
        maybe = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"{PROG}: error: unknown command {name!r}{maybe}", file=sys.stderr)
        print(f"{PROG}: hint: commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        entry = _load(COMMANDS[name][0])
    except ImportError as exc:
        print(f"{PROG}: error: the '{name}' command is not available: {exc}", file=sys.stderr)
        print(
            f"{PROG}: hint: reinstall sdrpc (python -m pip install --force-reinstall sdrpc)",
            file=sys.stderr,
        )
        return ExitCode.INTERNAL
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main())
