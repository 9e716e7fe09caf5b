"""The fleet's errors (exit codes 40-49; README "Exit codes")."""

from __future__ import annotations

from sdrpc_build.errors import SdrpcError

__all__ = [
    "FleetConfigError",
    "FleetDownError",
    "FleetHostsError",
    "FleetToolError",
    "FleetWheelhouseError",
]


class FleetConfigError(SdrpcError):
    """fleet.toml cannot be read or does not validate."""

    exit_code = 40


class FleetToolError(SdrpcError):
    """Ansible (the ``sdrpc[fleet]`` extra) or ssh is missing on this machine."""

    exit_code = 41


class FleetHostsError(SdrpcError):
    """One or more hosts failed (unreachable, install failed, server not ready or not
    compatible); the healthy hosts keep running."""

    exit_code = 42


class FleetWheelhouseError(SdrpcError):
    """The wheelhouse of sdrpc itself (shipped to offline hosts) could not be built."""

    exit_code = 43


class FleetDownError(SdrpcError):
    """``sdrpc down`` could not clean one or more hosts."""

    exit_code = 44
