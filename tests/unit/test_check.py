"""Pure judging (sdrpc_build.protocol.compat) and the sdrpc-check CLI with a stubbed probe."""

from __future__ import annotations

import json
import re
import time
import types
from pathlib import Path
from typing import Any

import pytest

import sdrpc_build.cli.check as cli
from sdrpc_build.build import pins as build_pins
from sdrpc_build.errors import UsageError
from sdrpc_build.protocol.client import DeviceInfo
from sdrpc_build.protocol.compat import (
    ClientSpec,
    device_map,
    judge,
    name_length_problem,
    sd_cli_devices,
    version_problem,
)
from sdrpc_build.protocol.endpoint import Endpoint, format_endpoint, parse_endpoints
from sdrpc_build.protocol.probe import ProbeResult


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
    r = judge(ok(1, max_name=None), ClientSpec())  # nothing to judge against
    assert r.kind == "reachable" and r.compatible is None and r.ok and r.reasons == ()


def test_no_client_is_reachable_not_compatible() -> None:
    v = judge(ok(1), ClientSpec())
    assert v.kind == "reachable" and v.compatible is None and v.ok
    assert judge(ok(1), ClientSpec((5, 0, 0), None)).kind == "compatible"
    assert judge(ok(1), ClientSpec(None, 160)).kind == "compatible"


def impossible(free: int = 100, total: int = 200, alignment: int | None = 32) -> ProbeResult:
    return ProbeResult(
        endpoint="10.0.0.1:1",
        host="10.0.0.1",
        port=1,
        status="ok",
        protocol=(5, 0, 0),
        max_name=160,
        devices=(DeviceInfo(0, 100, 200, 32, 0), DeviceInfo(1, free, total, alignment, 0)),
    )


@pytest.mark.parametrize(
    ("result", "needle"),
    [
        (impossible(free=300, total=200), "device 1 reports more free memory than it has"),
        (impossible(alignment=0), "device 1 reports alignment 0, not a power of two"),
        (impossible(alignment=48), "device 1 reports alignment 48, not a power of two"),
    ],
)
@pytest.mark.parametrize("spec", [ClientSpec(), ClientSpec((5, 0, 0), 160)])
def test_impossible_device_values_are_a_protocol_error(
    result: ProbeResult, needle: str, spec: ClientSpec
) -> None:
    v = judge(result, spec)
    assert v.kind == "error" and not v.compatible and not v.ok
    assert v.reasons[0].startswith("protocol error: " + needle)


def test_impossible_values_come_with_other_reasons() -> None:
    v = judge(impossible(alignment=0), ClientSpec((7, 0, 0), 128))
    assert v.kind == "error" and len(v.reasons) == 3  # alignment, major, name length


def test_both_reasons_are_listed() -> None:
    v = judge(ok(1, (7, 0, 0), 64), ClientSpec((5, 0, 0), 160))
    assert len(v.reasons) == 2


@pytest.mark.parametrize(
    ("status", "kind", "prefix"),
    [
        ("unreachable", "unreachable", "unreachable: "),
        ("busy", "busy", "busy: "),
        ("slow", "slow", "too slow: "),
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


def test_device_map_skips_servers_with_an_incomplete_inventory() -> None:
    slow = ProbeResult(
        endpoint="10.0.0.1:2",
        host="10.0.0.1",
        port=2,
        status="slow",
        protocol=(7, 0, 0),
        devices=(DeviceInfo(0, 1, 2),),
        device_count=64,
    )
    m = device_map([ok(1), slow, ok(3)])
    assert [(d.name, d.server) for d in m] == [("RPC0", 0), ("RPC1", 2)]


def test_device_map_pre_v3_is_one_device_per_server() -> None:
    m = device_map([ok(1, (2, 0, 0), devices=2), ok(2, (3, 0, 0), devices=2)])
    assert [d.name for d in m] == ["RPC0", "RPC1", "RPC2"]
    assert m[0].server == 0 and m[1].server == 1


# ------------------------------------------------------------------ the rules, on plain values


def test_version_rule_same_major_minor_not_newer_patch_ignored() -> None:
    assert version_problem((5, 0, 9), (5, 0, 1)) is None
    assert version_problem((5, 0, 0), (5, 1, 0)) is None
    assert version_problem((5, 1, 0), (5, 0, 1)) == (
        "server minor is newer than the client's: server 5.1.0, client 5.0.1"
    )
    assert version_problem((4, 0, 0), (5, 0, 0)) == (
        "protocol major differs: server 4.0.0, client 5.0.0"
    )


def test_name_length_rule_equal_or_why_not() -> None:
    assert name_length_problem(160, 160) is None
    mismatch = name_length_problem(64, 160)
    assert mismatch is not None and mismatch.startswith("name length 64 vs 160")
    unknown = name_length_problem(None, 160)
    assert unknown is not None and "unknown (client uses 160)" in unknown


def test_sd_cli_numbering_on_any_device_values() -> None:
    # what launch and verify pass: their own device records, per server with its protocol
    numbered = sd_cli_devices(
        [((5, 0, 0), ["a0", "a1"]), (None, ["b0"]), ((2, 0, 0), ["c0", "c1"])]
    )
    assert [(n.name, n.server, n.device) for n in numbered] == [
        ("RPC0", 0, "a0"),
        ("RPC1", 0, "a1"),
        ("RPC2", 1, "b0"),  # protocol not known: every device listed counts
        ("RPC3", 2, "c0"),  # before v3 (no DEVICE_COUNT): one device per server
    ]
    assert [n.name for n in sd_cli_devices([((0, 9, 0), ["x", "y"]), ((7, 0, 0), [])])] == ["RPC0"]


# ------------------------------------------------------------------ CLI


@pytest.fixture
def fake_probe(monkeypatch: pytest.MonkeyPatch) -> dict[int, ProbeResult]:
    table: dict[int, ProbeResult] = {}
    calls: list[tuple[str, int, float, int | None]] = []
    deadlines: list[float | None] = []

    def probe(
        host: str,
        port: int,
        *,
        timeout: float = 3.0,
        expect_max_name: int | None = None,
        detect_max_name: bool = True,
        deadline: float | None = None,
    ) -> ProbeResult:
        calls.append((host, port, timeout, expect_max_name))
        deadlines.append(deadline)
        r = table[port]
        return ProbeResult(
            endpoint=format_endpoint(host, port),
            host=host,
            port=port,
            status=r.status,
            protocol=r.protocol,
            max_name=r.max_name,
            devices=r.devices,
            problems=r.problems,
            device_count=r.device_count,
        )

    monkeypatch.setattr(cli, "probe", probe)
    table[0] = types.SimpleNamespace(calls=calls, deadlines=deadlines)  # type: ignore[assignment]
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
    # one shared deadline, 3 x --timeout from the start, for every server
    d1, d2 = fake_probe[0].deadlines  # type: ignore[attr-defined]
    assert d1 == d2 and d1 is not None and d1 - time.monotonic() <= 3 * 2.5
    assert doc["deadline_s"] == 7.5 and doc["timeout_s"] == 2.5
    assert s["verdict"] == "compatible" and s["compatible"] is True


def test_cli_without_a_client_says_reachable(
    fake_probe: dict[int, ProbeResult], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_probe[1] = ok(1)
    code, doc = run(capsys, "h:1")
    assert code == 0
    (s,) = doc["servers"]
    assert s["verdict"] == "reachable" and s["compatible"] is None
    assert doc["client"]["source"] == "none given"
    assert cli.main(["h:1"]) == 0
    out = capsys.readouterr().out
    assert "reachable (no client given)" in out and "compatible" not in out
    assert "[none given]" in out  # not eaten as markup


def test_cli_impossible_values_exit_14(
    fake_probe: dict[int, ProbeResult], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_probe[1] = impossible(free=300, total=200)
    code, doc = run(capsys, "h:1")
    assert code == 14
    (s,) = doc["servers"]
    assert s["verdict"] == "error" and s["compatible"] is False
    assert any("more free memory than it has" in p for p in s["problems"])


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (ok(1, (7, 0, 0)), 10),
        (failed("unreachable", "refused"), 11),
        (failed("busy", "no reply"), 12),
        (failed("slow", "deadline"), 12),
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
    assert cli.main(["h:1", "h:2", "--expect-proto", "5.0.0"]) == code  # table output too
    capsys.readouterr()


def test_cli_sd_cpp_pins_and_override(
    fake_probe: dict[int, ProbeResult],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pins = build_pins

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


HUGE = "9" * 400


def _named_flags_exist(text: str) -> None:
    """Every --flag a message or hint names is one sdrpc-check has (but the unknown
    flag that argparse quotes back)."""
    ours = set(cli._parser()._option_string_actions)
    ours_text = "\n".join(ln for ln in text.splitlines() if "unrecognized arguments" not in ln)
    for flag in re.findall(r"--[a-z][a-z-]*", ours_text):
        assert flag in ours, f"{flag} is not an sdrpc-check option: {text}"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["h:1", "--expect-proto", "five"], "--expect-proto"),
        (["h:1", "--expect-proto", "5.0.\u00b2"], "--expect-proto"),
        (["h:1", "--expect-proto", f"{HUGE}.0.0"], "--expect-proto"),
        (["h:1", "--expect-max-name", "100"], "--expect-max-name"),
        (["h:1", "--expect-max-name", "1\u00b2"], "--expect-max-name"),
        (["h:1", "--expect-max-name", "\u0661\u0662\u0668"], "--expect-max-name"),
        (["h:1", "--expect-max-name", HUGE], "--expect-max-name"),
        (["h:1", "--timeout", "0"], "--timeout"),
        (["h:1", "--timeout", "soon"], "--timeout"),
        (["h:1", "--timeout", "nan"], "--timeout"),
        (["h:1", "--timeout", "inf"], "--timeout"),
        (["h:1", "--timeout", "-1"], "--timeout"),
        (["h:1", "--timeout", "1e1"], "--timeout"),
        (["h:1", "--timeout", "\u0663"], "--timeout"),
        (["h:1", "--timeout", HUGE], "--timeout"),
        (["h:1", "--timeout", "9" * 5000], "--timeout"),
        (["127.0.0.1:5\u00b2"], "invalid port"),
        ([f"127.0.0.1:{HUGE}"], "invalid port"),
        ([f"127.0.0.1:{'9' * 5000}"], "invalid port"),
        (["h:0"], "invalid port"),
        (["h:70000"], "invalid port"),
        (["host:"], "invalid port"),
        ([":50052"], "no host or port"),
        ([""], "no endpoints given"),
        ([","], "no endpoints given"),
        (["h:1,,h:2"], "empty endpoint"),
        (["--bogus", "h:1"], "unrecognized arguments"),
        ([], "required"),
    ],
)
def test_cli_usage_errors(
    fake_probe: dict[int, ProbeResult],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    assert err.startswith("sdrpc-check: error: ") or err.startswith("usage: "), err
    assert needle in err
    if err.startswith("sdrpc-check: error: "):
        lines = err.splitlines()
        assert len(lines) == 2 and lines[1].startswith("sdrpc-check: hint: "), err
        assert all(len(line) < 300 for line in lines)  # huge inputs are shortened
        _named_flags_exist(err)


def test_sd_cpp_that_is_no_tree_hints_at_real_flags(
    fake_probe: dict[int, ProbeResult], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["h:1", "--sd-cpp", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("sdrpc-check: error: ") and "sdrpc-check: hint: " in err
    hint = err.split("sdrpc-check: hint: ", 1)[1]
    assert "--expect-proto" in hint and "sdrpc-build" not in hint
    _named_flags_exist(err)


def test_narrow_or_piped_table_never_cuts_what_users_copy(
    fake_probe: dict[int, ProbeResult],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # and capsys is no terminal: piped
    v6 = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
    fake_probe[54997] = ok(54997, host="::1", devices=2)
    fake_probe[50052] = ok(50052, host=v6, max_name=64)
    fake_probe[1] = failed("busy", "no reply within 3 s")
    code = cli.main(
        [
            "[::1]:54997",
            f"[{v6}]:50052,h:1",
            "--expect-proto",
            "5.0.123",
            "--expect-max-name",
            "160",
        ]
    )
    out = capsys.readouterr().out
    assert code == 12
    lines = out.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert len(table) > 10 and all(len(line) <= 80 for line in table)  # tables fit
    assert "…" not in out  # nothing cut with an ellipsis
    assert "[::1]:54997" in out  # not eaten as markup
    want = f"--rpc-servers [::1]:54997,[{v6}]:50052,h:1"
    assert want in lines  # the string to copy, whole, on a line of its own
    assert any(line.startswith(f"[{v6}]:50052: name length 64 vs 160") for line in lines)
    assert "client: protocol 5.0.123 GGML_MAX_NAME 160 [--expect-proto, --expect-max-name]" in out


def test_cli_table_output(
    fake_probe: dict[int, ProbeResult], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_probe[1] = ok(1, devices=2, max_name=64)
    code = cli.main(["h:1", "--expect-max-name", "160"])
    out = capsys.readouterr().out
    assert code == 10
    assert "RPC1" in out and "name length 64 vs 160" in out and "incompatible" in out
