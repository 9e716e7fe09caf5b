"""Keep a server's ``-c`` tensor cache under a size cap by pruning least recently used files.

rpc-server never evicts its cache (files named by a 64-bit FNV-1a hash, one per large tensor).
sdrpc removes the least recently used ones (by the newer of access and modification time) until
the total fits. Deleting is safe while the server runs: a missing file only makes the client
send that tensor again.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sdrpc_build.units import format_size, parse_size

__all__ = ["CacheEntry", "PruneResult", "cache_entries", "format_size", "parse_size", "prune"]

_HASH_NAME = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    last_used: float


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[Path, ...]
    freed: int
    remaining: int  # bytes left in the cache

    @property
    def count(self) -> int:
        return len(self.removed)


def cache_entries(directory: Path) -> list[CacheEntry]:
    """The cache files (16 hex digit names) in ``directory``, oldest use first."""
    out: list[CacheEntry] = []
    try:
        it = os.scandir(directory)
    except FileNotFoundError:
        return out
    with it:
        for e in it:
            if not _HASH_NAME.match(e.name):
                continue
            try:
                if not e.is_file(follow_symlinks=False):
                    continue
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append(CacheEntry(Path(e.path), st.st_size, max(st.st_atime, st.st_mtime)))
    out.sort(key=lambda c: (c.last_used, c.path.name))
    return out


def prune(directory: Path, max_bytes: int) -> PruneResult:
    """Remove least recently used cache files until the total is at most ``max_bytes``."""
    entries = cache_entries(directory)
    total = sum(e.size for e in entries)
    removed: list[Path] = []
    freed = 0
    for e in entries:
        if total <= max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            e.path.unlink()
        removed.append(e.path)
        total -= e.size
        freed += e.size
    return PruneResult(tuple(removed), freed, total)
