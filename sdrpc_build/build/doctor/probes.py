"""How doctor looks at the machine: the :class:`Probes` seam and the real probes."""

from __future__ import annotations

import os
import platform as _platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdrpc_build.run import run

__all__ = ["PROBE_TIMEOUT", "Probes", "multiarch", "system_probes"]

#: seconds one probe command (``nvcc --version``, ``vulkaninfo --summary``) may take
PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Probes:
    """How doctor looks at the machine. ``run`` returns the output of a zero exit, else None."""

    platform: str  # linux | macos | windows
    env: Mapping[str, str]
    which: Callable[[str], Optional[str]]
    run: Callable[[Sequence[str]], Optional[str]]
    read_text: Callable[[Path], Optional[str]]
    is_file: Callable[[Path], bool]
    disk_free: Callable[[Path], Optional[int]]
    pypi_tool: Callable[[str], Optional[str]] = field(default=lambda _name: None)
    #: Debian's multiarch triplet: ``/usr/lib/<multiarch>``, ``/usr/include/<multiarch>``
    multiarch: str = "x86_64-linux-gnu"
    #: the path with symlinks resolved (to find a tool's install root)
    realpath: Callable[[str], str] = field(default=lambda path: path)


def _run(argv: Sequence[str]) -> Optional[str]:
    done = run(argv, timeout=PROBE_TIMEOUT)
    return done.stdout + done.stderr if done.ok else None


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _disk_free(path: Path) -> Optional[int]:
    for p in (path, *path.parents):
        if os.path.exists(p):  # False, not OSError, for a name too long (Python 3.11)
            try:
                return shutil.disk_usage(p).free
            except OSError:  # a permission: no answer, not a crash
                return None
    return None


def _pypi_tool(name: str) -> Optional[str]:
    attr = {"cmake": "CMAKE_BIN_DIR", "ninja": "BIN_DIR"}[name]
    try:
        mod = __import__(name)
        exe = name + (".exe" if os.name == "nt" else "")
        path = Path(getattr(mod, attr)) / exe
    except (ImportError, AttributeError):
        return None
    return str(path) if path.is_file() else None


def multiarch(machine: str) -> str:
    """``x86_64`` -> ``x86_64-linux-gnu``, ``arm64``/``aarch64`` -> ``aarch64-linux-gnu``."""
    m = machine.lower()
    m = {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)
    return f"{m}-linux-gnu"


def system_probes(env: Mapping[str, str], platform: str) -> Probes:
    """The real probes: PATH lookups, short subprocesses with timeouts, file reads."""
    path = env.get("PATH")
    return Probes(
        platform=platform,
        env=env,
        which=lambda name: shutil.which(name, path=path),
        run=_run,
        read_text=_read_text,
        is_file=lambda p: p.is_file(),
        disk_free=_disk_free,
        pypi_tool=_pypi_tool,
        multiarch=multiarch(_platform.machine()),
        realpath=os.path.realpath,
    )
