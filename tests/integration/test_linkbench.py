"""sdrpc-bench against real rpc-servers (v5, v7) and a fake server that dies mid-upload."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeRpc, FakeServer

from sdrpc_build.bench.failures import BenchError
from sdrpc_build.bench.link import bench_server, bench_with_client
from sdrpc_build.bench.options import BenchOptions
from sdrpc_build.bench.pattern import payload
from sdrpc_build.cli.bench import main
from sdrpc_build.protocol.client import RpcClient
from sdrpc_build.protocol.tensor import RpcTensor

pytestmark = pytest.mark.integration

SERVERS = [("0.3.35", 64), ("0.3.36", 160)]
PROTO = {"0.3.35": "5.0.0", "0.3.36": "7.0.0"}
SIZES = (4096, 1 << 20, 3 << 20)
DYING = Path(__file__).parents[1] / "fakes" / "dying_server.py"
Start = Callable[..., Any]


@pytest.mark.parametrize(("version", "max_name"), SERVERS)
def test_bench_reads_back_what_it_sent_and_frees(
    rpc_server: Start, version: str, max_name: int
) -> None:
    port, proc = rpc_server(version, max_name)
    r = bench_server("127.0.0.1", port, BenchOptions(sizes=SIZES, timeout=5))
    assert r.protocol == PROTO[version] and r.max_name == max_name and r.error is None
    assert r.latency_ms is not None and r.latency_ms > 0
    (dev,) = r.devices
    assert dev.verified  # every size was read back with GET_TENSOR and compared
    assert [(s.op, s.bytes) for s in dev.samples] == [
        (op, n) for n in SIZES for op in ("set", "get")
    ]
    assert all(s.seconds > 0 and s.mb_per_s > 0 for s in dev.samples)
    assert dev.free_after is not None and dev.memory_restored
    assert proc.poll() is None


@pytest.mark.parametrize(("version", "max_name"), SERVERS)
def test_data_left_on_the_server_is_exactly_what_was_sent(
    rpc_server: Start, version: str, max_name: int
) -> None:
    # Read back independently of the bench's own check: the bench's last upload
    # of the largest size must be in the buffer just before it is freed.
    port, _ = rpc_server(version, max_name)
    seen: dict[str, bytes] = {}
    with RpcClient(timeout=5, max_name=max_name) as c:
        c.connect("127.0.0.1", port)
        c.hello()
        free = c.free_buffer

        def spy(remote_ptr: int) -> None:
            base = c.buffer_get_base(remote_ptr)
            t = RpcTensor.f32(SIZES[-1] // 4, buffer=remote_ptr, data=base)
            seen["data"] = bytes(c.get_tensor(t, 0, SIZES[-1]))
            free(remote_ptr)

        c.free_buffer = spy  # type: ignore[method-assign]  # spy on the real client
        bench_with_client(c, BenchOptions(sizes=SIZES, timeout=5, verify=False))
    assert seen["data"] == bytes(payload(SIZES[-1]))


@pytest.fixture
def debug_server(rpc_server: Any, tmp_path: Path) -> Callable[[], tuple[int, Path]]:
    """A real v7 server with GGML_RPC_DEBUG=1, its command log in a file."""

    def start() -> tuple[int, Path]:
        log = tmp_path / f"server-{len(list(tmp_path.glob('server-*.log')))}.log"
        port, _proc = rpc_server("0.3.36", 160, env={"GGML_RPC_DEBUG": "1"}, log=log)
        return port, log

    return start


def _caught_up(port: int) -> None:
    """Return once the server has handled everything the previous client sent.

    Since protocol v6 FREE_BUFFER has no reply, so the bench cannot wait for it:
    it may return before the server has read (and logged) it. rpc-server serves
    one connection at a time, in order: once a new connection's HELLO is
    answered, the previous connection has been read to its end.
    """
    with RpcClient(timeout=10) as c:
        c.connect("127.0.0.1", port)
        c.hello()


def _allocs_and_frees(log: Path, port: int) -> tuple[list[str], list[str]]:
    _caught_up(port)
    text = log.read_text(errors="replace")
    allocs = re.findall(r"\[alloc_buffer\].*remote_ptr: ([0-9a-f]+)", text)
    frees = re.findall(r"\[free_buffer\] remote_ptr: ([0-9a-f]+)", text)
    return allocs, frees


def test_every_buffer_is_freed_with_free_buffer(debug_server: Any) -> None:
    port, log = debug_server()
    bench_server("127.0.0.1", port, BenchOptions(sizes=(4096, 65536), timeout=5))
    allocs, frees = _allocs_and_frees(log, port)
    assert len(allocs) == 1 and sorted(allocs) == sorted(frees)


def test_ctrl_c_between_requests_still_frees(debug_server: Any) -> None:
    port, log = debug_server()
    calls = {"n": 0}

    def progress(endpoint: str, text: str, done: int, total: int) -> None:
        calls["n"] += 1
        if "download" in text:  # after the first upload, between two requests
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench_server("127.0.0.1", port, BenchOptions(sizes=(4096, 65536), timeout=5), progress)
    allocs, frees = _allocs_and_frees(log, port)
    assert len(allocs) == 1 and frees == allocs


def test_oversize_is_skipped_with_a_note(rpc_server: Start) -> None:
    port, _ = rpc_server("0.3.35", 64)
    huge = 1 << 50
    r = bench_server("127.0.0.1", port, BenchOptions(sizes=(4096, huge), timeout=5))
    (dev,) = r.devices
    assert {s.bytes for s in dev.samples} == {4096}
    assert len(dev.notes) == 1
    assert "skipped: above the device's free memory" in dev.notes[0]


def test_drip_fed_get_tensor_fails_after_about_the_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A valid server that sends GET_TENSOR data one byte every 1.5 s: it never
    # stalls for --timeout, but a request gets --timeout (+ as much per MiB).
    fake = FakeRpc(drip=1.5)
    with FakeServer(fake) as port:
        t0 = time.monotonic()
        code = main([f"127.0.0.1:{port}", "--timeout", "2", "--sizes", "4K", "--json"])
        took = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert code == 14
    assert took <= 2 * 2 + 1, took  # the probe, then one request's 2 s
    (doc,) = json.loads(out)["servers"]
    assert doc["error"].startswith(f"127.0.0.1:{port}: too slow during the latency test")
    assert "did not complete within 2 s" in doc["error"]
    assert doc["protocol"] == "7.0.0"  # what was learned before
    assert err.startswith(f"sdrpc-bench: error: 127.0.0.1:{port}: too slow")


def test_valid_but_slow_server_ends_at_the_deadline_with_what_was_measured() -> None:
    fake = FakeRpc(delay=0.05)  # every reply 50 ms late: 4 KiB x 50 takes about 5 s
    opts = BenchOptions(sizes=(4096,), timeout=2, deadline_s=3)
    with FakeServer(fake) as port:
        t0 = time.monotonic()
        with pytest.raises(BenchError) as info:
            bench_server("127.0.0.1", port, opts)
        took = time.monotonic() - t0
    assert took <= 1.2 * 3 + 0.5, took
    assert info.value.message.startswith(f"127.0.0.1:{port}: too slow: its 3 s deadline passed")
    partial = info.value.partial
    assert partial is not None and partial.protocol == "7.0.0"
    assert partial.latency_ms is not None and partial.latency_ms >= 50


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[..., int]]:
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str) -> int:
        proc = subprocess.Popen(
            [sys.executable, str(DYING), "--mode", mode],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        return int(proc.stdout.readline())

    yield start
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        if p.stdout is not None:
            p.stdout.close()


@pytest.mark.timeout(60)
def test_server_dying_mid_upload_is_a_clear_error(fake: Callable[..., int]) -> None:
    port = fake("die")
    with pytest.raises(BenchError) as info:
        bench_server("127.0.0.1", port, BenchOptions(sizes=(4096, 8 << 20), timeout=5))
    msg = info.value.message
    assert msg.startswith(f"127.0.0.1:{port}: the server closed the connection during SET_TENSOR")
    assert "8 MiB" in msg and info.value.hint and info.value.exit_code == 14


@pytest.mark.timeout(60)
def test_server_stalling_mid_upload_times_out(fake: Callable[..., int]) -> None:
    port = fake("stall")
    with pytest.raises(BenchError) as info:
        bench_server("127.0.0.1", port, BenchOptions(sizes=(32 << 20,), timeout=1))
    assert "no progress during SET_TENSOR of 32 MiB" in info.value.message


@pytest.mark.timeout(60)
def test_cli_json_shape_and_dying_server(
    rpc_server: Start, fake: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    good, _ = rpc_server("0.3.36", 160)
    bad = fake("die")
    code = main(
        [
            f"127.0.0.1:{good},127.0.0.1:{bad}",
            "--sizes",
            "4K,1M",
            "--json",
            "--model-size",
            "2G",
            "--timeout",
            "5",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 14
    doc = json.loads(out)
    ok, failed = doc["servers"]
    assert ok["endpoint"] == f"127.0.0.1:{good}" and ok["latency_ms"] > 0 and ok["error"] is None
    assert [(s["op"], s["bytes"]) for s in ok["samples"]] == [
        ("set", 4096),
        ("get", 4096),
        ("set", 1 << 20),
        ("get", 1 << 20),
    ]
    assert all(set(s) >= {"op", "bytes", "seconds", "mb_per_s"} for s in ok["samples"])
    assert ok["upload_estimate"]["model_bytes"] == 2 << 30
    assert "-c" in ok["upload_estimate"]["note"]
    assert "closed the connection during SET_TENSOR of 1 MiB" in failed["error"]
    assert "Traceback" not in err
    assert err.startswith(f"sdrpc-bench: error: 127.0.0.1:{bad}: the server closed")
    assert "sdrpc-bench: hint:" in err


def test_cli_human_output(rpc_server: Start, capsys: pytest.CaptureFixture[str]) -> None:
    port, _ = rpc_server("0.3.35", 64)
    assert main([f"127.0.0.1:{port}", "--sizes", "4K,64K", "--model-size", "7.2G"]) == 0
    out = capsys.readouterr().out
    assert "protocol 5.0.0" in out and "64 KiB" in out
    assert "data read back matches" in out and "uploading 7.2 GiB takes about" in out
