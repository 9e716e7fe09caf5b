"""The fleet's errors live with every other error in :mod:`sdrpc_build.errors`
(exit codes 40-44); re-exported here for the fleet wing's modules."""

from __future__ import annotations

from sdrpc_build.errors import (
    FleetConfigError,
    FleetDownError,
    FleetHostsError,
    FleetToolError,
    FleetWheelhouseError,
)

__all__ = [
    "FleetConfigError",
    "FleetDownError",
    "FleetHostsError",
    "FleetToolError",
    "FleetWheelhouseError",
]
