"""Is a TCP port free to bind, and if not, which process holds it (Linux ``/proc``)."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdrpc_build.supervise.errors import PortInUseError

__all__ = ["PortHolder", "ensure_port_free", "find_listener", "listening_inodes", "pick_free_port"]

_LISTEN = "0A"


@dataclass(frozen=True)
class PortHolder:
    pid: int
    command: str  # the process's command line (or name)

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command})"


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[int]:
    """Socket inodes listening on ``port`` (any address), from /proc/net/tcp and tcp6."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != _LISTEN:
                continue
            try:
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
                inode = int(cols[9])
            except (IndexError, ValueError):
                continue
            if local_port == port and inode:
                inodes.add(inode)
    return inodes


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


def ensure_port_free(host: str, port: int, proc: Path = Path("/proc")) -> None:
    """Raise :class:`PortInUseError` unless ``host:port`` can be bound the way rpc-server does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PortInUseError(
                    f"cannot bind {host}:{port}: this machine has no address {host}",
                    hint="use 127.0.0.1, 0.0.0.0 or one of this machine's addresses",
                ) from None
            if exc.errno != errno.EADDRINUSE:
                raise PortInUseError(f"cannot bind {host}:{port}: {exc.strerror}") from None
            holder = find_listener(port, proc)
            who = f" by {holder.describe()}" if holder else ""
            raise PortInUseError(
                f"port {port} on {host} is already in use{who}",
                hint="stop that process, pick another port with -p, or -p 0 for a free one",
            ) from None


def pick_free_port(host: str) -> int:
    """A port the kernel says is free now (``-p 0``); the server then keeps it across restarts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
