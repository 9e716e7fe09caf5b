"""Files and directories only their owner can read: 0600 / 0700 whatever the umask.

Logs can hold paths and client addresses; a state file names the PIDs that ``stop`` signals.
Directories sdrpc creates are 0700 (each missing level, not only the last), files 0600, also
when the umask is 000: the mode is set again after creation (``chmod``/``fchmod``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

from sdrpc_build.errors import LaunchError

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "cannot_write",
    "open_log",
    "private_dir",
    "private_fd",
    "show_path",
    "write_private",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
_SHOW_PATH = 200  # longer paths are shortened in messages
_MAX_DEPTH = 256


def show_path(path: Path | str) -> str:
    """``path`` for a message: very long ones lose their middle."""
    text = str(path)
    if len(text) <= _SHOW_PATH:
        return text
    half = _SHOW_PATH // 2
    return f"{text[:half]}...{text[-half:]} ({len(text)} characters)"


def private_dir(path: Path, tighten: bool = False) -> Path:
    """``mkdir -p`` with every created level 0700; ``tighten`` also chmods ``path`` if it exists.

    Raises OSError (a file in the way, no permission, a name too long).
    """
    missing: list[Path] = []
    p = path
    while not p.is_dir() and len(missing) < _MAX_DEPTH:
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        if not d.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(d))
        os.chmod(d, DIR_MODE)  # mkdir's mode went through the umask
    if tighten and not missing and path.stat().st_uid == os.geteuid():
        os.chmod(path, DIR_MODE)
    return path


def private_fd(path: Path, *, append: bool = True, exclusive: bool = False) -> int:
    """A write-only fd on ``path`` (appending, or truncated), mode 0600 even if it existed."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    if exclusive:
        flags |= os.O_EXCL
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except PermissionError:  # someone else's file (we may write it): leave its mode
        pass
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_log(path: Path) -> IO[str]:
    """``path`` opened for appending text, line-buffered, 0600."""
    fd = private_fd(path)
    try:
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    except BaseException:
        os.close(fd)
        raise


def cannot_write(path: Path, exc: OSError, hint: str) -> LaunchError:
    """The error for a directory or file sdrpc-launch cannot create (exit 20)."""
    why = exc.strerror or str(exc)
    where = exc.filename if isinstance(exc.filename, str) else str(path)
    return LaunchError(f"cannot write {show_path(where)}: {why}", hint=hint)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file + fsync + rename), 0600, in a 0700
    directory: readers see the old file or the new one, never half. Raises OSError."""
    private_dir(path.parent, tighten=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(private_fd(tmp, append=False), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
