"""probe(), RpcClient and sdrpc-check against real rpc-servers (v5 and v7, two name lengths)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdrpc_build.cli.check import main
from sdrpc_build.protocol.client import RpcClient
from sdrpc_build.protocol.compat import ClientSpec, judge
from sdrpc_build.protocol.probe import probe
from sdrpc_build.protocol.tensor import RpcTensor

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).parents[1] / "golden"
SERVERS = [("0.3.35", 64), ("0.3.35", 160), ("0.3.36", 64), ("0.3.36", 160)]
PROTO = {"0.3.35": (5, 0, 0), "0.3.36": (7, 0, 0)}
Start = Callable[..., Any]


@pytest.mark.parametrize(("version", "max_name"), SERVERS)
def test_probe_reports_version_and_exact_name_length(
    rpc_server: Start, version: str, max_name: int
) -> None:
    port, proc = rpc_server(version, max_name)
    r = probe("127.0.0.1", port, timeout=3)
    assert r.status == "ok", r.problems
    assert r.protocol == PROTO[version] and r.max_name == max_name
    assert r.hello_shape == "caps" and r.problems == ()
    assert len(r.devices) == 1
    d = r.devices[0]
    assert d.index == 0 and 0 < d.free <= d.total and d.alignment == 32
    # the name probe's refused lengths left the server alive and idle
    assert probe("127.0.0.1", port, timeout=3).max_name == max_name
    assert proc.poll() is None


@pytest.mark.parametrize(("version", "max_name"), SERVERS)
def test_verdicts_against_other_clients(rpc_server: Start, version: str, max_name: int) -> None:
    port, _ = rpc_server(version, max_name)
    r = probe("127.0.0.1", port, timeout=3, expect_max_name=128)
    major = PROTO[version][0]
    assert judge(r, ClientSpec((major, 0, 1), max_name)).compatible
    v = judge(r, ClientSpec((major, 0, 1), 128))
    assert v.kind == "incompatible" and v.reasons[0].startswith(f"name length {max_name} vs 128")
    other = 7 if major == 5 else 5
    v = judge(r, ClientSpec((other, 0, 0), max_name))
    assert v.reasons == (f"protocol major differs: server {major}.0.0, client {other}.0.0",)


def test_busy_server_is_reported_busy_and_survives(rpc_server: Start) -> None:
    # rpc-server dies of SIGPIPE if a client leaves an unanswered HELLO behind and closes
    # normally; probe() must reset such connections instead.
    port, proc = rpc_server("0.3.36", 160)
    with RpcClient(timeout=3, max_name=160) as holder:
        holder.connect("127.0.0.1", port)
        assert holder.hello() == (7, 0, 0)
        r = probe("127.0.0.1", port, timeout=0.5)
        assert r.status == "busy" and r.reachable
        assert holder.device_count() == 1
    after = probe("127.0.0.1", port, timeout=3)
    assert after.status == "ok" and proc.poll() is None


@pytest.mark.parametrize(("version", "max_name"), [("0.3.35", 160), ("0.3.36", 64)])
def test_tensor_round_trip(rpc_server: Start, version: str, max_name: int) -> None:
    port, proc = rpc_server(version, max_name)
    size = 3 << 20
    with RpcClient(timeout=5, max_name=max_name) as c:
        c.connect("127.0.0.1", port)
        c.hello()
        ptr, got = c.alloc_buffer(size)
        assert ptr and got == size
        base = c.buffer_get_base(ptr)
        t = RpcTensor.f32(size // 4, buffer=ptr, data=base)
        data = bytearray(range(256)) * (size // 256)
        c.set_tensor(t, 0, memoryview(data))
        out = bytearray(size)
        assert c.get_tensor(t, 0, size, out) == data
        c.buffer_clear(ptr, 0xAB)
        assert bytes(c.get_tensor(t, 100, 4)) == b"\xab" * 4
        c.free_buffer(ptr)
        assert c.get_device_memory(0)[1] > 0  # still in sync after no-reply commands
    assert proc.poll() is None


@pytest.mark.parametrize(("version", "max_name"), SERVERS)
def test_golden_bytes_still_match_the_real_server(
    rpc_server: Start, version: str, max_name: int
) -> None:
    sys.path.insert(0, str(GOLDEN))
    import capture  # tests/golden/capture.py: raw struct, independent of the codec

    port, _ = rpc_server(version, max_name)
    v, fresh = capture.capture(port, max_name)
    assert v == PROTO[version]
    stored = json.loads((GOLDEN / f"v{v[0]}-n{max_name}.json").read_text())["steps"]
    assert [s["name"] for s in fresh] == [s["name"] for s in stored]
    for a, b in zip(fresh, stored, strict=True):
        assert (a["reply"] is None) == (b["reply"] is None), a["name"]
        if a["name"] in (
            "hello_caps",
            "device_count",
            "get_alignment",
            "get_max_size",
            "get_alloc_size",
            "get_tensor",
            "get_tensor_cleared",
        ):
            assert a["reply"] == b["reply"], a["name"]
        elif a["reply"] is not None:
            assert len(a["reply"]) == len(b["reply"]), a["name"]


def test_cli_json_against_real_servers(
    rpc_server: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    p5, _ = rpc_server("0.3.35", 160)
    p7, _ = rpc_server("0.3.36", 64)
    code = main(
        [
            "--json",
            "--expect-proto",
            "5.0.1",
            "--expect-max-name",
            "160",
            f"127.0.0.1:{p5},127.0.0.1:{p7}",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 10
    s5, s7 = doc["servers"]
    assert (s5["protocol"], s5["max_name"], s5["compatible"]) == ("5.0.0", 160, True)
    assert (s7["protocol"], s7["max_name"], s7["compatible"]) == ("7.0.0", 64, False)
    assert any("major differs" in p for p in s7["problems"])
    assert any("name length 64 vs 160" in p for p in s7["problems"])
    assert [d["name"] for d in doc["device_map"]] == ["RPC0", "RPC1"]
