"""Stop a detached instance: SIGTERM its supervisor, wait, SIGKILL what is left.

Every signal goes through an identity check (see ``identity``): a process whose PID was
reused is never signalled. The supervisor stops its own servers on SIGTERM (and the kernel
kills them if it dies, Linux parent-death signal); servers found running without a live
supervisor (systems without that signal) are signalled directly. Time and signals are
injected, so the rules are tested without processes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from sdrpc_build.launch.identity import LIVE, ProcessIdentity, Verdict
from sdrpc_build.launch.instance import InstanceState

__all__ = ["Checker", "Signaller", "StopOutcome", "stop_instance", "targets"]

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
