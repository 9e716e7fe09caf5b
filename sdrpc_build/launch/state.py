"""One server's states and the rules that move it between them (pure; time is passed in).

STARTING -> READY          readiness probe answered (TCP accept + HELLO)
STARTING/READY -> BACKOFF  the process exited and the restart policy says restart
BACKOFF -> STARTING        the backoff delay has passed (same port)
any -> FATAL               a permanent failure (bad flag, unknown device), restart=never after a
                           failure, or ``max_failures`` failures within ``failure_window`` seconds
STARTING/READY -> STOPPING stop requested (SIGTERM sent; SIGKILL after ``stop_timeout``)
STOPPING -> EXITED         the process is gone; also a clean exit that is not restarted

An exit before READY is always a failure, exit status 0 included: rpc-server exits 0 on bad
flags and on bind failures. A kill by a signal is a failure too.
"""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from sdrpc_build.launch.settings import Policy

__all__ = ["ExitInfo", "Policy", "ServerMachine", "State", "backoff_delay", "describe_exit"]


class State(str, Enum):
    STARTING = "STARTING"
    READY = "READY"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"

    def __str__(self) -> str:
        return self.value


def backoff_delay(policy: Policy, recent_failures: int) -> float:
    """Delay before restart number ``recent_failures`` (1 = first failure in the window)."""
    n = max(recent_failures, 1)
    return float(min(policy.backoff_max, policy.backoff_initial * policy.backoff_factor ** (n - 1)))


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass(frozen=True)
class ExitInfo:
    returncode: int
    was_ready: bool
    failure: bool
    reason: Optional[str]  # why it failed (from its output, a timeout, a probe), when known

    def describe(self) -> str:
        text = describe_exit(self.returncode)
        if not self.was_ready:
            text += " before it was ready"
        return text


@dataclass
class ServerMachine:
    """The supervision state of one server. Methods take ``now`` and return nothing to do I/O."""

    name: str
    policy: Policy
    state: State = State.EXITED
    generation: int = 0  # bumped at each start; probe results of older generations are stale
    started_at: float = 0.0
    ready_at: Optional[float] = None
    next_start_at: Optional[float] = None
    next_probe_at: Optional[float] = None
    probe_in_flight: bool = False
    stop_deadline: Optional[float] = None
    killed: bool = False  # SIGKILL sent to this generation
    kill_reason: Optional[str] = None  # set when sdrpc killed it (not ready in time, bad probe)
    kill_permanent: bool = False
    failures: deque[float] = field(default_factory=deque)
    restarts: int = 0
    busy: bool = False
    last_exit: Optional[ExitInfo] = None
    fatal_reason: Optional[str] = None
    ever_ready: bool = False

    @property
    def running(self) -> bool:
        """A process of ours exists (or is being stopped)."""
        return self.state in (State.STARTING, State.READY, State.STOPPING)

    @property
    def finished(self) -> bool:
        return self.state in (State.EXITED, State.FATAL)

    def start(self, now: float) -> None:
        if self.generation > 0:
            self.restarts += 1
        self.generation += 1
        self.state = State.STARTING
        self.started_at = now
        self.ready_at = None
        self.next_start_at = None
        self.next_probe_at = now + self.policy.probe_interval
        self.probe_in_flight = False
        self.stop_deadline = None
        self.killed = False
        self.kill_reason = None
        self.kill_permanent = False
        self.busy = False

    def mark_ready(self, now: float) -> None:
        if self.state is State.STARTING:
            self.state = State.READY
            self.ready_at = now
            self.ever_ready = True
            self.next_probe_at = None

    def mark_killing(self, reason: str, permanent: bool = False) -> None:
        """sdrpc is killing this generation itself (e.g. not ready in time)."""
        self.killed = True
        self.kill_reason = reason
        self.kill_permanent = permanent
        self.next_probe_at = None

    def recent_failures(self, now: float) -> int:
        while self.failures and now - self.failures[0] > self.policy.failure_window:
            self.failures.popleft()
        return len(self.failures)

    def exited(
        self, now: float, returncode: int, reason: Optional[str] = None, permanent: bool = False
    ) -> ExitInfo:
        """The process is gone; decide BACKOFF / EXITED / FATAL."""
        was_ready = self.state is State.READY
        stopping = self.state is State.STOPPING
        was_ready = was_ready or (stopping and self.ready_at is not None)
        if self.kill_reason is not None:
            reason, permanent = self.kill_reason, self.kill_permanent or permanent
        failure = (not was_ready) or returncode != 0
        info = ExitInfo(returncode, was_ready, failure and not stopping, reason)
        self.last_exit = info
        self.next_probe_at = None
        self.probe_in_flight = False
        self.busy = False
        if stopping:
            self.state = State.EXITED
            return info
        if not failure:
            if self.policy.restart == "always":
                self._backoff(now, self.policy.backoff_initial)
            else:
                self.state = State.EXITED
            return info
        self.failures.append(now)
        n = self.recent_failures(now)
        what = info.describe() + (f": {reason}" if reason else "")
        if permanent:
            self._fatal(f"{what} (restarting cannot fix this)")
        elif self.policy.restart == "never":
            self._fatal(f"{what} (restart policy: never)")
        elif n >= self.policy.max_failures:
            window = f"{self.policy.failure_window:g}"
            self._fatal(f"{what}; {n} failures within {window} s, giving up")
        else:
            self._backoff(now, backoff_delay(self.policy, n))
        return info

    def stop(self, now: float) -> bool:
        """Request a stop; True when a process must be sent SIGTERM."""
        if self.state in (State.STARTING, State.READY):
            self.state = State.STOPPING
            self.stop_deadline = now + self.policy.stop_timeout
            self.next_probe_at = None
            return True
        if self.state is State.BACKOFF:
            self.state = State.EXITED
            self.next_start_at = None
        return False

    def _backoff(self, now: float, delay: float) -> None:
        self.state = State.BACKOFF
        self.next_start_at = now + delay

    def _fatal(self, reason: str) -> None:
        self.state = State.FATAL
        self.fatal_reason = reason
        self.next_start_at = None
