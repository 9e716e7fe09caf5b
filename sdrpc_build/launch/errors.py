"""Errors raised by ``sdrpc-launch`` (exit codes 20-29).

| code | class | meaning |
|---|---|---|
| 20 | ``LaunchError`` | a server could not be started or supervised (generic) |
| 21 | ``LaunchConfigError`` | the ``servers.toml`` file is invalid |
| 22 | ``PortInUseError`` | a port is already in use (the holder is named when possible) |
| 23 | ``DeviceError`` | an unknown ``-d`` device (the binary's devices are listed) |
| 24 | ``HostError`` | a host that is not (and does not resolve to) an IPv4 address |
| 25 | ``NoServerBinaryError`` | no ``--binary`` and no matching build in the artifact store |
| 26 | ``ServerFatalError`` | one or more servers ended FATAL (too many failures) |
| 27 | ``NotRunningError`` | ``status``/``stop``: the instance is not running (none, or stale) |
| 28 | ``InstanceRunningError`` | ``--detach``: a live instance of that name exists (or starts) |
| 29 | ``StopError`` | ``stop``: a process survived SIGKILL or may not be signalled |
"""

from __future__ import annotations

from sdrpc_build.errors import LaunchError

__all__ = [
    "LAUNCH_EXIT_CODES",
    "DeviceError",
    "HostError",
    "InstanceRunningError",
    "LaunchConfigError",
    "LaunchError",
    "NoServerBinaryError",
    "NotRunningError",
    "PortInUseError",
    "ServerFatalError",
    "StopError",
]


class LaunchConfigError(LaunchError):
    """The servers.toml file cannot be read or does not validate."""

    exit_code = 21


class PortInUseError(LaunchError):
    """A server's port is already bound by another process."""

    exit_code = 22


class DeviceError(LaunchError):
    """A ``-d`` device is not offered by the server binary."""

    exit_code = 23


class HostError(LaunchError):
    """rpc-server binds literal IPv4 addresses only."""

    exit_code = 24


class NoServerBinaryError(LaunchError):
    """No server binary was given and no build matches the selection."""

    exit_code = 25


class ServerFatalError(LaunchError):
    """At least one server gave up restarting (FATAL)."""

    exit_code = 26


class NotRunningError(LaunchError):
    """``sdrpc-launch status``/``stop``: no live detached instance of that name."""

    exit_code = 27


class InstanceRunningError(LaunchError):
    """``sdrpc-launch --detach``: an instance of that name is already running."""

    exit_code = 28


class StopError(LaunchError):
    """``sdrpc-launch stop``: a process did not go away (or may not be signalled)."""

    exit_code = 29


LAUNCH_EXIT_CODES: dict[int, str] = {
    20: "a server could not be started or supervised",
    21: "invalid servers.toml",
    22: "a port is already in use",
    23: "unknown -d device",
    24: "host is not an IPv4 address",
    25: "no server binary or matching build",
    26: "one or more servers ended FATAL",
    27: "status/stop: the instance is not running",
    28: "--detach: an instance of that name is already running",
    29: "stop: a process could not be stopped",
}
