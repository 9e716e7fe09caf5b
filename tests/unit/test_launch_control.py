"""Stopping a detached instance: identity-checked signals, bounded waits, SIGKILL escalation."""

from __future__ import annotations

import signal
from pathlib import Path

from sdrpc_build.launch.control import StopOutcome, stop_instance, targets
from sdrpc_build.launch.identity import LIVE, ProcessIdentity, Verdict
from sdrpc_build.launch.instance import InstanceState, ServerRecord

SUP = ProcessIdentity(100, "1@b", "proc")
S0 = ProcessIdentity(101, "2@b", "proc")
S1 = ProcessIdentity(102, "3@b", "proc")


def state() -> InstanceState:
    logs = Path("/logs")
    return InstanceState(
        instance="default",
        supervisor=SUP,
        started_at=0.0,
        log_dir=logs,
        supervisor_log=logs / "sup.log",
        stop_timeout=5.0,
        phase="running",
        servers=(
            ServerRecord("s0", "127.0.0.1:1", logs / "s0.log", "ready", S0),
            ServerRecord("s1", "127.0.0.1:2", logs / "s1.log", "ready", S1),
            ServerRecord("s2", "127.0.0.1:3", logs / "s2.log", "restarting"),  # no process
        ),
    )


class World:
    """Fake processes: verdicts per pid, what each signal does, a clock that sleeps for real."""

    def __init__(self, verdicts: dict[int, Verdict]) -> None:
        self.verdicts = dict(verdicts)
        self.sent: list[tuple[int, int]] = []
        self.now = 0.0
        self.on_signal: dict[tuple[int, int], list[int]] = {}  # (pid, sig) -> pids that die

    def check(self, p: ProcessIdentity) -> Verdict:
        return self.verdicts.get(p.pid, "dead")

    def send(self, p: ProcessIdentity, sig: int) -> Verdict:
        v = self.check(p)
        if v in LIVE:
            self.sent.append((p.pid, sig))
            for pid in self.on_signal.get((p.pid, sig), []):
                self.verdicts[pid] = "dead"
        return v

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.now += max(s, 0.01)


def run(w: World, timeout: float = 10.0) -> StopOutcome:
    return stop_instance(
        state(), check=w.check, send=w.send, timeout=timeout, clock=w.clock, sleep=w.sleep
    )


def test_targets_supervisor_first() -> None:
    assert targets(state()) == [SUP, S0, S1]


def test_sigterm_to_the_supervisor_takes_its_servers_along() -> None:
    w = World({100: "alive", 101: "alive", 102: "alive"})
    w.on_signal[(100, signal.SIGTERM)] = [100, 101, 102]
    out = run(w)
    assert w.sent == [(100, signal.SIGTERM)]  # servers are stopped by their supervisor
    assert out == StopOutcome("alive", (100,), (), ())
    assert out.was_running
    assert w.now == 0.0


def test_escalates_to_sigkill_after_the_timeout() -> None:
    w = World({100: "alive", 101: "alive", 102: "dead"})
    w.on_signal[(100, signal.SIGKILL)] = [100]
    w.on_signal[(101, signal.SIGKILL)] = [101]
    out = run(w, timeout=2.0)
    assert w.sent == [(100, signal.SIGTERM), (100, signal.SIGKILL), (101, signal.SIGKILL)]
    assert out.killed == (100, 101)
    assert out.survivors == ()
    assert 2.0 <= w.now < 2.2


def test_survivors_are_reported_after_a_bounded_wait() -> None:
    w = World({100: "alive"})
    out = run(w, timeout=1.0)
    assert out.survivors == (100,)
    assert w.now < 1.0 + 5.0 + 0.2  # timeout + kill grace


def test_stale_file_with_a_reused_pid_signals_nobody() -> None:
    w = World({100: "reused", 101: "reused", 102: "dead"})
    out = run(w)
    assert w.sent == []
    assert out == StopOutcome("reused", (), (), ())
    assert not out.was_running


def test_orphaned_servers_are_stopped_directly() -> None:
    """No supervisor left (no parent-death signal on this system), a server still runs."""
    w = World({100: "dead", 101: "alive", 102: "reused"})
    w.on_signal[(101, signal.SIGTERM)] = [101]
    out = run(w)
    assert w.sent == [(101, signal.SIGTERM)]
    assert out.was_running
    assert out.signalled == (101,)


def test_pid_only_processes_are_signalled() -> None:
    w = World({100: "unverified"})
    w.on_signal[(100, signal.SIGTERM)] = [100]
    assert run(w).signalled == (100,)
