"""Is process N still the one we started? PID + start time, so a reused PID is never ours.

* Linux: ``/proc/<pid>/stat`` field 22 (start time in clock ticks since boot) plus the boot id
  (``/proc/sys/kernel/random/boot_id``); the pair names one process for the machine's lifetime.
* Elsewhere: ``ps -o stat=,lstart= -p PID`` (start time to the second, ``LC_ALL=C``).
* Without either: the PID alone; the verdict is then ``unverified`` and the CLI warns.

A zombie counts as dead. Signals go through :func:`signal_verified`, which on Linux opens a
pidfd *before* checking the identity and signals through it: no window for PID reuse between
the check and the signal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from sdrpc_build.run import run

__all__ = [
    "LIVE",
    "IdentityMethod",
    "InfoReader",
    "ProcessIdentity",
    "ProcessInfo",
    "ProcessTable",
    "Verdict",
    "parse_proc_stat",
    "parse_ps_output",
    "pid_reader",
    "proc_reader",
    "ps_reader",
    "signal_verified",
    "system_table",
]

IdentityMethod = Literal["proc", "ps", "pid"]
Verdict = Literal["alive", "dead", "reused", "unverified"]
#: verdicts under which a process may still be ours
LIVE: tuple[Verdict, ...] = ("alive", "unverified")


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as recorded: its PID and an opaque start-time token (None: PID only)."""

    pid: int
    start: Optional[str]
    method: IdentityMethod


@dataclass(frozen=True)
class ProcessInfo:
    """What the system says about a PID right now."""

    start: Optional[str]
    zombie: bool = False


#: pid -> what the system says about it, or None when no such process exists
InfoReader = Callable[[int], Optional[ProcessInfo]]


def parse_proc_stat(text: str) -> Optional[tuple[str, int]]:
    """``(state, starttime)`` from ``/proc/<pid>/stat``; the name may hold spaces and ``)``."""
    _, sep, rest = text.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 20:
        return None
    try:
        return fields[0], int(fields[19])  # fields[0] is field 3; field 22 is fields[19]
    except ValueError:
        return None


def proc_reader(proc: Path = Path("/proc")) -> InfoReader:
    """Linux: start token ``<ticks>@<boot id>`` from ``proc`` (a fake tree in tests)."""
    try:
        boot = (proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or "?"
    except OSError:
        boot = "?"

    def read(pid: int) -> Optional[ProcessInfo]:
        try:
            text = (proc / str(pid) / "stat").read_text(errors="replace")
        except OSError:
            return None
        parsed = parse_proc_stat(text)
        if parsed is None:
            return None
        state, ticks = parsed
        return ProcessInfo(f"{ticks}@{boot}", zombie=state in ("Z", "X", "x"))

    return read


def parse_ps_output(out: str) -> Optional[ProcessInfo]:
    """``ps -o stat=,lstart=`` output (``"Ss   Mon Jan  1 12:00:00 2024"``) -> info."""
    parts = out.strip().split(None, 1)
    if len(parts) < 2:
        return None
    return ProcessInfo(" ".join(parts[1].split()), zombie=parts[0].startswith("Z"))


PsRunner = Callable[[Sequence[str]], Optional[str]]


def _run_ps(argv: Sequence[str]) -> Optional[str]:
    done = run(argv, timeout=10, env={"LC_ALL": "C", "PATH": os.defpath})
    return done.stdout if done.ok else None


def ps_reader(ps: str, run: PsRunner = _run_ps) -> InfoReader:
    """Other POSIX systems: start token = ``ps``'s ``lstart`` column."""

    def read(pid: int) -> Optional[ProcessInfo]:
        out = run([ps, "-o", "stat=,lstart=", "-p", str(pid)])
        return parse_ps_output(out) if out else None

    return read


def pid_reader(kill: Callable[[int, int], None] = os.kill) -> InfoReader:
    """Last resort: does the PID exist at all (signal 0)? No start time."""

    def read(pid: int) -> Optional[ProcessInfo]:
        try:
            kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # exists, but belongs to someone else
        except OSError:
            return None
        return ProcessInfo(None)

    return read


@dataclass(frozen=True)
class ProcessTable:
    """Record identities and judge them later, with one method."""

    method: IdentityMethod
    read: InfoReader

    def identify(self, pid: int) -> ProcessIdentity:
        """The identity of ``pid`` now (PID only when its start time cannot be read)."""
        info = self.read(pid)
        if info is None or info.start is None or self.method == "pid":
            return ProcessIdentity(pid, None, "pid")
        return ProcessIdentity(pid, info.start, self.method)

    def verify(self, ident: ProcessIdentity) -> Verdict:
        """``alive`` (same process), ``dead``, ``reused`` (another process has the PID now),
        or ``unverified`` (a process has the PID; its start time cannot be compared)."""
        info = self.read(ident.pid)
        if info is None:
            return "dead"
        comparable = (
            ident.start is not None and info.start is not None and ident.method == self.method
        )
        if comparable and info.start != ident.start:
            return "reused"
        if info.zombie:
            return "dead"
        return "alive" if comparable else "unverified"


def system_table(
    platform: str = sys.platform,
    proc: Path = Path("/proc"),
    which: Callable[[str], Optional[str]] = shutil.which,
) -> ProcessTable:
    """The best method this system offers: /proc, then ps, then the PID alone."""
    if platform.startswith("linux") and (proc / "self" / "stat").exists():
        return ProcessTable("proc", proc_reader(proc))
    ps = which("ps")
    if ps and platform != "win32":
        return ProcessTable("ps", ps_reader(ps))
    return ProcessTable("pid", pid_reader())


def _pidfd(pid: int) -> Optional[int]:
    """A pidfd for ``pid`` (Linux 5.3+); None where unsupported. Raises ProcessLookupError."""
    if sys.platform != "linux":
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (OSError, AttributeError):  # ENOSYS, EPERM under a seccomp filter, old Python
        return None


def signal_verified(table: ProcessTable, ident: ProcessIdentity, sig: int) -> Verdict:
    """Send ``sig`` only if ``ident`` still names the same process; return the verdict.

    ``unverified`` processes (PID-only systems) are signalled too: the caller warns.
    """
    try:
        fd = _pidfd(ident.pid)
    except ProcessLookupError:
        return "dead"
    try:
        verdict = table.verify(ident)
        if verdict not in LIVE:
            return verdict
        try:
            if fd is not None and sys.platform == "linux":
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(ident.pid, sig)
        except ProcessLookupError:
            return "dead"
        return verdict
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
