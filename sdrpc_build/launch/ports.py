"""Is a TCP port free to bind, and if not, which process holds it (Linux ``/proc``).

The check binds the way rpc-server does (``SO_REUSEADDR``, the same address), so the kernel
gives it the server's answer: a port in TIME_WAIT left by a listener that also used
``SO_REUSEADDR`` (an earlier rpc-server) is free for it, one left by a socket without it
(most other programs) is not, until the TIME_WAIT ends (60 s on Linux).
"""

from __future__ import annotations

import errno
import os
import random
import socket
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdrpc_build.errors import PortInUseError

__all__ = [
    "PortHolder",
    "ensure_port_free",
    "ephemeral_range",
    "find_listener",
    "listening_inodes",
    "pick_free_port",
    "pick_stable_port",
    "time_wait_left",
]

_LISTEN = "0A"
_TIME_WAIT = "06"
TIME_WAIT_S = 60.0  # Linux's TCP_TIMEWAIT_LEN
EPHEMERAL = (32768, 60999)  # Linux's default ip_local_port_range
STABLE_FROM = 20000  # stable ports: from here up to the ephemeral range
_MIN_SPAN = 1000
_TRIES = 200


@dataclass(frozen=True)
class PortHolder:
    pid: int
    command: str  # the process's command line (or name)

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command})"


def _rows(port: int, state: str, proc: Path) -> list[list[str]]:
    """Rows of /proc/net/tcp and tcp6 in ``state`` whose local port is ``port``."""
    rows: list[list[str]] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != state:
                continue
            try:
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            if local_port == port:
                rows.append(cols)
    return rows


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[int]:
    """Socket inodes listening on ``port`` (any address), from /proc/net/tcp and tcp6."""
    inodes: set[int] = set()
    for cols in _rows(port, _LISTEN, proc):
        try:
            inode = int(cols[9])
        except ValueError:
            continue
        if inode:
            inodes.add(inode)
    return inodes


def time_wait_left(port: int, proc: Path = Path("/proc")) -> Optional[float]:
    """Seconds until the last TIME_WAIT connection on local ``port`` ends; None when none.

    Its timer is the ``tm->when`` column (clock ticks); 60 s when it cannot be read.
    """
    rows = _rows(port, _TIME_WAIT, proc)
    if not rows:
        return None
    try:
        tick = float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        tick = 100.0
    left = 0.0
    for cols in rows:
        try:
            left = max(left, int(cols[5].split(":")[1], 16) / tick)
        except (IndexError, ValueError):
            left = TIME_WAIT_S
    return min(left, TIME_WAIT_S)


def _command(pid_dir: Path) -> str:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if args:
            return " ".join(args)
    except OSError:
        pass
    try:
        return (pid_dir / "comm").read_text().strip()
    except OSError:
        return "?"


def find_listener(port: int, proc: Path = Path("/proc")) -> Optional[PortHolder]:
    """The process listening on ``port``, when /proc lets us see it (Linux, same user)."""
    inodes = listening_inodes(port, proc)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    try:
        pid_dirs = [d for d in proc.iterdir() if d.name.isdigit()]
    except OSError:
        return None
    for pid_dir in sorted(pid_dirs, key=lambda d: int(d.name)):
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    return PortHolder(int(pid_dir.name), _command(pid_dir))
            except OSError:
                continue
    return None


def _bind_error(host: str, port: int, exc: OSError, proc: Path) -> PortInUseError:
    """What a failed bind means, the holder or the TIME_WAIT named when /proc shows it."""
    where = f"{host}:{port}" if port else host
    if exc.errno == errno.EADDRNOTAVAIL:
        return PortInUseError(
            f"cannot bind {where}: this machine has no address {host}",
            hint="use 127.0.0.1, 0.0.0.0 or one of this machine's addresses",
        )
    if exc.errno != errno.EADDRINUSE:
        privileged = exc.errno in (errno.EACCES, errno.EPERM)
        return PortInUseError(
            f"cannot bind {where}: {exc.strerror or exc}",
            hint=("ports below 1024 need privileges: " if privileged else "")
            + "pick another port with -p, or -p 0 for a free one",
        )
    hint = "stop that process, pick another port with -p, or -p 0 for a free one"
    holder = find_listener(port, proc)
    if holder is not None:
        return PortInUseError(
            f"port {port} on {host} is already in use by {holder.describe()}", hint=hint
        )
    left = time_wait_left(port, proc)
    if left is not None:
        return PortInUseError(
            f"port {port} on {host} is held by a connection in TIME_WAIT, no process; "
            f"it clears in about {max(1, round(left))} s",
            hint="wait for it, pick another port with -p, or -p 0 for a free one (TIME_WAIT "
            "lasts 60 s after a program without SO_REUSEADDR closed a connection on it)",
        )
    return PortInUseError(f"port {port} on {host} is already in use", hint=hint)


def ensure_port_free(host: str, port: int, proc: Path = Path("/proc")) -> None:
    """Raise :class:`PortInUseError` unless ``host:port`` can be bound the way rpc-server does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as rpc-server does
        try:
            s.bind((host, port))
        except OSError as exc:
            raise _bind_error(host, port, exc, proc) from None


def pick_free_port(host: str, proc: Path = Path("/proc")) -> int:
    """A port the kernel says is free now (``-p 0``); the server then keeps it across restarts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            raise _bind_error(host, 0, exc, proc) from None
        return int(s.getsockname()[1])


def ephemeral_range(proc: Path = Path("/proc")) -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (``ip_local_port_range``)."""
    try:
        lo, hi = map(int, (proc / "sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return EPHEMERAL
    return (lo, hi) if 0 < lo <= hi < 65536 else EPHEMERAL


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ssh and rpc-server do
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_stable_port(
    host: str,
    avoid: Collection[int] = (),
    *,
    proc: Path = Path("/proc"),
    rng: random.Random | None = None,
) -> int:
    """A free port to keep for a long time, even while nothing listens on it.

    A port from the kernel's ephemeral range (what ``-p 0`` gets) can be taken by any outgoing
    connection while its listener is down (a tunnel reconnecting), and the listener then cannot
    bind it again. So: a random free port between :data:`STABLE_FROM` and the ephemeral range
    (above it where that leaves no room), none of ``avoid``; the kernel's pick as a last resort.
    """
    lo, hi = ephemeral_range(proc)
    start = STABLE_FROM if lo - STABLE_FROM >= _MIN_SPAN else 1024
    if lo - start >= _MIN_SPAN:
        span = range(start, lo)
    elif 65535 - hi >= _MIN_SPAN:
        span = range(hi + 1, 65536)
    else:
        span = range(0)
    pick = rng or random.SystemRandom()
    taken = set(avoid)
    for _ in range(_TRIES if span else 0):
        port = pick.choice(span)
        if port not in taken and _bindable(host, port):
            return port
    for _ in range(_TRIES):
        port = pick_free_port(host, proc)
        if port not in taken:
            return port
    raise PortInUseError(
        f"found no free port on {host} after {2 * _TRIES} tries",
        hint="free some ports, or check the address",
    )
