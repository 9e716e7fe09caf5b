"""probe() and sdrpc-check against fake servers on 127.0.0.1 (misbehaving and well-behaved)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fakes import (
    FakeRpc,
    FakeServer,
    absurd_size,
    close_mid_reply,
    garbage,
    hang,
    http,
    real_http_server,
    reset_on_connect,
    slow_drip,
)

from sdrpc_build.cli.check import main
from sdrpc_build.protocol.probe import DEADLINE_FACTOR, ProbeResult, probe

pytestmark = pytest.mark.integration


def _probe(port: int, expect_max_name: int | None = None) -> tuple[ProbeResult, float]:
    t0 = time.monotonic()
    r = probe("127.0.0.1", port, timeout=1.0, expect_max_name=expect_max_name)
    return r, time.monotonic() - t0


def test_hang_is_busy_after_the_timeout() -> None:
    with FakeServer(hang) as port:
        r, took = _probe(port)
    assert r.status == "busy" and r.reachable
    assert "serving another client" in r.problems[0]
    assert 0.9 <= took <= 1.2 * DEADLINE_FACTOR * 1.0 + 0.5  # HELLO's timeout, then the sniff


def test_real_http_server_is_not_rpc_not_busy(capsys: pytest.CaptureFixture[str]) -> None:
    # Python's http.server waits for a request line: it never answers the binary HELLO.
    with real_http_server() as port:
        r, took = _probe(port)
        code, doc = _run_json(capsys, f"127.0.0.1:{port}")
    assert r.status == "not-rpc", r
    assert "answered a plain-text request with b'HTTP/1.0" in r.problems[0]
    assert took <= 1.2 * DEADLINE_FACTOR * 1.0 + 0.5
    assert code == 13 and doc["servers"][0]["verdict"] == "not-rpc"


def test_slow_replier_with_64_devices_is_too_slow_within_the_deadline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # every reply valid, each 0.5 s late: 64 devices would take 97 s
    fake = FakeRpc(delay=0.5, devices=[(1 << 30, 2 << 30)] * 64)
    with FakeServer(fake) as port:
        t0 = time.monotonic()
        code = main(["--json", "--timeout", "2", f"127.0.0.1:{port}"])
        took = time.monotonic() - t0
    doc = json.loads(capsys.readouterr().out)
    deadline = DEADLINE_FACTOR * 2
    assert doc["deadline_s"] == deadline
    assert took <= 1.2 * deadline + 0.5, took
    (s,) = doc["servers"]
    assert code == 12 and s["status"] == "slow" and s["verdict"] == "slow"
    assert s["protocol"] == "7.0.0" and s["device_count"] == 64  # what was learned so far
    assert 1 <= len(s["devices"]) < 64
    assert s["problems"][0].startswith("too slow: did not finish within its 6 s deadline")
    assert f"{len(s['devices'])} of 64 devices listed" in s["problems"][0]
    assert doc["device_map"] == []  # an incomplete inventory gives no RPC names


def test_every_kind_of_hostile_server_at_once_ends_by_the_deadline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fakes = [
        FakeServer(FakeRpc(delay=0.5, devices=[(1 << 30, 2 << 30)] * 64)),
        FakeServer(slow_drip),
        FakeServer(garbage),
        FakeServer(hang),
    ]
    with (
        fakes[0] as slow,
        fakes[1] as drip,
        fakes[2] as junk,
        fakes[3] as silent,
        real_http_server() as web,
    ):
        ports = [slow, drip, junk, silent, web]
        t0 = time.monotonic()
        code = main(["--json", "--timeout", "2", *(f"127.0.0.1:{p}" for p in ports)])
        took = time.monotonic() - t0
    doc = json.loads(capsys.readouterr().out)
    assert took <= 1.2 * doc["deadline_s"] + 0.5, took
    assert [s["verdict"] for s in doc["servers"]] == ["slow", "error", "not-rpc", "busy", "not-rpc"]
    assert code == 14


def test_no_client_given_is_reachable(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(FakeRpc()) as port:
        code, doc = _run_json(capsys, f"127.0.0.1:{port}")
    (s,) = doc["servers"]
    assert code == 0 and s["verdict"] == "reachable" and s["compatible"] is None


@pytest.mark.parametrize(
    ("fake", "needle"),
    [
        (FakeRpc(devices=[(3 << 30, 2 << 30)]), "more free memory than it has"),
        (FakeRpc(alignment=0), "alignment 0, not a power of two"),
    ],
)
def test_impossible_device_values_are_protocol_errors(
    capsys: pytest.CaptureFixture[str], fake: FakeRpc, needle: str
) -> None:
    with FakeServer(fake) as port:
        code, doc = _run_json(capsys, f"127.0.0.1:{port}", "--expect-proto", "7.0.0")
    (s,) = doc["servers"]
    assert code == 14 and s["verdict"] == "error" and s["compatible"] is False
    assert any(needle in p for p in s["problems"])


def test_slow_drip_times_out_as_error_not_hang() -> None:
    with FakeServer(slow_drip) as port:
        r, took = _probe(port)
    assert r.status == "error"
    assert "within 1 s" in r.problems[0] and "got " in r.problems[0]
    assert took < 1.5


@pytest.mark.parametrize("handler", [garbage, http, absurd_size])
def test_non_rpc_replies_are_not_rpc(handler: object) -> None:
    with FakeServer(handler) as port:  # type: ignore[arg-type]
        r, took = _probe(port)
    assert r.status == "not-rpc", r
    assert "not a ggml RPC server" in r.problems[0]
    assert took < 1  # decided from the declared size, nothing awaited or allocated


def test_http_server_problem_quotes_its_bytes() -> None:
    with FakeServer(http) as port:
        r, _ = _probe(port)
    assert "HTTP/1.1" in r.problems[0]


def test_close_mid_reply_is_a_protocol_error() -> None:
    with FakeServer(close_mid_reply) as port:
        r, _ = _probe(port)
    assert r.status == "error"
    assert "in the middle of" in r.problems[0]


def test_reset_on_both_hello_shapes_is_not_rpc() -> None:
    with FakeServer(reset_on_connect) as port:
        r, _ = _probe(port)
    assert r.status == "not-rpc"
    assert "both shapes" in r.problems[0]


def test_refused_port_is_unreachable() -> None:
    with FakeServer(hang) as port:
        pass  # closed again: nothing listens now
    r, _ = _probe(port)
    assert r.status == "unreachable" and not r.reachable
    assert "refused" in r.problems[0]


def test_v3_server_gets_empty_hello_after_caps_hello_is_refused() -> None:
    fake = FakeRpc(version=(3, 6, 1), max_name=128, devices=[(1, 2), (3, 4)])
    server = FakeServer(fake)
    with server as port:
        r, _ = _probe(port)
    assert r.status == "ok", r.problems
    assert r.protocol == (3, 6, 1) and r.hello_shape == "empty"
    assert r.max_name == 128
    assert [(d.index, d.free, d.total) for d in r.devices] == [(0, 1, 2), (1, 3, 4)]
    # caps HELLO, empty HELLO, then one throw-away connection per wrong name length (64)
    assert server.connections == 3


def test_v2_server_has_one_device_and_no_device_argument() -> None:
    with FakeServer(FakeRpc(version=(2, 0, 0), max_name=64, devices=[(5, 9)])) as port:
        r, _ = _probe(port)
    assert r.status == "ok", r.problems
    assert [(d.index, d.free, d.total, d.alignment) for d in r.devices] == [(0, 5, 9, 32)]


def test_expected_name_length_is_tried_first() -> None:
    server = FakeServer(FakeRpc(max_name=256))
    with server as port:
        r, _ = _probe(port, expect_max_name=256)
    assert r.max_name == 256 and server.connections == 1


def test_unknown_name_length_is_reported() -> None:
    with FakeServer(FakeRpc(max_name=96)) as port:
        r, _ = _probe(port)
    assert r.status == "ok" and r.max_name is None
    assert any("GGML_MAX_NAME unknown" in p for p in r.problems)


def test_absurd_device_count_is_capped() -> None:
    with FakeServer(FakeRpc(device_count=2**32 - 1)) as port:
        r, _ = _probe(port)
    # device 1 does not exist on the fake: the inventory fails cleanly
    assert r.status == "error"
    assert any("only the first 64" in p for p in r.problems)


def test_trailing_bytes_after_hello_are_a_protocol_error() -> None:
    with FakeServer(FakeRpc(trailing=b"\x01\x02\x03")) as port:
        r, _ = _probe(port)
    assert r.status == "error" and r.protocol == (7, 0, 0)


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["--json", "--timeout", "1", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_cli_device_map_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    a = FakeServer(FakeRpc(version=(5, 0, 1), max_name=160, devices=[(1, 2), (3, 4)]))
    b = FakeServer(FakeRpc(version=(5, 0, 0), max_name=160, devices=[(5, 6)]))
    with a as pa, b as pb:
        code, doc = _run_json(
            capsys,
            f"127.0.0.1:{pa},127.0.0.1:{pb}",
            "--expect-proto",
            "5.0.1",
            "--expect-max-name",
            "160",
        )
    assert code == 0
    names = [(d["name"], d["endpoint"], d["index"]) for d in doc["device_map"]]
    assert names == [
        ("RPC0", f"127.0.0.1:{pa}", 0),
        ("RPC1", f"127.0.0.1:{pa}", 1),
        ("RPC2", f"127.0.0.1:{pb}", 0),
    ]
    s0 = doc["servers"][0]
    assert s0["protocol"] == "5.0.1" and s0["max_name"] == 160 and s0["compatible"] is True
    assert [d["name"] for d in s0["devices"]] == ["RPC0", "RPC1"]
    assert s0["reachable"] is True and s0["problems"] == []


def test_cli_mixed_faults_keep_checking_others(capsys: pytest.CaptureFixture[str]) -> None:
    good = FakeServer(FakeRpc(version=(5, 1, 0), max_name=128))
    with good as pg, FakeServer(hang) as ph, FakeServer(http) as pn:
        code, doc = _run_json(
            capsys,
            f"127.0.0.1:{pg}",
            f"127.0.0.1:{ph}",
            f"127.0.0.1:{pn}",
            "--expect-proto",
            "5.0.0",
            "--expect-max-name",
            "160",
        )
    kinds = [s["verdict"] for s in doc["servers"]]
    assert kinds == ["incompatible", "busy", "not-rpc"]
    assert code == 13  # the highest applicable code
    problems = doc["servers"][0]["problems"]
    assert any("minor is newer" in p for p in problems)
    assert any("name length 128 vs 160" in p for p in problems)


def test_cli_unreachable_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(hang) as port:
        pass
    code = main(["--timeout", "0.5", f"127.0.0.1:{port}", "[::1]:1"])
    out = capsys.readouterr().out
    assert code == 11
    assert "unreachable" in out and "[::1]:1" in out
