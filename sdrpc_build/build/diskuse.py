"""What sdrpc keeps on disk, and what ``sdrpc cache --prune`` may reclaim.

The cache root holds one folder per kind of data (``CATEGORIES``). ``survey``
measures them; ``plan_prune`` is pure: given the entries, the store's manifests
and the set of paths some process is using, it returns what to delete. Nothing
in use is ever chosen: an artifact whose binary runs, a log a supervisor writes,
a build tree a compiler works in. ``busy_paths`` reads that set from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from sdrpc_build.build.store import Manifest
from sdrpc_build.errors import StoreError

__all__ = [
    "CATEGORIES",
    "KEPT_BY_PRUNE",
    "Entry",
    "busy_paths",
    "plan_prune",
    "remove_entries",
    "survey",
]

#: category -> (folder under the cache root, what it holds)
CATEGORIES: dict[str, tuple[str, str]] = {
    "artifacts": ("artifacts", "verified servers (bin/, manifest.json, build.log)"),
    "builds": ("builds", "CMake build trees (intermediate; ccache makes rebuilds fast)"),
    "sources": ("sources", "llama.cpp sources, one folder per commit"),
    "downloads": ("downloads", "sdists downloaded from PyPI"),
    "tmp": ("tmp", "wheel work dirs of sdrpc-build --wheel"),
    "logs": ("logs", "server and supervisor logs of sdrpc-launch"),
    "rpc-cache": ("rpc-cache", "servers' -c tensor cache (sdrpc-launch --cache-max-size caps it)"),
    "run": ("run", "state files of detached sdrpc-launch instances"),
}
#: never pruned: the servers' own tensor cache has its own cap; state files belong to launch
KEPT_BY_PRUNE = frozenset({"rpc-cache", "run"})
_TMP_MARKS = (".tmp-", ".sdrpc-tmp-")


@dataclass(frozen=True)
class Entry:
    category: str
    path: Path
    size: int  # bytes, apparent size of every file below
    mtime: float


def _size(path: Path) -> int:
    """Total size of the files below ``path``; unreadable parts count as 0."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for dirpath, _dirs, files in os.walk(path, onerror=lambda _e: None):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def survey(root: Path) -> list[Entry]:
    """One entry per item in each category folder (hidden lock folders excluded)."""
    entries: list[Entry] = []
    for category, (folder, _what) in CATEGORIES.items():
        d = root / folder
        try:
            children = sorted(d.iterdir())
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(
                f"cannot read {d}: {exc.strerror or exc}",
                hint=f"check the permissions of {root} (or pick another with --cache-dir)",
            ) from None
        for child in children:
            if child.name.startswith("."):
                continue
            try:
                mtime = child.lstat().st_mtime
            except OSError:
                continue
            entries.append(Entry(category, child, _size(child), mtime))
    return entries


def _sdist_file(origin: str) -> str | None:
    """``llama-cpp-python==0.3.35`` -> ``llama_cpp_python-0.3.35.tar.gz``."""
    name, sep, version = origin.partition("==")
    if not sep or not name or not version:
        return None
    return f"{name.replace('-', '_')}-{version}.tar.gz"


def _inside(path: Path, busy: Iterable[Path]) -> bool:
    return any(b == path or path in b.parents for b in busy)


def plan_prune(
    entries: Sequence[Entry],
    manifests: Sequence[Manifest],
    *,
    keep: int,
    busy: Iterable[Path],
) -> list[Entry]:
    """The entries ``--prune`` removes.

    Kept: artifacts in use and the ``keep`` newest; the sources and downloads
    those kept artifacts were built from; anything some process has open (or
    runs, or works in); entries being written (``*.tmp-*``, cleaned by the
    writer's next run); and the categories in ``KEPT_BY_PRUNE``. Build trees
    and logs nobody uses are removed.
    """
    busy = list(busy)
    by_path = {m.path: m for m in manifests}
    newest = sorted(manifests, key=lambda m: m.created, reverse=True)[: max(keep, 0)]
    kept = {m.key for m in newest} | {m.key for m in manifests if _inside(m.path, busy)}
    kept_commits = {m.commit for m in manifests if m.key in kept}
    kept_downloads = {
        f
        for m in manifests
        if m.key in kept
        for f in [_sdist_file(m.source.origin if m.source else "")]
        if f
    }
    out: list[Entry] = []
    for e in entries:
        if (
            e.category in KEPT_BY_PRUNE
            or any(t in e.path.name for t in _TMP_MARKS)
            or _inside(e.path, busy)
        ):
            continue
        name = e.path.name
        if e.category == "artifacts":
            m = by_path.get(e.path)
            if m is not None and m.key in kept:
                continue
        elif e.category == "sources":
            if name in kept_commits:
                continue
        elif e.category == "downloads" and (name in kept_downloads or name.endswith(".lock")):
            continue
        out.append(e)
    return out


def busy_paths(root: Path, proc: Path = Path("/proc")) -> set[Path]:
    """Paths under ``root`` that a process runs (exe), works in (cwd) or has open (fd)."""
    found: set[Path] = set()
    root = root.resolve()
    try:
        pids = [p for p in proc.iterdir() if p.name.isascii() and p.name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        links = [pid / "exe", pid / "cwd"]
        with contextlib.suppress(OSError):
            links += list((pid / "fd").iterdir())
        for link in links:
            try:
                target = Path(os.readlink(link))
            except OSError:
                continue
            if target == root or root in target.parents:
                found.add(target)
    return found


def _lock_for(root: Path, entry: Entry) -> Path | None:
    """The build lock of an artifact or build tree (``locks/<key>.lock``)."""
    if entry.category not in ("artifacts", "builds"):
        return None
    key = entry.path.name.removesuffix(".src")
    return root / "locks" / f"{key}.lock"


def remove_entries(
    root: Path, entries: Sequence[Entry]
) -> tuple[list[Entry], list[tuple[Entry, str]]]:
    """Delete ``entries``; returns (removed, [(skipped, why)]).

    An artifact or build tree is removed only while holding its build lock, so a
    build running now is never cut from under its feet.
    """
    removed: list[Entry] = []
    skipped: list[tuple[Entry, str]] = []
    for e in entries:
        lock_path = _lock_for(root, e)
        try:
            with contextlib.ExitStack() as stack:
                if lock_path is not None and lock_path.exists():
                    stack.enter_context(FileLock(str(lock_path), timeout=0))
                if e.path.is_dir() and not e.path.is_symlink():
                    shutil.rmtree(e.path)
                else:
                    e.path.unlink()
            removed.append(e)
        except Timeout:
            skipped.append((e, "a build holds its lock"))
        except FileNotFoundError:
            removed.append(e)
        except OSError as exc:
            skipped.append((e, exc.strerror or str(exc)))
    return removed, skipped
