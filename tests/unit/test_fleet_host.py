"""The host side of sdrpc up (files/sdrpc_host.py) and the payload: pure parts."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path
from types import ModuleType

from sdrpc_build.fleet.ops import parse_status
from sdrpc_build.fleet.payload import Member, write_payload
from sdrpc_build.fleet.runner import PLAYBOOK_DIR


def host_module() -> ModuleType:
    path = PLAYBOOK_DIR / "roles/sdrpc_server/files/sdrpc_host.py"
    spec = importlib.util.spec_from_file_location("sdrpc_host", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:C364 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1
   1: 0100007F:C365 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1
   2: 0100007F:C364 0100007F:9999 01 00000000:00000000 00:00000000 00000000     0        0 3333 1
"""


def test_listen_inodes_only_listeners_on_wanted_ports() -> None:
    h = host_module()
    assert h.listen_inodes([TCP], [50020]) == {50020: [1111]}
    assert h.listen_inodes([TCP], [50021, 1]) == {50021: [2222]}


def test_sdrpc_unit_of_cgroup() -> None:
    h = host_module()
    ours = "0::/system.slice/sdrpc-server-cpu-50052.service\n"
    assert h.sdrpc_unit_of(ours) == "sdrpc-server-cpu-50052.service"
    assert h.sdrpc_unit_of("0::/system.slice/other.service\n") is None
    assert h.sdrpc_unit_of("0::/user.slice/user-0.slice/session-1.scope\n") is None


def test_pin_mismatch_names_unit_and_both_pins(tmp_path: Path) -> None:
    h = host_module()
    units, root = tmp_path / "units", tmp_path / "root"
    units.mkdir()
    key = "cpu-4df29be4f4-n128-x"
    (root / "servers" / key).mkdir(parents=True)
    sha = "4df29be4f4c3673f428170fda944a5b19f743bb8"
    (root / "servers" / key / "manifest.json").write_text(
        json.dumps({"commit": sha, "max_name": 128})
    )
    (units / "sdrpc-server-cpu-50052.service").write_text(
        f"[Service]\nExecStart={root}/servers/{key}/bin/ggml-rpc-server -p 50052\n"
    )
    assert h.pin_mismatches(root, [(sha, 128)], units) == []
    (got,) = h.pin_mismatches(root, [(sha, 160)], units)
    assert got.startswith("sdrpc-server-cpu-50052.service runs a server built for llama.cpp ")
    assert "GGML_MAX_NAME 128, the client needs llama.cpp 4df29be4f4c3 GGML_MAX_NAME 160" in got


def test_payload_is_deterministic_and_private(tmp_path: Path) -> None:
    ms = [Member("units/b.service", b"b"), Member("servers/k/bin/x", b"x" * 10, 0o755)]
    a = write_payload(tmp_path / "a.tar", ms)
    b = write_payload(tmp_path / "b.tar", list(reversed(ms)))
    assert a == b
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert (tmp_path / "a.tar").stat().st_mode & 0o777 == 0o600
    with tarfile.open(tmp_path / "a.tar") as t:
        assert [(m.name, m.mode) for m in t.getmembers()] == [
            ("servers/k/bin/x", 0o755),
            ("units/b.service", 0o644),
        ]


def test_parse_status_busy_idle_from_the_log_of_running_servers() -> None:
    def show(unit: str, active: str, sub: str) -> str:
        return f"Id={unit}\nActiveState={active}\nSubState={sub}\nNRestarts=1\nMainPID=7\n"

    out = json.dumps(
        {
            "servers": [
                {"show": show("a", "active", "running"), "log": ["Accepted client connection"]},
                {
                    "show": show("b", "active", "running"),
                    "log": ["Accepted client connection", "Client connection closed"],
                },
                {"show": show("c", "active", "running"), "log": []},
                {"show": show("d", "failed", "failed"), "log": ["Accepted client connection"]},
            ]
        }
    )
    got = [(s.unit, s.activity, s.restarts) for s in parse_status("h", out)]
    assert got == [("a", "busy", 1), ("b", "idle", 1), ("c", "idle", 1), ("d", "unknown", 1)]
    assert parse_status("h", "not json") == []
