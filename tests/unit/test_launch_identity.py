"""Process identity: PID + start time from an injected /proc or ps; never signal a stranger."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sdrpc_build.launch import identity as ident_mod
from sdrpc_build.launch.identity import (
    ProcessIdentity,
    ProcessInfo,
    ProcessTable,
    parse_proc_stat,
    parse_ps_output,
    pid_reader,
    proc_reader,
    ps_reader,
    signal_verified,
    system_table,
)

BOOT = "0b5d6c1e-1111-2222-3333-444455556666"


def stat_line(pid: int, comm: str, state: str, start: int) -> str:
    # fields 3..21 then 22 = starttime, then more
    rest = [state, "1", str(pid), str(pid), "0", "-1", "4194304"] + ["0"] * 12
    return f"{pid} ({comm}) {' '.join(rest)} {start} 12345 678 " + " ".join(["0"] * 20) + "\n"


def fake_proc(tmp_path: Path, procs: dict[int, tuple[str, str, int]]) -> Path:
    root = tmp_path / "proc"
    (root / "sys" / "kernel" / "random").mkdir(parents=True)
    (root / "sys" / "kernel" / "random" / "boot_id").write_text(BOOT + "\n")
    (root / "self").mkdir()
    (root / "self" / "stat").write_text(stat_line(1, "init", "S", 1))
    for pid, (comm, state, start) in procs.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "stat").write_text(stat_line(pid, comm, state, start))
    return root


@pytest.mark.parametrize(
    ("comm", "expect"),
    [
        ("rpc-server", ("S", 4242)),
        ("we ird) name (x", ("S", 4242)),  # spaces and parentheses in the name
        (")", ("S", 4242)),
    ],
)
def test_parse_proc_stat_field_22(comm: str, expect: tuple[str, int]) -> None:
    assert parse_proc_stat(stat_line(7, comm, "S", 4242)) == expect


@pytest.mark.parametrize(
    "text", ["", "12 (x) S 1 2", "garbage without paren", "1 (x) S " + "y " * 30]
)
def test_parse_proc_stat_rejects_garbage(text: str) -> None:
    assert parse_proc_stat(text) is None


def test_parse_real_proc_self_stat() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc")
    parsed = parse_proc_stat(Path("/proc/self/stat").read_text())
    assert parsed is not None and parsed[1] > 0


def test_proc_reader_tokens_include_boot_id(tmp_path: Path) -> None:
    read = proc_reader(fake_proc(tmp_path, {10: ("sdrpc", "S", 500), 11: ("z", "Z", 600)}))
    assert read(10) == ProcessInfo(f"500@{BOOT}", zombie=False)
    assert read(11) == ProcessInfo(f"600@{BOOT}", zombie=True)
    assert read(12) is None


def test_verdicts(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, {10: ("sdrpc", "S", 500), 11: ("z", "Z", 600)})
    table = ProcessTable("proc", proc_reader(root))
    me = table.identify(10)
    assert me == ProcessIdentity(10, f"500@{BOOT}", "proc")
    assert table.verify(me) == "alive"
    assert table.verify(ProcessIdentity(10, f"499@{BOOT}", "proc")) == "reused"
    assert table.verify(ProcessIdentity(10, "500@another-boot", "proc")) == "reused"
    assert table.verify(table.identify(11)) == "dead"  # a zombie is gone
    assert table.verify(ProcessIdentity(12, f"1@{BOOT}", "proc")) == "dead"
    # recorded without a start time, or by another method: cannot compare
    assert table.verify(ProcessIdentity(10, None, "pid")) == "unverified"
    assert table.verify(ProcessIdentity(10, "Mon Jan  1 2024", "ps")) == "unverified"
    assert table.identify(12) == ProcessIdentity(12, None, "pid")


def test_pid_reuse_after_restart_of_the_pid(tmp_path: Path) -> None:
    """The same PID, a new process: the recorded identity must not match."""
    root = fake_proc(tmp_path, {10: ("sdrpc-launch", "S", 500)})
    table = ProcessTable("proc", proc_reader(root))
    recorded = table.identify(10)
    (root / "10" / "stat").write_text(stat_line(10, "bash", "S", 9000))
    assert table.verify(recorded) == "reused"


def test_ps_output_and_reader() -> None:
    assert parse_ps_output("Ss   Mon Jan  1 12:00:00 2024\n") == ProcessInfo(
        "Mon Jan 1 12:00:00 2024", zombie=False
    )
    assert parse_ps_output("Z+ Tue Feb  2 01:02:03 2021") == ProcessInfo(
        "Tue Feb 2 01:02:03 2021", zombie=True
    )
    assert parse_ps_output("") is None
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str | None:
        calls.append(list(argv))
        return "S Mon Jan  1 12:00:00 2024" if argv[-1] == "5" else None

    read = ps_reader("/bin/ps", run)  # type: ignore[arg-type]
    table = ProcessTable("ps", read)
    five = table.identify(5)
    assert five == ProcessIdentity(5, "Mon Jan 1 12:00:00 2024", "ps")
    assert table.verify(five) == "alive"
    assert table.verify(ProcessIdentity(6, "x", "ps")) == "dead"
    assert calls[0] == ["/bin/ps", "-o", "stat=,lstart=", "-p", "5"]


def test_pid_only_reader() -> None:
    def kill(pid: int, sig: int) -> None:
        assert sig == 0
        if pid == 1:
            raise PermissionError
        if pid == 2:
            raise ProcessLookupError

    table = ProcessTable("pid", pid_reader(kill))
    assert table.identify(1) == ProcessIdentity(1, None, "pid")
    assert table.verify(ProcessIdentity(1, None, "pid")) == "unverified"
    assert table.verify(ProcessIdentity(2, None, "pid")) == "dead"
    assert table.verify(ProcessIdentity(3, None, "pid")) == "unverified"


def test_system_table_picks_the_best_method(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, {})
    assert system_table("linux", root).method == "proc"
    assert system_table("darwin", root, lambda _: "/bin/ps").method == "ps"
    assert system_table("linux", tmp_path / "none", lambda _: "/bin/ps").method == "ps"
    assert system_table("darwin", root, lambda _: None).method == "pid"


def test_signal_verified_never_signals_a_reused_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fake_proc(tmp_path, {10: ("sdrpc", "S", 500)})
    table = ProcessTable("proc", proc_reader(root))
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(ident_mod, "_pidfd", lambda pid: None)
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    assert signal_verified(table, ProcessIdentity(10, f"1@{BOOT}", "proc"), signal.SIGTERM) == (
        "reused"
    )
    assert signal_verified(table, ProcessIdentity(11, f"1@{BOOT}", "proc"), signal.SIGTERM) == (
        "dead"
    )
    assert sent == []
    assert signal_verified(table, table.identify(10), signal.SIGTERM) == "alive"
    assert sent == [(10, signal.SIGTERM)]


def test_signal_verified_gone_before_the_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(pid: int) -> int:
        raise ProcessLookupError

    monkeypatch.setattr(ident_mod, "_pidfd", gone)
    table = ProcessTable("pid", lambda pid: ProcessInfo(None))
    assert signal_verified(table, ProcessIdentity(10, None, "pid"), signal.SIGKILL) == "dead"


def test_signal_verified_own_process_signal_zero() -> None:
    """The real path (pidfd where available) on ourselves, with the harmless signal 0."""
    table = system_table()
    me = table.identify(os.getpid())
    assert signal_verified(table, me, 0) in ("alive", "unverified")
