"""One error root for sdrpc: every fatal condition is an :class:`SdrpcError`.

Each class carries a documented exit code (see README, "Exit codes") and a hint
that tells the user what to try. Only ``sdrpc_build.cli`` turns these into
output and process exit codes.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_HINTS",
    "EXIT_CODES",
    "BuildError",
    "CheckError",
    "Interrupted",
    "LaunchError",
    "PinsError",
    "ProtocolError",
    "RecipeError",
    "SdrpcError",
    "SourceError",
    "StoreError",
    "Terminated",
    "ToolError",
    "UsageError",
    "VerifyError",
]


class SdrpcError(Exception):
    """Base of every error sdrpc reports to users.

    ``message`` is one line saying what went wrong; ``hint`` is one line (or a
    short paragraph) saying what to try; ``details`` is optional extra text
    such as the tail of a build log, shown below the message.
    """

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return self.message


class UsageError(SdrpcError):
    """A command-line value or combination of options is invalid."""

    exit_code = 2


class PinsError(SdrpcError):
    """The sd.cpp tree (or remote ref) does not yield valid pins."""

    exit_code = 3


class RecipeError(SdrpcError):
    """A backend recipe is unknown or invalid."""

    exit_code = 4


class SourceError(SdrpcError):
    """llama.cpp sources could not be fetched or verified at the pinned commit."""

    exit_code = 5


class ToolError(SdrpcError):
    """A tool the build needs (compiler, cmake, nvcc, glslc, ...) is missing."""

    exit_code = 6


class BuildError(SdrpcError):
    """CMake configure or the compile failed."""

    exit_code = 7


class VerifyError(SdrpcError):
    """A built server did not pass the handshake verification."""

    exit_code = 8


class StoreError(SdrpcError):
    """The artifact store could not be read or written."""

    exit_code = 9


class ProtocolError(SdrpcError):
    """Bytes from a peer do not form a valid ggml RPC message."""

    exit_code = 14


class CheckError(SdrpcError):
    """One or more servers are not compatible (sdrpc-check)."""

    exit_code = 10


class LaunchError(SdrpcError):
    """A server could not be started or supervised (sdrpc-launch)."""

    exit_code = 20


class Interrupted(SdrpcError):
    """The user pressed Ctrl-C."""

    exit_code = 130


class Terminated(Interrupted):
    """The process got SIGTERM (a service manager, ``kill``): stopped cleanly, 128 + 15."""

    exit_code = 143


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (run again with --debug and report it)",
    2: "usage error: bad option or value",
    3: "sd.cpp tree or remote ref gave invalid pins",
    4: "unknown or invalid recipe",
    5: "llama.cpp source could not be fetched or verified",
    6: "a required tool is missing",
    7: "cmake configure or compile failed",
    8: "the built server failed verification",
    9: "artifact store error (permissions, lock, corrupt entry)",
    10: "sdrpc-check: a server is incompatible (protocol or GGML_MAX_NAME)",
    11: "sdrpc-check: a server is unreachable",
    12: "sdrpc-check: a server is busy serving another client, or too slow",
    13: "sdrpc-check: not a ggml RPC server",
    14: "sdrpc-check: protocol error (or impossible values); sdrpc-bench: a server failed",
    20: "sdrpc-launch: a server could not be started",
    21: "sdrpc-launch: invalid servers.toml",
    22: "sdrpc-launch: port already in use",
    23: "sdrpc-launch: unknown -d device",
    24: "sdrpc-launch: host is not an IPv4 address",
    25: "sdrpc-launch: no server binary or build found",
    26: "sdrpc-launch: a server went FATAL (too many failures)",
    27: "sdrpc-launch status/stop: the instance is not running",
    28: "sdrpc-launch --detach: an instance of that name is already running",
    29: "sdrpc-launch stop: a process could not be stopped",
    40: "sdrpc up/down/status: invalid fleet.toml",
    41: "sdrpc up/down/status: Ansible (the sdrpc[fleet] extra) is not installed",
    42: "sdrpc up/status: one or more hosts failed (the healthy ones keep running)",
    43: "sdrpc up: the wheelhouse of sdrpc for the hosts could not be built",
    44: "sdrpc down: one or more hosts could not be cleaned",
    130: "interrupted (Ctrl-C); nothing half-written is kept",
    143: "terminated (SIGTERM); stopped like Ctrl-C, nothing half-written is kept",
}

#: what to try when an error carries no hint of its own, per exit code
DEFAULT_HINTS: dict[int, str] = {
    2: "'--help' lists the options and their values",
    3: "check the sd.cpp tree (git submodule update --init ggml), or give "
    "--llama-commit SHA --max-name N",
    4: "sdrpc-build --list-backends lists the recipes; a --recipe file must be UTF-8 TOML",
    5: "check --llama-repo / --llama-src / --llama-sdist; --debug shows more",
    6: "sdrpc doctor lists what is missing and how to install it",
    7: "read the build log shown above; sdrpc doctor checks the tools",
    8: "the server failed the handshake shown above; rebuild with --force",
    9: "check the permissions and free space of the cache (--cache-dir or SDRPC_CACHE_DIR)",
    10: "rebuild the server from the client's pins: sdrpc-build --sd-cpp PATH",
    11: "is the server running and reachable from here? (sdrpc-launch status)",
    12: "the server serves one client at a time; try again when it is idle",
    13: "point sdrpc-check at an rpc-server's port",
    14: "the server sent malformed data: check its version and log",
    20: "read the server's last lines above and its log (sdrpc-launch status shows where)",
    21: "fix servers.toml; the README lists its keys and values",
    22: "pick another port (-p) or stop what holds it",
    23: "use one of the devices the server lists",
    24: "give a literal IPv4 address of this machine, e.g. 127.0.0.1",
    25: "build one with sdrpc-build, or pass --binary PATH",
    26: "read the server's last lines above and its log",
    27: "start one with: sdrpc-launch ... --detach",
    28: "stop it first (sdrpc-launch stop --instance NAME) or pick another --instance",
    29: "find the process named above and end it by hand",
    40: "fix fleet.toml; the README (Several machines) lists its keys",
    41: "python -m pip install 'sdrpc[fleet]'",
    42: "fix the hosts named above and run sdrpc up again",
    43: "the client builds the hosts' wheels: it needs the package index",
    44: "run sdrpc down again when the hosts are reachable",
    130: "run the same command again; nothing half-written was kept",
    143: "run the same command again; nothing half-written was kept",
}
