"""A ``--detach`` instance, by name: is it running, and how is each of its servers?

Reads ``<run dir>/<name>.json`` and checks every recorded process's identity (PID + start
time) first: a stale file whose PID now names another process reads as "not running". Never
touches a server's port (a probe during a client session would hang): busy/idle comes from the
server's log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from sdrpc_build.errors import NotRunningError
from sdrpc_build.launch.activity import Activity, read_activity
from sdrpc_build.launch.identity import LIVE, ProcessTable, Verdict
from sdrpc_build.launch.instance import (
    InstanceState,
    ServerRecord,
    StateFileError,
    check_instance_name,
    instance_flag,
    list_instances,
    read_state,
    state_path,
)

__all__ = [
    "InstanceStatus",
    "ServerState",
    "ServerStatus",
    "instance_status",
    "load_state",
    "not_running_hint",
    "server_status",
]

ServerState = Literal["running", "starting", "exited"]
_WHY = {"dead": "its supervisor is gone", "reused": "its PID now names another process"}


@dataclass(frozen=True)
class ServerStatus:
    record: ServerRecord
    state: ServerState
    activity: Activity
    uptime: Optional[float]  # seconds since it became ready (while running)

    @property
    def running(self) -> bool:
        return self.state == "running"


def server_status(
    rec: ServerRecord,
    verdict: Optional[Verdict],
    supervised: bool,
    now: float,
    activity: Callable[[Path, int], Activity] = read_activity,
) -> ServerStatus:
    """One server: running iff its recorded process is still the same process; starting
    while a live supervisor (re)starts it; else exited."""
    if verdict in LIVE:
        act = activity(rec.log, rec.log_offset)
        uptime = now - rec.ready_at if rec.ready_at is not None else None
        return ServerStatus(rec, "running", act, uptime)
    state: ServerState = (
        "starting" if supervised and rec.phase in ("starting", "restarting") else "exited"
    )
    return ServerStatus(rec, state, Activity("unknown"), None)


def load_state(path: Path) -> tuple[Optional[InstanceState], Optional[str]]:
    """The state file, or None and why it cannot be read (None, None: there is none)."""
    try:
        return read_state(path), None
    except StateFileError as exc:
        return None, str(exc)


def not_running_hint(run_dir: Path, table: ProcessTable, instance: str) -> str:
    """Which other instances run (a mistyped name?), else how to start one."""
    live = []
    for name in list_instances(run_dir):
        if name == instance:
            continue
        try:
            other = read_state(state_path(run_dir, name))
        except StateFileError:
            continue
        if other is not None and table.verify(other.supervisor) in LIVE:
            live.append(name)
    if live:
        return "running instances: " + ", ".join(live) + " (use --instance NAME)"
    return "start one with: sdrpc-launch ... --detach"


@dataclass(frozen=True)
class InstanceStatus:
    """What ``status`` found. ``state`` None: no readable state file (``problem`` says why)."""

    instance: str
    path: Path
    state: Optional[InstanceState]
    problem: Optional[str]
    verdict: Optional[Verdict]  # the supervisor's identity check
    servers: tuple[ServerStatus, ...]
    now: float
    hint: Optional[str] = None  # for "not running": other instances, or what to do

    @property
    def running(self) -> bool:
        return self.verdict in LIVE

    def not_running(self) -> Optional[NotRunningError]:
        """The error ``status`` ends with when the instance is not running, else None."""
        if self.state is None:
            reason = self.problem or "no state file"
            return NotRunningError(
                f"instance {self.instance!r} is not running ({reason})", self.hint
            )
        if self.running:
            return None
        why = _WHY.get(str(self.verdict), str(self.verdict))
        return NotRunningError(
            f"instance {self.instance!r} is not running: {why} "
            f"(pid {self.state.supervisor.pid}; the state file is stale)",
            hint=f"'sdrpc-launch stop{instance_flag(self.instance)}' removes it",
        )


def instance_status(
    run_dir: Path,
    instance: str,
    table: ProcessTable,
    clock: Callable[[], float] = time.time,
) -> InstanceStatus:
    """Read and check an instance (its name is checked first: a usage error)."""
    instance = check_instance_name(instance)
    path = state_path(run_dir, instance)
    state, problem = load_state(path)
    now = clock()
    if state is None:
        if problem is None:
            hint = not_running_hint(run_dir, table, instance)
        elif os.path.isfile(path):  # (Path.is_file raises for a too long name)
            hint = f"'sdrpc-launch stop{instance_flag(instance)}' removes the file"
        else:
            hint = "check --cache-dir: the state files are in its run/ directory"
        return InstanceStatus(instance, path, None, problem, None, (), now, hint)
    verdict = table.verify(state.supervisor)
    running = verdict in LIVE
    servers = tuple(
        server_status(s, table.verify(s.process) if s.process else None, running, now)
        for s in state.servers
    )
    return InstanceStatus(instance, path, state, problem, verdict, servers, now)
