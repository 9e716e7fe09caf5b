"""Temporary directories and files in the cache that name their owner, and their cleanup.

Every temporary path the build creates in the cache (a source being fetched or
extracted, a store entry being assembled, a wheel being packed) is
``<stem>.sdrpc-tmp-<host>-<pid>-<start>``: the owner's host, PID and start time.
A process killed with SIGKILL cannot clean up after itself, so the next build
calls :func:`clean_stale`, which removes the ones whose owner is gone: another
process now running under a reused PID has another start time, and paths of
other hosts (a shared cache on a network file system) are never touched.

Start time: ``/proc/<pid>/stat`` field 22 on Linux. Elsewhere only the PID is
checked (a temporary path of a live PID is kept, whoever holds the PID now).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["TAG", "Owner", "clean_stale", "is_stale", "owner_of", "process_start", "scratch_path"]

TAG = ".sdrpc-tmp-"
_NAME_RE = re.compile(r"\.sdrpc-tmp-([0-9a-f]{8})-([0-9]{1,10})-([0-9]{1,20})$")


@dataclass(frozen=True)
class Owner:
    host: str  # 8 hex digits of a hash of the host name
    pid: int
    start: int  # 0 where the platform gives no start time


def _host_id() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def process_start(pid: int) -> Optional[int]:
    """The start time of ``pid`` (clock ticks since boot), None if no such process.

    0 when the platform cannot tell (not Linux) but the process exists.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if stat:
        _, sep, rest = stat.rpartition(")")
        fields = rest.split()
        if sep and len(fields) >= 20 and fields[19].isascii() and fields[19].isdigit():
            return None if fields[0] == "Z" else int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass  # exists, owned by someone else
    return 0


def _me() -> Owner:
    return Owner(_host_id(), os.getpid(), process_start(os.getpid()) or 0)


def scratch_path(parent: Path, stem: str) -> Path:
    """A temporary path in ``parent`` owned by this process (nothing is created)."""
    me = _me()
    return parent / f"{stem}{TAG}{me.host}-{me.pid}-{me.start}"


def owner_of(path: Path) -> Optional[Owner]:
    """The owner named in a temporary path, None if ``path`` is not one of ours."""
    m = _NAME_RE.search(path.name)
    if not m:
        return None
    return Owner(m.group(1), int(m.group(2)), int(m.group(3)))


def is_stale(owner: Owner) -> bool:
    """The owner is a process of this host that no longer runs (PID gone or reused)."""
    if owner.host != _host_id():
        return False
    start = process_start(owner.pid)
    if start is None:
        return True
    return owner.start != 0 and start not in (0, owner.start)


def clean_stale(parents: Iterable[Path]) -> list[Path]:
    """Remove the temporary paths of dead owners directly in ``parents``; return them."""
    removed: list[Path] = []
    for parent in parents:
        try:
            entries = [p for p in parent.iterdir() if TAG in p.name]
        except OSError:
            continue  # absent or unreadable: nothing of ours to clean
        for path in entries:
            owner = owner_of(path)
            if owner is None or not is_stale(owner):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.unlink()
                except OSError:
                    continue
            if not path.exists():
                removed.append(path)
    return removed
