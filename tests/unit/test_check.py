"""Pure judging (sdrpc_build.check) and the sdrpc-check CLI with a stubbed probe."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

import sdrpc_build.cli.check as cli
from sdrpc_build.check import (
    ClientSpec,
    Endpoint,
    device_map,
    judge,
    parse_endpoints,
)
from sdrpc_build.errors import UsageError
from sdrpc_build.protocol.client import DeviceInfo, ProbeResult


def ok(
    port: int,
    proto: tuple[int, int, int] = (5, 0, 0),
    max_name: int | None = 160,
    devices: int = 1,
    host: str = "10.0.0.1",
) -> ProbeResult:
    devs = tuple(DeviceInfo(i, 100 + i, 200 + i, 32, 2**64 - 1) for i in range(devices))
    return ProbeResult(
        endpoint=f"{host}:{port}",
        host=host,
        port=port,
        status="ok",
        protocol=proto,
        max_name=max_name,
        devices=devs,
    )


def failed(status: Any, problem: str, port: int = 9) -> ProbeResult:
    return ProbeResult(
        endpoint=f"10.0.0.9:{port}", host="10.0.0.9", port=port, status=status, problems=(problem,)
    )


# ------------------------------------------------------------------ endpoints


def test_parse_endpoints_in_order_with_ipv6() -> None:
    eps = parse_endpoints("192.168.1.10:50052, host.lan:50053,[::1]:50054")
    assert eps == (
        Endpoint("192.168.1.10", 50052),
        Endpoint("host.lan", 50053),
        Endpoint("::1", 50054),
    )
    assert [str(e) for e in eps] == ["192.168.1.10:50052", "host.lan:50053", "[::1]:50054"]
    assert parse_endpoints(["a:1,b:2", "c:3"]) == (
        Endpoint("a", 1),
        Endpoint("b", 2),
        Endpoint("c", 3),
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        ",",
        "a:1,,b:2",
        "host",
        ":50052",
        "host:",
        "host:0",
        "host:65536",
        "host:12x",
        "::1:50052",
        "[::1]50052",
        "[::1",
        "[nothost]:1",
        "a b:1",
        "a:1,a:1",
        "host:-5",
    ],
)
def test_malformed_endpoint_lists_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_endpoints(text)
    assert info.value.exit_code == 2 and info.value.hint


# ------------------------------------------------------------------ verdicts


def test_compatible_same_major_older_minor_any_patch() -> None:
    spec = ClientSpec((5, 1, 0), 160)
    assert judge(ok(1, (5, 0, 7)), spec).compatible
    assert judge(ok(1, (5, 1, 3)), spec).compatible


def test_major_differs() -> None:
    v = judge(ok(1, (7, 0, 0)), ClientSpec((5, 0, 1), 160))
    assert v.kind == "incompatible"
    assert v.reasons == ("protocol major differs: server 7.0.0, client 5.0.1",)


def test_server_minor_newer() -> None:
    v = judge(ok(1, (5, 1, 0)), ClientSpec((5, 0, 1), None))
    assert v.kind == "incompatible" and "minor is newer" in v.reasons[0]


def test_name_length_mismatch_and_unknown() -> None:
    v = judge(ok(1, max_name=128), ClientSpec(None, 160))
    assert v.kind == "incompatible" and v.reasons[0].startswith("name length 128 vs 160")
    u = judge(ok(1, max_name=None), ClientSpec(None, 160))
    assert u.kind == "incompatible" and "unknown" in u.reasons[0]
    assert judge(ok(1, max_name=None), ClientSpec()).compatible  # nothing to judge against


def test_both_reasons_are_listed() -> None:
    v = judge(ok(1, (7, 0, 0), 64), ClientSpec((5, 0, 0), 160))
    assert len(v.reasons) == 2


@pytest.mark.parametrize(
    ("status", "kind", "prefix"),
    [
        ("unreachable", "unreachable", "unreachable: "),
        ("busy", "busy", "busy: "),
        ("not-rpc", "not-rpc", "not a ggml RPC server: "),
        ("error", "error", "protocol error: "),
    ],
)
def test_failures_keep_their_kind_and_problem(status: str, kind: str, prefix: str) -> None:
    v = judge(failed(status, "details here"), ClientSpec((5, 0, 0), 160))
    assert v.kind == kind and not v.compatible
    assert v.reasons == (prefix + "details here",)


# ------------------------------------------------------------------ device map


def test_device_map_counts_across_servers_in_order() -> None:
    results = [ok(1, devices=2), failed("unreachable", "x"), ok(2, devices=1), ok(3, devices=3)]
    m = device_map(results)
    assert [(d.name, d.server, d.index) for d in m] == [
        ("RPC0", 0, 0),
        ("RPC1", 0, 1),
        ("RPC2", 2, 0),
        ("RPC3", 3, 0),
        ("RPC4", 3, 1),
        ("RPC5", 3, 2),
    ]
    assert m[1].free == 101 and m[1].total == 201 and m[2].endpoint == "10.0.0.1:2"


def test_device_map_pre_v3_is_one_device_per_server() -> None:
    m = device_map([ok(1, (2, 0, 0), devices=2), ok(2, (3, 0, 0), devices=2)])
    assert [d.name for d in m] == ["RPC0", "RPC1", "RPC2"]
    assert m[0].server == 0 and m[1].server == 1


# ------------------------------------------------------------------ CLI


@pytest.fixture
def fake_probe(monkeypatch: pytest.MonkeyPatch) -> dict[int, ProbeResult]:
    table: dict[int, ProbeResult] = {}
    calls: list[tuple[str, int, float, int | None]] = []

    def probe(
        host: str,
        port: int,
        *,
        timeout: float = 3.0,
        expect_max_name: int | None = None,
        detect_max_name: bool = True,
    ) -> ProbeResult:
        calls.append((host, port, timeout, expect_max_name))
        r = table[port]
        return ProbeResult(
            endpoint=f"{host}:{port}",
            host=host,
            port=port,
            status=r.status,
            protocol=r.protocol,
            max_name=r.max_name,
            devices=r.devices,
            problems=r.problems,
        )

    monkeypatch.setattr(cli, "probe", probe)
    table[0] = types.SimpleNamespace(calls=calls)  # type: ignore[assignment]
    return table


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_cli_all_compatible(
    fake_probe: dict[int, ProbeResult], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_probe[1] = ok(1, devices=2)
    fake_probe[2] = ok(2)
    code, doc = run(
        capsys, "h:1,h:2", "--expect-proto", "5.0.1", "--expect-max-name", "160", "--timeout", "2.5"
    )
    assert code == 0
    assert [s["endpoint"] for s in doc["servers"]] == ["h:1", "h:2"]
    s = doc["servers"][0]
    assert {
        "endpoint",
        "reachable",
        "protocol",
        "max_name",
        "devices",
        "compatible",
        "problems",
    } <= set(s)
    assert s["protocol"] == "5.0.0" and s["devices"][1]["name"] == "RPC1"
    assert doc["servers"][1]["devices"][0]["name"] == "RPC2"
    assert doc["rpc_servers"] == "h:1,h:2"
    assert fake_probe[0].calls[0][2:] == (2.5, 160)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (ok(1, (7, 0, 0)), 10),
        (failed("unreachable", "refused"), 11),
        (failed("busy", "no reply"), 12),
        (failed("not-rpc", "http"), 13),
        (failed("error", "truncated"), 14),
    ],
)
def test_cli_exit_codes(
    fake_probe: dict[int, ProbeResult],
    capsys: pytest.CaptureFixture[str],
    result: ProbeResult,
    code: int,
) -> None:
    fake_probe[1] = ok(1)
    fake_probe[2] = result
    got, doc = run(capsys, "h:1", "h:2", "--expect-proto", "5.0.0")
    assert got == code
    assert doc["servers"][0]["compatible"] is True
    assert doc["servers"][1]["compatible"] is False and doc["servers"][1]["problems"]


def test_cli_sd_cpp_pins_and_override(
    fake_probe: dict[int, ProbeResult],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sdrpc_build import pins

    seen: list[Path] = []

    def read_sd_tree(path: Path, *a: Any, **k: Any) -> Any:
        seen.append(path)
        pin = types.SimpleNamespace
        return pin(max_name=pin(value=128), client_protocol=pin(value=(5, 0, 1)))

    monkeypatch.setattr(pins, "read_sd_tree", read_sd_tree)
    fake_probe[1] = ok(1, max_name=128)
    code, doc = run(capsys, "h:1", "--sd-cpp", "/src/sd")
    assert code == 0 and seen == [Path("/src/sd")]
    assert doc["client"] == {"protocol": "5.0.1", "max_name": 128, "source": "--sd-cpp /src/sd"}
    code, doc = run(capsys, "h:1", "--sd-cpp", "/src/sd", "--expect-max-name", "160")
    assert code == 10 and doc["client"]["max_name"] == 160


@pytest.mark.parametrize(
    "argv",
    [
        ["h:1", "--expect-proto", "five"],
        ["h:1", "--expect-max-name", "100"],
        ["h:1", "--timeout", "0"],
        ["h:1", "--timeout", "soon"],
        ["h:1,,h:2"],
        ["--bogus", "h:1"],
        [],
    ],
)
def test_cli_usage_errors(
    fake_probe: dict[int, ProbeResult], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err


def test_cli_table_output(
    fake_probe: dict[int, ProbeResult], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_probe[1] = ok(1, devices=2, max_name=64)
    code = cli.main(["h:1", "--expect-max-name", "160"])
    out = capsys.readouterr().out
    assert code == 10
    assert "RPC1" in out and "name length 64 vs 160" in out and "incompatible" in out
