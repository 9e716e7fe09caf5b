"""Pure parts of sdrpc-bench: sizes, schedule, math, JSON shape, cleanup logic, CLI usage."""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

import pytest

import sdrpc_build.cli.bench as cli_bench
from sdrpc_build.bench.failures import BenchError
from sdrpc_build.bench.link import bench_with_client
from sdrpc_build.bench.maths import (
    DEFAULT_SIZES,
    DeviceResult,
    Sample,
    ServerResult,
    estimate_upload,
    format_duration,
    gbit_per_s,
    mb_per_s,
    memory_restored,
    parse_sizes,
    repeats_for,
    schedule,
    to_json,
)
from sdrpc_build.bench.options import BenchOptions
from sdrpc_build.bench.pattern import Pattern, payload
from sdrpc_build.cli.bench import _parser, main
from sdrpc_build.errors import Closed, UsageError
from sdrpc_build.protocol.client import DeviceInfo
from sdrpc_build.units import format_size, parse_size

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7.2G", round(7.2 * GIB)),
        ("7.2GiB", round(7.2 * GIB)),
        ("7.2gb", 7_200_000_000),
        ("512M", 512 * MIB),
        ("64MiB", 64 * MIB),
        ("4k", 4 * KIB),
        ("4kB", 4000),
        ("1024", 1024),
        (" 2 T ", 2 << 40),
        (".5K", 512),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


HUGE = "9" * 400


@pytest.mark.parametrize(
    "text",
    [
        "",
        "G",
        "7.2X",
        "-1G",
        "1.2.3M",
        "iB",
        "0",
        "0.1",
        "5 i",
        "\u00b2",
        "1\u00b2K",
        "\u0663G",
        "1e5",
        "nan",
        "inf",
        HUGE,
        HUGE + "K",
        "9" * 5000,
        "2000000T",
    ],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text, "--model-size", minimum=1)
    assert info.value.message.startswith("--model-size: ")
    assert info.value.exit_code == 2 and info.value.hint
    assert len(info.value.message) < 200


def test_parse_sizes_sorts_dedups_and_rounds_to_4() -> None:
    assert parse_sizes("64M,4K, 4096,1M,") == (4 * KIB, MIB, 64 * MIB)
    assert parse_sizes("5") == (8,)
    with pytest.raises(UsageError, match="no sizes"):
        parse_sizes(" , ")
    with pytest.raises(UsageError, match="limit"):
        parse_sizes("17G")
    with pytest.raises(UsageError, match="--sizes"):
        parse_sizes(f"4K,{HUGE}")


def test_default_sizes_are_4k_to_256m_in_steps_of_4() -> None:
    assert DEFAULT_SIZES[0] == 4 * KIB and DEFAULT_SIZES[-1] == 256 * MIB
    assert all(b == 4 * a for a, b in itertools.pairwise(DEFAULT_SIZES))


def test_schedule_caps_by_free_memory_and_max_size() -> None:
    s = schedule([4 * KIB, MIB, 64 * MIB, 256 * MIB], free=100 * MIB)
    assert s.sizes == (4 * KIB, MIB, 64 * MIB)
    assert s.notes == ("256 MiB skipped: above the device's free memory (100 MiB usable)",)
    s = schedule([MIB, 64 * MIB], free=GIB, max_size=32 * MIB)
    assert s.sizes == (MIB,)
    assert s.notes == ("64 MiB skipped: above the device's largest buffer (32 MiB)",)
    assert schedule([MIB], free=GIB, max_size=0).sizes == (MIB,)  # 0: no limit
    assert schedule([MIB], free=MIB, reserve=1).sizes == ()
    assert schedule([MIB], free=0).notes[0].endswith("(0 B usable)")


def test_throughput_math() -> None:
    assert mb_per_s(64 * MIB, 0.0671) == pytest.approx(1000.1, rel=1e-3)
    assert gbit_per_s(125_000_000, 1.0) == pytest.approx(1.0)
    assert mb_per_s(1, 0) == 0.0 and gbit_per_s(1, 0) == 0.0


def test_repeats_for() -> None:
    assert repeats_for(4 * KIB) == 50
    assert repeats_for(64 * MIB) == 4
    assert repeats_for(256 * MIB) == 3
    assert repeats_for(64 * MIB, budget=640 * MIB) == 10


def test_memory_restored_tolerates_small_drift() -> None:
    assert memory_restored(GIB, GIB)
    assert memory_restored(GIB, GIB - MIB)
    assert not memory_restored(GIB, GIB - 64 * MIB)


def test_format() -> None:
    assert format_size(4096) == "4 KiB"
    assert format_size(round(7.2 * GIB)) == "7.2 GiB"
    assert format_size(12) == "12 B"
    assert format_duration(0.25) == "250 ms"
    assert format_duration(13.04) == "13.0 s"
    assert format_duration(600) == "10.0 min"
    assert format_duration(7200) == "2.0 h"


def test_sample_best_and_median() -> None:
    s = Sample("set", 64 * MIB, (0.2, 0.1, 0.3))
    assert s.seconds == 0.1 and s.median_seconds == 0.2
    j = s.to_json()
    assert j["op"] == "set" and j["bytes"] == 64 * MIB and j["repeats"] == 3
    assert j["mb_per_s"] == pytest.approx(671.09, abs=0.01)


def test_estimate_upload_uses_bulk_rate_and_latency() -> None:
    s = Sample("set", 100_000_000, (1.0,))  # 100 MB/s
    up = estimate_upload(1_000_000_000, s, latency_s=0.001, tensors=1000)
    assert up.seconds == pytest.approx(10.0 + 1.0)
    assert up.rate_mb_per_s == pytest.approx(100.0)
    assert "-c" in up.note and "10 MiB" in up.note
    guess = estimate_upload(64 * MIB * 10, s, latency_s=0.0)
    assert guess.seconds == pytest.approx(64 * MIB * 10 / 1e8)
    assert math.isinf(estimate_upload(1, Sample("set", 1, (0.0,)), 0.0).seconds)


def test_to_json_shape() -> None:
    d = DeviceResult(
        0, GIB, 2 * GIB, GIB, (Sample("set", 4096, (0.001,)), Sample("get", 4096, (0.002,)))
    )
    r = ServerResult("h:1", "5.0.0", 64, 0.1234567, (d,))
    doc = to_json([r, ServerResult("h:2", error="boom")])
    json.dumps(doc)
    a, b = doc["servers"]
    assert a["endpoint"] == "h:1" and a["latency_ms"] == 0.1235
    assert [s["op"] for s in a["samples"]] == ["set", "get"]
    assert set(a["samples"][0]) >= {"op", "bytes", "seconds", "mb_per_s"}
    assert a["devices"][0]["memory_restored"] is True and a["error"] is None
    assert b["samples"] == [] and b["error"] == "boom" and b["upload_estimate"] is None
    assert d.best("set") == d.samples[0] and DeviceResult(0, 0, 0).best("get") is None


def test_payload_is_reproducible_and_stamped() -> None:
    a = payload(3 * MIB + 5)
    assert len(a) == 3 * MIB + 5 and a == payload(3 * MIB + 5)
    assert a[MIB : MIB + 8] == (1).to_bytes(8, "little")
    assert a[8:MIB] == a[MIB + 8 : 2 * MIB]
    assert len(payload(3)) == 3


def test_pattern_streams_the_payload_through_one_window() -> None:
    p = Pattern(window=2 * MIB)
    n = 5 * MIB + 12
    chunks = []
    for c in p.chunks(n):
        assert c.obj is p.buffer and len(c) <= 2 * MIB  # one reusable buffer
        chunks.append(bytes(c))
    assert [len(c) for c in chunks] == [2 * MIB, 2 * MIB, MIB + 12]
    assert b"".join(chunks) == payload(n)
    assert p.chunk(4 * MIB, 8) == (4).to_bytes(8, "little")
    with pytest.raises(ValueError, match="window-aligned"):
        p.chunk(MIB, 8)


# ---------------------------------------------------------------- cleanup logic
class FakeClient:
    """Enough of RpcClient for bench_with_client; records calls, can fail on cue."""

    host, port, max_name, version, deadline = "127.0.0.1", 1, 64, (5, 0, 0), None

    def __init__(self, fail_on: str | None = None, exc: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on = fail_on
        self.exc = exc or Closed("127.0.0.1:1 closed the connection while we sent")
        self.mem: bytearray = bytearray()
        self.closed = False
        self.windows: set[int] = set()

    def _hit(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_on:
            raise self.exc

    def get_device_memory(self, device: int = 0) -> tuple[int, int]:
        self._hit("memory")
        return GIB, 2 * GIB

    def alloc_buffer(self, size: int, device: int = 0) -> tuple[int, int]:
        self._hit("alloc")
        self.mem = bytearray(size)
        return 0x10, size

    def buffer_get_base(self, ptr: int) -> int:
        self._hit("base")
        return 0x1000

    def set_tensor_stream(self, tensor: Any, offset: int, size: int, chunks: Any) -> None:
        self._hit("set")
        data = b"".join(bytes(c) for c in chunks)
        assert len(data) == size
        self.mem[offset : offset + size] = data

    def get_tensor(self, tensor: Any, offset: int, size: int, out: Any) -> Any:
        assert size == 4  # the barrier and the latency test; bulk data is streamed
        self._hit("sync")
        out[:size] = self.mem[offset : offset + size]
        return out[:size]

    def get_tensor_stream(self, tensor: Any, offset: int, size: int, window: Any) -> Any:
        self._hit("get")
        self.windows.add(id(window))
        for at in range(offset, offset + size, len(window)):
            k = min(len(window), offset + size - at)
            window[:k] = self.mem[at : at + k]
            yield memoryview(window)[:k]

    def free_buffer(self, ptr: int) -> None:
        self._hit("free")

    def close(self) -> None:
        self.closed = True


DEV = [DeviceInfo(0, GIB, 2 * GIB, 32, 0)]
OPTS = BenchOptions(sizes=(4 * KIB, 64 * KIB), repeat_budget=0)


def test_normal_run_frees_once_and_rereads_memory() -> None:
    c = FakeClient()
    r = bench_with_client(c, OPTS, devices=DEV)  # type: ignore[arg-type]
    assert c.calls.count("alloc") == 1 and c.calls.count("free") == 1
    assert c.calls[-2:] == ["free", "memory"] and not c.closed
    (d,) = r.devices
    assert d.verified and d.memory_restored and len(d.samples) == 4
    assert r.latency_ms is not None and r.protocol == "5.0.0"


def test_failure_inside_a_transfer_resets_instead_of_freeing() -> None:
    c = FakeClient(fail_on="set")
    with pytest.raises(BenchError, match="closed the connection during SET_TENSOR of 4 KiB"):
        bench_with_client(c, OPTS, devices=DEV)  # type: ignore[arg-type]
    assert "free" not in c.calls and c.closed


def test_ctrl_c_between_requests_frees_the_buffer() -> None:
    c = FakeClient()

    def progress(ep: str, text: str, done: int, total: int) -> None:
        if "download" in text:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench_with_client(c, OPTS, progress, devices=DEV)  # type: ignore[arg-type]
    assert c.calls[-1] == "free" and not c.closed


def test_ctrl_c_inside_a_transfer_resets() -> None:
    c = FakeClient(fail_on="get", exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        bench_with_client(c, OPTS, devices=DEV)  # type: ignore[arg-type]
    assert "free" not in c.calls and c.closed


def test_downloads_reuse_one_window_of_fixed_size() -> None:
    c = FakeClient()
    r = bench_with_client(c, BenchOptions(sizes=(4 * KIB, 9 * MIB), repeat_budget=0), devices=DEV)  # type: ignore[arg-type]
    assert r.devices[0].verified and len(c.windows) == 1
    assert c.calls.count("get") == 2 * 3 + 2 * 1  # timed x3 per size, plus one read-back


def test_data_mismatch_is_an_error() -> None:
    class Corrupt(FakeClient):
        def get_tensor_stream(self, tensor: Any, offset: int, size: int, window: Any) -> Any:
            for view in super().get_tensor_stream(tensor, offset, size, window):
                view[len(view) - 1] ^= 0xFF
                yield view

    c = Corrupt()
    with pytest.raises(BenchError, match="differ from what was sent"):
        bench_with_client(c, OPTS, devices=DEV)  # type: ignore[arg-type]
    assert c.calls[-1] == "free"


def test_oversize_only_is_skipped_without_allocating() -> None:
    c = FakeClient()
    r = bench_with_client(c, BenchOptions(sizes=(4 * GIB,)), devices=DEV)  # type: ignore[arg-type]
    assert "alloc" not in c.calls
    assert r.devices[0].notes[0].startswith("4 GiB skipped: above the device's free memory")


def test_a_failure_keeps_what_was_measured() -> None:
    class FailsLate(FakeClient):
        def set_tensor_stream(self, tensor: Any, offset: int, size: int, chunks: Any) -> None:
            if size > 4 * KIB:
                raise Closed("127.0.0.1:1 closed the connection while we sent")
            super().set_tensor_stream(tensor, offset, size, chunks)

    with pytest.raises(BenchError) as info:
        bench_with_client(FailsLate(), OPTS, devices=DEV)  # type: ignore[arg-type]
    partial = info.value.partial
    assert partial is not None and partial.latency_ms is not None
    assert [(s.op, s.bytes) for s in partial.samples] == [("set", 4 * KIB), ("get", 4 * KIB)]


def test_default_deadline_is_60_timeouts() -> None:
    assert BenchOptions(timeout=2).server_deadline_s == 120
    assert BenchOptions(timeout=2, deadline_s=5).server_deadline_s == 5


def test_unknown_device_is_an_error() -> None:
    with pytest.raises(BenchError, match="has no device 3"):
        bench_with_client(FakeClient(), BenchOptions(devices=(3,)), devices=DEV)  # type: ignore[arg-type]


# ---------------------------------------------------------------- CLI usage
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["h:1", "--sizes", "4X"], "--sizes: invalid size '4X'"),
        (["h:1", "--sizes", HUGE], "--sizes: invalid size"),
        (["h:1", "--sizes", f"{HUGE}K"], "--sizes: invalid size"),
        (["h:1", "--model-size", "lots"], "--model-size: invalid size 'lots'"),
        (["h:1", "--model-size", HUGE], "--model-size: invalid size"),
        (["h:1", "--model-size", "\u0663G"], "--model-size: invalid size"),
        (["h:1", "--timeout", "0"], "--timeout"),
        (["h:1", "--timeout", "nan"], "--timeout"),
        (["h:1", "--timeout", "inf"], "--timeout"),
        (["h:1", "--timeout", "-1"], "--timeout"),
        (["h:1", "--timeout", HUGE], "--timeout"),
        (["h:1", "--device", "a"], "--device"),
        (["h:1", "--device", "\u00b2"], "--device"),
        (["h:1", "--device", "0,1\u00b2"], "--device"),
        (["h:1", "--device", HUGE], "--device"),
        (["h:1", "--model", "/nonexistent/model.gguf"], "--model: cannot read"),
        (["nohost"], "has no host or port"),
        (["h:1,h:1"], "listed twice"),
        (["127.0.0.1:5\u00b2"], "invalid port"),
        ([f"h:{HUGE}"], "invalid port"),
        (["h:0"], "invalid port"),
        (["h:70000"], "invalid port"),
        (["host:"], "invalid port"),
        ([":5"], "no host or port"),
        ([""], "no endpoints given"),
    ],
)
def test_cli_usage_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdrpc-bench: error: ") and needle in err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[1].startswith("sdrpc-bench: hint: "), err
    assert all(len(line) < 300 for line in lines)
    ours = set(_parser()._option_string_actions)
    assert "sdrpc-check" not in lines[1]  # the hint is about this command
    for flag in re.findall(r"--[a-z][a-z-]*", err):
        assert flag in ours, f"{flag} is not an sdrpc-bench option"


def test_cli_failed_server_with_ipv6_endpoint_is_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = cli_bench

    def fail(host: str, port: int, opts: BenchOptions, progress: Any = None) -> ServerResult:
        partial = ServerResult(
            "[::1]:7",
            "7.0.0",
            64,
            0.1,
            (DeviceResult(0, GIB, GIB, None, (Sample("set", 4096, (0.1,)),)),),
        )
        raise BenchError("[::1]:7: too slow: its deadline passed", hint="h", partial=partial)

    monkeypatch.setattr(cli, "bench_server", fail)
    assert main(["[::1]:7"]) == 14
    out = capsys.readouterr().out
    assert "[::1]:7: failed (the results above are partial)" in out
    assert "[::1]:7  protocol 7.0.0" in out and "4 KiB" in out
    assert main(["[::1]:7", "--json"]) == 14
    (doc,) = json.loads(capsys.readouterr().out)["servers"]
    assert doc["error"].startswith("[::1]:7: too slow") and doc["samples"][0]["bytes"] == 4096


def test_cli_model_and_model_size_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["h:1", "--model", "x", "--model-size", "1G"]) == 2
    assert "not allowed with" in capsys.readouterr().err
