"""Stop a detached instance: SIGTERM its supervisor, wait, SIGKILL what is left.

:func:`stop_named` is ``sdrpc-launch stop``: find the instance's state file, stop what it
names (:func:`stop_instance`) and remove the file; an unreadable file is removed too.

Every signal goes through an identity check (see ``identity``): a process whose PID was
reused is never signalled. The supervisor stops its own servers on SIGTERM (and the kernel
kills them if it dies, Linux parent-death signal); servers found running without a live
supervisor (systems without that signal) are signalled directly. Time and signals are
injected, so the rules are tested without processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdrpc_build.errors import NotRunningError, StopError
from sdrpc_build.launch.identity import (
    LIVE,
    ProcessIdentity,
    ProcessTable,
    Verdict,
    signal_verified,
)
from sdrpc_build.launch.instance import (
    InstanceState,
    check_instance_name,
    remove_state,
    state_path,
)
from sdrpc_build.launch.status import load_state, not_running_hint

__all__ = [
    "Checker",
    "Signaller",
    "StopOutcome",
    "StopReport",
    "stop_instance",
    "stop_named",
    "targets",
]

#: the verdict on a recorded process now
Checker = Callable[[ProcessIdentity], Verdict]
#: send a signal if the identity still matches; returns the verdict it acted on
Signaller = Callable[[ProcessIdentity, int], Verdict]
POLL = 0.05


@dataclass(frozen=True)
class StopOutcome:
    supervisor: Verdict  # the supervisor's verdict before anything was sent
    signalled: tuple[int, ...]  # PIDs that got SIGTERM
    killed: tuple[int, ...]  # PIDs that needed SIGKILL
    survivors: tuple[int, ...]  # PIDs still alive at the end

    @property
    def was_running(self) -> bool:
        return self.supervisor in LIVE or bool(self.signalled)


def targets(state: InstanceState) -> list[ProcessIdentity]:
    """The supervisor first, then every server process it recorded."""
    return [state.supervisor, *(s.process for s in state.servers if s.process is not None)]


def _wait_gone(
    procs: list[ProcessIdentity],
    check: Checker,
    deadline: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> list[ProcessIdentity]:
    left = [p for p in procs if check(p) in LIVE]
    while left and clock() < deadline:
        sleep(min(POLL, max(0.0, deadline - clock())))
        left = [p for p in left if check(p) in LIVE]
    return left


def stop_instance(
    state: InstanceState,
    *,
    check: Checker,
    send: Signaller,
    timeout: float,
    kill_grace: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StopOutcome:
    """SIGTERM, wait up to ``timeout`` s for every recorded process to go, then SIGKILL."""
    procs = targets(state)
    sup_verdict = check(state.supervisor)
    signalled: list[int] = []
    if sup_verdict in LIVE:
        first = [state.supervisor]  # it stops its servers itself, in order
    else:
        first = [p for p in procs[1:] if check(p) in LIVE]  # orphans: no supervisor left
    for p in first:
        if send(p, signal.SIGTERM) in LIVE:
            signalled.append(p.pid)
    left = _wait_gone(procs, check, clock() + timeout, clock, sleep)
    killed: list[int] = []
    for p in left:
        if send(p, signal.SIGKILL) in LIVE:
            killed.append(p.pid)
    if left:
        left = _wait_gone(left, check, clock() + kill_grace, clock, sleep)
    return StopOutcome(sup_verdict, tuple(signalled), tuple(killed), tuple(p.pid for p in left))


@dataclass(frozen=True)
class StopReport:
    """What ``stop`` did. ``state`` None: there was no readable state file, nothing to stop."""

    instance: str
    path: Path
    state: Optional[InstanceState]
    problem: Optional[str]  # why the state file could not be read
    removed_unreadable: bool  # ...and so it was removed
    outcome: Optional[StopOutcome]
    hint: Optional[str] = None  # when nothing was running: other instances, or what to do

    def not_running(self) -> NotRunningError:
        """The error for "there was nothing to stop" (exit 27)."""
        return NotRunningError(f"instance {self.instance!r} is not running", hint=self.hint)


def stop_named(
    run_dir: Path,
    instance: str,
    table: ProcessTable,
    timeout: Optional[float],
    announce: Callable[[InstanceState, Verdict], None] = lambda state, verdict: None,
) -> StopReport:
    """Stop an instance by name and remove its state file.

    ``timeout`` (None: the instance's own stop timeout + 5 s) bounds the wait before SIGKILL;
    ``announce`` hears about the instance before anything is sent. Raises StopError when a
    process outlives SIGKILL (the state file is kept then).
    """
    instance = check_instance_name(instance)
    path = state_path(run_dir, instance)
    state, problem = load_state(path)
    if state is None:
        removed = False
        if problem is not None and os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed = True
        hint = not_running_hint(run_dir, table, instance)
        return StopReport(instance, path, None, problem, removed, None, hint)
    announce(state, table.verify(state.supervisor))
    outcome = stop_instance(
        state,
        check=table.verify,
        send=lambda ident, sig: signal_verified(table, ident, sig),
        timeout=timeout if timeout is not None else state.stop_timeout + 5.0,
    )
    if outcome.survivors:
        pids = ", ".join(map(str, outcome.survivors))
        raise StopError(
            f"instance {instance!r}: process(es) {pids} did not end after SIGKILL",
            hint="they may belong to another user or hang in the kernel; see 'ps -p PID'",
        )
    remove_state(path, owner_pid=state.supervisor.pid)
    return StopReport(instance, path, state, problem, False, outcome)
