"""One error root for sdrpc, and every exit code declared once.

:class:`ExitCode` is the one table of exit codes: number, meaning and the hint
shown when an error carries none. :data:`EXIT_CODES`, :data:`DEFAULT_HINTS`,
each error class's ``exit_code`` and the ``exit codes:`` block of every
command's ``--help`` (:func:`exit_codes_help`) are derived from it; the README's
"Exit codes" table is checked against it by a test.

Every fatal condition is an :class:`SdrpcError` subclass defined here, with a
message, a hint and its exit code. Only ``sdrpc_build.cli`` turns them into
output and process exit codes. This module imports only the standard library.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "DEFAULT_HINTS",
    "EXIT_CODES",
    "BenchError",
    "BuildError",
    "Closed",
    "CodecError",
    "DetachedStartError",
    "DeviceError",
    "ExitCode",
    "FleetConfigError",
    "FleetDownError",
    "FleetHostsError",
    "FleetToolError",
    "FleetWheelhouseError",
    "FrameTooLarge",
    "HostError",
    "InstanceRunningError",
    "Interrupted",
    "LaunchConfigError",
    "LaunchError",
    "NoServerBinaryError",
    "NotRpcServer",
    "NotRunningError",
    "PinsError",
    "PortInUseError",
    "ProtocolError",
    "RecipeError",
    "SdrpcError",
    "ServerFatalError",
    "SettingError",
    "SizeMismatch",
    "SourceError",
    "StateFileError",
    "StopError",
    "StoreError",
    "TensorLayoutError",
    "Terminated",
    "Timeout",
    "TooSlow",
    "ToolError",
    "TransportError",
    "Unreachable",
    "UsageError",
    "VerifyError",
    "exit_codes_help",
]

_AGAIN = "run the same command again; nothing half-written was kept"


class ExitCode(enum.IntEnum):
    """Every exit code of every sdrpc command: ``(number, meaning, default hint)``."""

    meaning: str
    hint: str

    def __new__(cls, value: int, meaning: str, hint: str = "") -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        member.hint = hint
        return member

    OK = 0, "success"
    INTERNAL = 1, "unexpected internal error (run again with --debug and report it)"
    USAGE = 2, "usage error: bad option or value", "'--help' lists the options and their values"
    PINS = (
        3,
        "the sd.cpp tree or remote ref gave invalid pins",
        "check the sd.cpp tree (git submodule update --init ggml), or give "
        "--llama-commit SHA --max-name N",
    )
    RECIPE = (
        4,
        "unknown or invalid recipe (backend)",
        "sdrpc-build --list-backends lists the recipes; a --recipe file must be UTF-8 TOML",
    )
    SOURCE = (
        5,
        "llama.cpp source could not be fetched or verified",
        "check --llama-repo / --llama-src / --llama-sdist; --debug shows more",
    )
    TOOL = (
        6,
        "a required tool is missing (the backend cannot be built here)",
        "sdrpc doctor lists what is missing and how to install it",
    )
    BUILD = (
        7,
        "cmake configure or compile failed",
        "read the build log shown above; sdrpc doctor checks the tools",
    )
    VERIFY = (
        8,
        "the built server failed verification (nothing stored)",
        "the server failed the handshake shown above; rebuild with --force",
    )
    STORE = (
        9,
        "artifact store or cache error (permissions, lock, corrupt entry)",
        "check the permissions and free space of the cache (--cache-dir or SDRPC_CACHE_DIR)",
    )
    INCOMPATIBLE = (
        10,
        "a server is incompatible (protocol or GGML_MAX_NAME)",
        "rebuild the server from the client's pins: sdrpc-build --sd-cpp PATH",
    )
    UNREACHABLE = (
        11,
        "a server is unreachable",
        "is the server running and reachable from here? (sdrpc-launch status)",
    )
    BUSY = (
        12,
        "a server is busy serving another client, or too slow",
        "the server serves one client at a time; try again when it is idle",
    )
    NOT_RPC = 13, "not a ggml RPC server", "point sdrpc-check at an rpc-server's port"
    PROTOCOL = (
        14,
        "a server broke the protocol (or reported impossible values), or failed during a benchmark",
        "the server sent malformed data: check its version and log",
    )
    LAUNCH = (
        20,
        "a server could not be started (or its log/state/cache dir cannot be written)",
        "read the server's last lines above and its log (sdrpc-launch status shows where)",
    )
    LAUNCH_CONFIG = (
        21,
        "invalid servers.toml",
        "fix servers.toml; the README lists its keys and values",
    )
    PORT_IN_USE = (
        22,
        "a port is already in use",
        "pick another port (-p) or stop what holds it",
    )
    DEVICE = 23, "unknown -d device", "use one of the devices the server lists"
    HOST = (
        24,
        "the host is not an IPv4 address",
        "give a literal IPv4 address of this machine, e.g. 127.0.0.1",
    )
    NO_BINARY = (
        25,
        "no server binary or matching build found",
        "build one with sdrpc-build, or pass --binary PATH",
    )
    SERVER_FATAL = (
        26,
        "a server went FATAL (too many failures)",
        "read the server's last lines above and its log",
    )
    NOT_RUNNING = (
        27,
        "status/stop: the instance is not running",
        "start one with: sdrpc-launch ... --detach",
    )
    INSTANCE_RUNNING = (
        28,
        "--detach: an instance of that name is already running",
        "stop it first (sdrpc-launch stop --instance NAME) or pick another --instance",
    )
    STOP = (
        29,
        "stop: a process could not be stopped",
        "find the process named above and end it by hand",
    )
    FLEET_CONFIG = (
        40,
        "sdrpc up/down/status: invalid fleet.toml",
        "fix fleet.toml; the README (Several machines) lists its keys",
    )
    FLEET_TOOL = (
        41,
        "sdrpc up/down/status: Ansible (the sdrpc[fleet] extra) is not installed",
        "python -m pip install 'sdrpc[fleet]'",
    )
    FLEET_HOSTS = (
        42,
        "sdrpc up/status: one or more hosts failed (the healthy ones keep running)",
        "fix the hosts named above and run sdrpc up again",
    )
    FLEET_WHEELHOUSE = (
        43,
        "sdrpc up: the wheelhouse of sdrpc for the hosts could not be built",
        "the client builds the hosts' wheels: it needs the package index",
    )
    FLEET_DOWN = (
        44,
        "sdrpc down: one or more hosts could not be cleaned",
        "run sdrpc down again when the hosts are reachable",
    )
    INTERRUPTED = 130, "interrupted (Ctrl-C); nothing half-written is kept", _AGAIN
    BROKEN_PIPE = (
        141,
        "the reader of the output went away (broken pipe, e.g. '| head')",
        "nothing to do: the output was cut short on purpose",
    )
    TERMINATED = (
        143,
        "terminated (SIGTERM); stopped like Ctrl-C, nothing half-written is kept",
        _AGAIN,
    )


#: exit code -> meaning, for every code any sdrpc command returns
EXIT_CODES: dict[int, str] = {int(c): c.meaning for c in ExitCode}
#: what to try when an error carries no hint of its own, per exit code
DEFAULT_HINTS: dict[int, str] = {int(c): c.hint for c in ExitCode if c.hint}


def exit_codes_help(codes: Iterable[ExitCode]) -> str:
    """The ``exit codes:`` block of a command's ``--help``, one line per code."""
    return "exit codes:\n" + "\n".join(f"  {int(c):>3}  {c.meaning}" for c in codes)


class SdrpcError(Exception):
    """Base of every error sdrpc reports to users.

    ``message`` is one line saying what went wrong; ``hint`` is one line (or a
    short paragraph) saying what to try; ``details`` is optional extra text
    such as the tail of a build log, shown below the message.
    """

    exit_code: int = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return self.message


# --- usage and build (sdrpc-build, sdrpc doctor, sdrpc cache) -----------------------------


class UsageError(SdrpcError):
    """A command-line value or combination of options is invalid."""

    exit_code = ExitCode.USAGE


class SettingError(UsageError):
    """A setting out of range or not a number; the message names the flag or key."""


class PinsError(SdrpcError):
    """The sd.cpp tree (or remote ref) does not yield valid pins."""

    exit_code = ExitCode.PINS


class RecipeError(SdrpcError):
    """A backend recipe is unknown or invalid."""

    exit_code = ExitCode.RECIPE


class SourceError(SdrpcError):
    """llama.cpp sources could not be fetched or verified at the pinned commit."""

    exit_code = ExitCode.SOURCE


class ToolError(SdrpcError):
    """A tool the build needs (compiler, cmake, nvcc, glslc, ...) is missing."""

    exit_code = ExitCode.TOOL


class BuildError(SdrpcError):
    """CMake configure or the compile failed."""

    exit_code = ExitCode.BUILD


class VerifyError(SdrpcError):
    """A built server did not pass the handshake verification."""

    exit_code = ExitCode.VERIFY


class StoreError(SdrpcError):
    """The artifact store could not be read or written."""

    exit_code = ExitCode.STORE


# --- the protocol (sdrpc-check, sdrpc-bench) ----------------------------------------------


class ProtocolError(SdrpcError):
    """Bytes from a peer do not form a valid ggml RPC message."""

    exit_code = ExitCode.PROTOCOL


class CodecError(ProtocolError):
    """Bytes or values that do not form the expected ggml RPC message."""


class TensorLayoutError(CodecError):
    """An ``rpc_tensor`` cannot be packed or unpacked with the given name length."""


class SizeMismatch(CodecError):
    """A reply declared a size other than the one the request calls for."""

    def __init__(self, what: str, expected: int, declared: int, head: bytes = b"") -> None:
        super().__init__(f"{what}: expected a {expected}-byte reply, peer declared {declared}")
        self.expected = expected
        self.declared = declared
        self.head = head


class FrameTooLarge(CodecError):
    """A peer declared a frame larger than we are willing to buffer."""


class TransportError(ProtocolError):
    """The connection failed (as opposed to bytes that make no sense)."""


class Unreachable(TransportError):
    """No TCP connection could be made (refused, unresolvable, timed out)."""


class Timeout(TransportError):
    """No (complete) reply in time; ``received`` bytes of it had arrived.

    ``stalled``: nothing moved for a whole ``timeout`` (as opposed to bytes that
    kept coming, too slowly to finish within the exchange's limit).
    """

    def __init__(self, message: str, received: int = 0, stalled: bool = False) -> None:
        super().__init__(message)
        self.received = received
        self.stalled = stalled


class TooSlow(Timeout):
    """The connection's overall ``deadline`` passed before the operation completed."""


class Closed(TransportError):
    """The peer closed or reset the connection; ``received`` bytes had arrived."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class NotRpcServer(ProtocolError):
    """The peer does not speak (HELLO-era) ggml RPC."""


class BenchError(SdrpcError):
    """A server failed or broke off during the benchmark; ``partial`` holds what was
    measured before (when anything was): a :class:`sdrpc_build.bench.maths.ServerResult`."""

    exit_code = ExitCode.PROTOCOL

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        details: str | None = None,
        partial: Any = None,
    ) -> None:
        super().__init__(message, hint, details)
        self.partial = partial


# --- several machines (sdrpc up/down/status) -------------------------------------------------


class FleetConfigError(SdrpcError):
    """fleet.toml cannot be read or does not validate."""

    exit_code = ExitCode.FLEET_CONFIG


class FleetToolError(SdrpcError):
    """Ansible (the ``sdrpc[fleet]`` extra) or ssh is missing on this machine."""

    exit_code = ExitCode.FLEET_TOOL


class FleetHostsError(SdrpcError):
    """One or more hosts failed (unreachable, install failed, server not ready or not
    compatible); the healthy hosts keep running."""

    exit_code = ExitCode.FLEET_HOSTS


class FleetWheelhouseError(SdrpcError):
    """The wheelhouse of sdrpc itself (shipped to offline hosts) could not be built."""

    exit_code = ExitCode.FLEET_WHEELHOUSE


class FleetDownError(SdrpcError):
    """``sdrpc down`` could not clean one or more hosts."""

    exit_code = ExitCode.FLEET_DOWN


# --- launching (sdrpc-launch) -------------------------------------------------------------


class LaunchError(SdrpcError):
    """A server could not be started or supervised (sdrpc-launch)."""

    exit_code: int = ExitCode.LAUNCH


class StateFileError(LaunchError):
    """A state file (``run/<instance>.json``) that cannot be read or does not validate."""


class DetachedStartError(LaunchError):
    """The detached supervisor failed to start; carries its exit code, pid and log."""

    def __init__(
        self,
        message: str,
        hint: Optional[str],
        details: Optional[str],
        exit_code: int,
        *,
        supervisor_pid: int,
        log: Path,
    ) -> None:
        super().__init__(message, hint, details)
        self.exit_code = exit_code
        self.supervisor_pid = supervisor_pid
        self.log = log


class LaunchConfigError(LaunchError):
    """The servers.toml file cannot be read or does not validate."""

    exit_code = ExitCode.LAUNCH_CONFIG


class PortInUseError(LaunchError):
    """A server's port is already bound by another process."""

    exit_code = ExitCode.PORT_IN_USE


class DeviceError(LaunchError):
    """A ``-d`` device is not offered by the server binary."""

    exit_code = ExitCode.DEVICE


class HostError(LaunchError):
    """rpc-server binds literal IPv4 addresses only."""

    exit_code = ExitCode.HOST


class NoServerBinaryError(LaunchError):
    """No server binary was given and no build matches the selection."""

    exit_code = ExitCode.NO_BINARY


class ServerFatalError(LaunchError):
    """At least one server gave up restarting (FATAL)."""

    exit_code = ExitCode.SERVER_FATAL


class NotRunningError(LaunchError):
    """``sdrpc-launch status``/``stop``: no live detached instance of that name."""

    exit_code = ExitCode.NOT_RUNNING


class InstanceRunningError(LaunchError):
    """``sdrpc-launch --detach``: an instance of that name is already running."""

    exit_code = ExitCode.INSTANCE_RUNNING


class StopError(LaunchError):
    """``sdrpc-launch stop``: a process did not go away (or may not be signalled)."""

    exit_code = ExitCode.STOP


# --- any command --------------------------------------------------------------------------


class Interrupted(SdrpcError):
    """The user pressed Ctrl-C."""

    exit_code = ExitCode.INTERRUPTED


class Terminated(Interrupted):
    """The process got SIGTERM (a service manager, ``kill``): stopped cleanly, 128 + 15."""

    exit_code = ExitCode.TERMINATED
