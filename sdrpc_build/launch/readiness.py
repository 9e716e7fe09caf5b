"""Readiness = TCP accept + HELLO answered (+ the GGML_MAX_NAME probe when the value is known).

launch does not speak the protocol: whoever starts servers injects the check, a callable that
probes one server and answers :class:`Readiness` (``sdrpc-launch`` wires sdrpc's protocol probe
and compatibility rules; build's verify its own). The supervisor asks it about starting servers
only: a probe made while a client is connected would wait unanswered (one client at a time).

:func:`trial_run` is the one-shot form: start a server the way the supervisor does
(:func:`~sdrpc_build.launch.procs.spawn`: own process group, parent-death signal, line-buffered
output), ask the check until it is ready, fails, exits or the deadline passes, then stop it
(SIGTERM, then SIGKILL), always, and hand back what it printed.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Optional

from sdrpc_build.launch.procs import Child, ProcessFactory, spawn
from sdrpc_build.launch.spec import ServerSpec

__all__ = [
    "OUTPUT_HEAD",
    "OUTPUT_TAIL",
    "Readiness",
    "ReadinessCheck",
    "RemoteDevice",
    "TrialCheck",
    "TrialRun",
    "trial_run",
]

OUTPUT_HEAD = 1 << 20  # bytes of a trial run's output kept from the start (the banner)...
OUTPUT_TAIL = 1 << 16  # ...and from the end (why it failed)
_CHUNK = 65536


@dataclass(frozen=True)
class RemoteDevice:
    index: int
    free: int
    total: int


@dataclass(frozen=True)
class Readiness:
    """``ready``; ``retry`` (not listening yet); ``fail`` (answers wrongly: kill, FATAL)."""

    status: Literal["ready", "retry", "fail"]
    message: Optional[str] = None
    protocol: Optional[str] = None
    max_name: Optional[int] = None
    devices: tuple[RemoteDevice, ...] = ()
    problems: tuple[str, ...] = ()


#: the supervisor's check: probe this starting server
ReadinessCheck = Callable[[ServerSpec], Readiness]
#: a trial run's check: probe the server, finishing by the given deadline (monotonic)
TrialCheck = Callable[[float], Readiness]


@dataclass(frozen=True)
class TrialRun:
    """How a trial run went."""

    readiness: Optional[Readiness]  # the check's last answer (None: it was never asked)
    output: str  # what the server printed (its first OUTPUT_HEAD and last OUTPUT_TAIL bytes)
    returncode: Optional[int]  # set when the server exited by itself before it was ready
    seconds: float

    @property
    def ready(self) -> bool:
        return self.readiness is not None and self.readiness.status == "ready"


class _Output:
    """A bounded copy of a server's output: its head and its tail."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = OUTPUT_HEAD - len(self.head)
        self.head += chunk[:room]
        self.tail += chunk[room:] if room > 0 else chunk
        if len(self.tail) > OUTPUT_TAIL:
            cut = len(self.tail) - OUTPUT_TAIL
            self.dropped += cut
            del self.tail[:cut]

    def text(self) -> str:
        gap = f"\n[... {self.dropped} bytes not kept ...]\n".encode() if self.dropped else b""
        return bytes(self.head + gap + self.tail).decode(errors="replace")


def _drain(child: Child, out: _Output, budget: int) -> bool:
    """Read what is there (at most ``budget`` bytes); False at end of output."""
    while budget > 0:
        try:
            chunk = os.read(child.fd, min(_CHUNK, budget))
        except BlockingIOError:
            return True
        except OSError:  # EIO: the pty's other side is gone
            return False
        if not chunk:
            return False
        out.add(chunk)
        budget -= len(chunk)
    return True


def trial_run(
    argv: Sequence[str],
    env: Mapping[str, str],
    check: TrialCheck,
    timeout: float,
    *,
    factory: ProcessFactory = spawn,
    interval: float = 0.1,
    stop_grace: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> TrialRun:
    """Start ``argv``, ask ``check`` every ``interval`` s until it is not "retry", the server
    exits or ``timeout`` s pass; then stop the server and wait for it (bounded).

    Raises what ``factory`` raises when the server cannot be started (OSError, ValueError).
    """
    start = clock()
    deadline = start + timeout
    child = factory(argv, env, None)
    out = _Output()
    answer: Optional[Readiness] = None
    exited: Optional[int] = None
    open_ = True
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(child.fd, selectors.EVENT_READ)
            while True:
                open_ = open_ and _drain(child, out, OUTPUT_HEAD)
                exited = child.poll()
                if exited is not None or clock() >= deadline:
                    break
                answer = check(deadline)
                if answer.status != "retry":
                    break
                until = min(deadline, clock() + interval)
                while open_ and (left := until - clock()) > 0:
                    if sel.select(left):
                        open_ = _drain(child, out, OUTPUT_HEAD)
                if not open_:  # nothing to wait on: sleep the rest of the interval
                    time.sleep(max(0.0, until - clock()))
    finally:
        _stop(child, stop_grace)
        with contextlib.suppress(OSError):
            _drain(child, out, OUTPUT_HEAD + OUTPUT_TAIL)
        child.close()
    return TrialRun(answer, out.text(), exited, clock() - start)


def _stop(child: Child, grace: float) -> None:
    """SIGTERM the server's process group, wait ``grace`` s, then SIGKILL (bounded)."""
    if child.poll() is not None:
        return
    child.signal_group(signal.SIGTERM)
    if child.wait(grace) is None:
        child.signal_group(signal.SIGKILL)
        child.wait(30.0)
