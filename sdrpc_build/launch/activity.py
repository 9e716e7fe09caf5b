"""Busy or idle, from a server's log: never from its port.

rpc-server serves one client at a time with a tiny backlog: a probe made while sd-cli is
connected waits unanswered. So ``status`` reads the last ``Accepted client connection`` /
``Client connection closed`` line the server printed after it became ready (the log offset
recorded at that moment skips sdrpc's own readiness probes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Optional

from sdrpc_build.launch.banner import BannerParser

__all__ = ["Activity", "ActivityState", "parse_activity", "read_activity"]

ActivityState = Literal["busy", "idle", "unknown"]
WINDOW = 64 * 1024


@dataclass(frozen=True)
class Activity:
    state: ActivityState
    since: Optional[datetime] = None  # the log line's local time; None: since it became ready


def _split(line: str) -> tuple[Optional[datetime], str]:
    """``"2025-01-02T03:04:05.678 text"`` (the runner's log format) -> (time, text)."""
    stamp, sep, text = line.partition(" ")
    if sep:
        try:
            return datetime.fromisoformat(stamp), text
        except ValueError:
            pass
    return None, line


def parse_activity(lines: Iterable[str]) -> Activity:
    """The client state after ``lines`` (log lines written after the server became ready)."""
    parser = BannerParser()
    found = Activity("idle")
    for line in lines:
        when, text = _split(line.rstrip("\r\n"))
        kind = parser.feed(text)
        if kind == "client-connected":
            found = Activity("busy", when)
        elif kind == "client-closed":
            found = Activity("idle", when)
    return found


def read_activity(log: Path, offset: int, window: int = WINDOW) -> Activity:
    """Read at most the last ``window`` bytes after ``offset`` of ``log``."""
    try:
        with open(log, "rb") as f:
            end = f.seek(0, 2)
            if end < offset:  # truncated or replaced since: we cannot tell
                return Activity("unknown")
            start = max(offset, end - window)
            f.seek(start)
            data = f.read(end - start)
    except OSError:
        return Activity("unknown")
    lines = data.decode(errors="replace").split("\n")
    if start > offset:
        lines = lines[1:]  # began mid-line
    return parse_activity(lines)
