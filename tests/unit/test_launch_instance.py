"""The detached instance's state file: round trip, validation, atomic writes, ownership."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from sdrpc_build.errors import UsageError
from sdrpc_build.launch.identity import ProcessIdentity
from sdrpc_build.launch.instance import (
    InstanceState,
    ServerRecord,
    StateFileError,
    check_instance_name,
    list_instances,
    read_state,
    remove_state,
    state_from_json,
    state_path,
    state_to_json,
    supervisor_log,
    write_state,
)
from sdrpc_build.launch.supervisor import DeviceRow


def sample(tmp_path: Path, pid: int = 100) -> InstanceState:
    logs = tmp_path / "logs"
    return InstanceState(
        instance="gpu",
        supervisor=ProcessIdentity(pid, "500@boot", "proc"),
        started_at=1700000000.5,
        log_dir=logs,
        supervisor_log=supervisor_log(logs, "gpu"),
        stop_timeout=5.0,
        phase="running",
        rpc_servers="127.0.0.1:50052,127.0.0.1:50053",
        devices=(
            DeviceRow(0, "s0", 0, 0, "127.0.0.1:50052", "CUDA0", "RTX", 24 << 30, 20 << 30),
            DeviceRow(1, "s1", 1, 0, "127.0.0.1:50053", "CPU", "EPYC", 64 << 30, 60 << 30),
        ),
        servers=(
            ServerRecord(
                "s0",
                "127.0.0.1:50052",
                logs / "s0.log",
                "ready",
                ProcessIdentity(101, "510@boot", "proc"),
                1700000001.25,
                643,
                2,
            ),
            ServerRecord("s1", "127.0.0.1:50053", logs / "s1.log", "restarting"),
        ),
    )


def test_round_trip(tmp_path: Path) -> None:
    state = sample(tmp_path)
    assert state_from_json(json.loads(json.dumps(state_to_json(state)))) == state
    path = state_path(tmp_path / "run", "gpu")
    write_state(path, state)
    assert read_state(path) == state
    assert path == tmp_path / "run" / "gpu.json"
    assert [p.name for p in path.parent.iterdir()] == ["gpu.json"]  # no temp file left


def test_with_server_replaces_or_appends(tmp_path: Path) -> None:
    state = sample(tmp_path)
    s0 = replace(state.servers[0], phase="fatal", process=None)
    updated = state.with_server(s0)
    assert [s.phase for s in updated.servers] == ["fatal", "restarting"]
    extra = ServerRecord("s2", "127.0.0.1:1", tmp_path / "s2.log")
    assert [s.name for s in updated.with_server(extra).servers] == ["s0", "s1", "s2"]
    assert state.server("nope") is None


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert read_state(tmp_path / "none.json") is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.update(format=99), "format 99"),
        (lambda o: o.pop("supervisor"), "missing 'supervisor'"),
        (lambda o: o["supervisor"].update(pid=0), "invalid pid"),
        (lambda o: o["supervisor"].update(pid=True), "wrong type"),
        (lambda o: o["supervisor"].update(pid="12"), "wrong type"),
        (lambda o: o["supervisor"].update(method="magic"), "unknown identity method"),
        (lambda o: o.update(phase="zombie"), "unknown phase"),
        (lambda o: o.update(instance="../etc"), "invalid instance name"),
        (lambda o: o["servers"][0].update(name="a/b"), "invalid server name"),
        (lambda o: o["servers"][0].update(phase="weird"), "unknown server phase"),
        (lambda o: o["devices"][0].pop("total"), "missing 'total'"),
        (lambda o: o.update(devices=[1]), "not an object"),
        (lambda o: o.update(stop_timeout=-1), "'stop_timeout' must be"),
        (lambda o: o.update(stop_timeout=float("nan")), "'stop_timeout' must be"),
        (lambda o: o.update(stop_timeout=1e300), "'stop_timeout' must be"),
    ],
)
def test_invalid_files_are_rejected(tmp_path: Path, mutate: object, message: str) -> None:
    obj = state_to_json(sample(tmp_path))
    mutate(obj)  # type: ignore[operator]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(StateFileError, match=message):
        read_state(path)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{half")
    with pytest.raises(StateFileError, match="not JSON"):
        read_state(path)
    path.write_text("[]")
    with pytest.raises(StateFileError, match="missing 'format'"):
        read_state(path)


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run" / "gpu.json"
    old = sample(tmp_path)
    write_state(path, old)

    def boom(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        write_state(path, replace(old, rpc_servers="changed"))
    assert read_state(path) == old
    assert [p.name for p in path.parent.iterdir()] == ["gpu.json"]


def test_remove_state_only_for_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "run" / "gpu.json"
    write_state(path, sample(tmp_path, pid=100))
    assert remove_state(path, owner_pid=200) is False  # another supervisor's file
    assert path.exists()
    assert remove_state(path, owner_pid=100) is True
    assert remove_state(path) is False  # already gone
    path.write_text("corrupt")
    assert remove_state(path, owner_pid=100) is True


def test_instance_names(tmp_path: Path) -> None:
    assert check_instance_name("gpu-1.a_b") == "gpu-1.a_b"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(UsageError, match="invalid instance name"):
            check_instance_name(bad)
    run = tmp_path / "run"
    for name in ("b", "a"):
        write_state(state_path(run, name), replace(sample(tmp_path), instance=name))
    (run / "a.lock").write_text("")
    assert list_instances(run) == ["a", "b"]
    assert list_instances(tmp_path / "none") == []


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_000")
def test_state_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = state_path(tmp_path / "cache" / "run", "gpu")
    write_state(path, sample(tmp_path))
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(path.parent.parent) == 0o700  # every level it created
    path.parent.chmod(0o777)  # made by an older sdrpc
    path.chmod(0o666)
    write_state(path, sample(tmp_path))
    assert (_mode(path.parent), _mode(path)) == (0o700, 0o600)


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_state_file_others_could_write_is_not_trusted(tmp_path: Path, mode: int) -> None:
    path = state_path(tmp_path / "run", "gpu")
    write_state(path, sample(tmp_path))
    path.chmod(mode)
    with pytest.raises(StateFileError, match="writable by others"):
        read_state(path)
