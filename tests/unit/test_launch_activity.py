"""Busy/idle from the server's log lines after it became ready (never from its port)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sdrpc_build.launch.activity import Activity, parse_activity, read_activity

T1 = "2025-03-04T05:06:07.123"
T2 = "2025-03-04T05:07:00.000"


def test_no_client_lines_is_idle_since_ready() -> None:
    assert parse_activity([]) == Activity("idle")
    assert parse_activity([f"{T1} --- sdrpc: ready endpoint=x", ""]) == Activity("idle")


def test_last_client_line_wins() -> None:
    busy = parse_activity([f"{T1} Accepted client connection"])
    assert busy == Activity("busy", datetime.fromisoformat(T1))
    lines = [f"{T1} Accepted client connection", f"{T2} Client connection closed"]
    assert parse_activity(lines) == Activity("idle", datetime.fromisoformat(T2))
    lines.append(f"{T2} Accepted client connection\r")
    assert parse_activity(lines).state == "busy"


def test_untimed_lines_still_count() -> None:
    assert parse_activity(["Accepted client connection"]) == Activity("busy", None)
    assert parse_activity(["garbage Client connection closed"]).state == "idle"


def test_read_from_the_ready_offset(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    before = f"{T1} Accepted client connection\n"  # sdrpc's own readiness probe
    log.write_text(before + f"{T1} --- sdrpc: ready\n")
    offset = log.stat().st_size
    assert read_activity(log, offset) == Activity("idle")
    assert read_activity(log, 0).state == "busy"
    with log.open("a") as f:
        f.write(f"{T2} Accepted client connection\n")
    assert read_activity(log, offset) == Activity("busy", datetime.fromisoformat(T2))


def test_window_skips_a_partial_first_line(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    lines = [f"{T1} Client connection closed"] * 50 + [f"{T2} Accepted client connection"]
    log.write_text("\n".join(lines) + "\n")
    assert read_activity(log, 0, window=80).state == "busy"
    log.write_text(f"{T2} Accepted client connection\n" + "x" * 200 + "\n")
    assert read_activity(log, 0, window=100).state == "idle"  # the accept is outside


def test_unreadable_or_truncated_is_unknown(tmp_path: Path) -> None:
    assert read_activity(tmp_path / "none.log", 0) == Activity("unknown")
    log = tmp_path / "s.log"
    log.write_text("short\n")
    assert read_activity(log, 10_000) == Activity("unknown")
