"""Which sdrpc build fits the client: pure functions over builds and the client's pins.

The client's pins (llama.cpp commit, GGML_MAX_NAME and, for ``--exact``, the digest of the
sd.cpp tree's own ggml) come from the CLI, which reads them with the build wing's code; here
they are plain values, so launch/ stays free of the build wing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = [
    "Build",
    "Choice",
    "ClientPins",
    "choose",
    "describe",
    "mismatch",
    "pin_groups",
    "usable",
]


@dataclass(frozen=True)
class Build:
    """An sdrpc build as launch sees it (or a bare binary: most fields None)."""

    binary: Path
    backend: Optional[str] = None
    max_name: Optional[int] = None
    protocol: Optional[str] = None  # "5.0.0"; None when not known
    key: Optional[str] = None
    created: str = ""  # ISO 8601 time: the newest build wins
    platform: str = ""  # "linux-x86_64"; "" = runs anywhere
    commit: Optional[str] = None  # llama.cpp commit; None when not known
    exact: Optional[str] = None  # --exact builds: the digest of the ggml tree built against


@dataclass(frozen=True)
class ClientPins:
    """What the client needs of a server. ``exact``: the ggml digest of ``--exact``."""

    commit: str
    max_name: int
    exact: Optional[str] = None
    origin: str = ""  # where the pins came from (an sd.cpp path, a ref, "command line")


@dataclass(frozen=True)
class Choice:
    """The build picked (None: none matches) and the builds left out, each with why."""

    build: Optional[Build]
    rejected: tuple[tuple[Build, str], ...] = ()


def mismatch(build: Build, pins: ClientPins) -> Optional[str]:
    """Why ``build`` does not serve a client with ``pins``; None when it does."""
    why = []
    if build.commit is None:
        why.append("its llama.cpp commit is not known (no sdrpc manifest)")
    elif build.commit != pins.commit:
        why.append(f"llama.cpp commit {build.commit[:10]}, the client needs {pins.commit[:10]}")
    if build.max_name is not None and build.max_name != pins.max_name:
        why.append(f"GGML_MAX_NAME {build.max_name}, the client needs {pins.max_name}")
    if pins.exact is not None and build.exact != pins.exact:
        why.append(
            "built against another ggml tree than the client's (--exact)"
            if build.exact
            else "not built against the client's own ggml (--exact)"
        )
    if pins.exact is None and build.exact is not None:
        why.append("built against an sd.cpp tree's own ggml (--exact); give --exact to use it")
    return "; ".join(why) or None


def choose(
    builds: Sequence[Build], pins: ClientPins, backend: Optional[str], platform: str
) -> Choice:
    """The newest build of ``backend`` (any when None) for ``platform`` that fits ``pins``."""
    rejected: list[tuple[Build, str]] = []
    for b in usable(builds, backend, platform):
        why = mismatch(b, pins)
        if why is None:
            return Choice(b, tuple(rejected))
        rejected.append((b, why))
    return Choice(None, tuple(rejected))


def pin_groups(builds: Sequence[Build], backend: Optional[str], platform: str) -> int:
    """How many different client pins the usable builds were made for."""
    return len({(b.commit, b.max_name, b.exact) for b in usable(builds, backend, platform)})


def describe(b: Build) -> str:
    """``cpu-4df29be4f4-n160-... (commit 4df29be4f4, max_name 160)``."""
    commit = b.commit[:10] if b.commit else "unknown"
    name = b.max_name if b.max_name is not None else "unknown"
    return f"{b.key or b.binary} (commit {commit}, max_name {name})"


def usable(builds: Sequence[Build], backend: Optional[str], platform: str) -> list[Build]:
    """The builds of ``backend`` (any when None) that run on ``platform``, newest first."""
    found = [b for b in builds if not b.platform or b.platform == platform]
    if backend is not None:
        found = [b for b in found if b.backend == backend]
    return sorted(found, key=lambda b: b.created, reverse=True)
