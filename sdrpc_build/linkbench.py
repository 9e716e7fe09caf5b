"""The sdrpc-bench measuring loop: time SET_TENSOR / GET_TENSOR against one server.

Per server: :func:`~sdrpc_build.protocol.client.probe` (version, devices and
GGML_MAX_NAME, which a tensor upload must match or the server aborts), then one
connection that, per device, measures round-trip latency (a 4-byte GET_TENSOR),
allocates one buffer for the largest size that fits, times uploads and
downloads, reads the data back and compares it, and frees the buffer.

Timing: SET_TENSOR has no reply since protocol v2, so each timed upload ends
with a 4-byte GET_TENSOR (the barrier the native baseline in ``bench/`` uses
too); without it only the copy into the kernel's socket buffer would be timed.
Each size is repeated (see :func:`~sdrpc_build.bench.repeats_for`) and the
fastest run is reported, with the median alongside.

Cleanup on every path: when the connection is in step with the server (no
request half sent or half answered) the buffer is freed with FREE_BUFFER;
otherwise (Ctrl-C or a failure inside a transfer) the connection is reset,
and the server frees every buffer of a connection when it ends. After a normal
run the device's free memory is read again and compared with the value before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, TypeVar

from sdrpc_build.bench import (
    DEFAULT_SIZES,
    DeviceResult,
    Op,
    Sample,
    ServerResult,
    estimate_upload,
    format_bytes,
    repeats_for,
    schedule,
)
from sdrpc_build.errors import ProtocolError, SdrpcError
from sdrpc_build.protocol.client import (
    MAX_DEVICES,
    Closed,
    DeviceInfo,
    ProbeResult,
    RpcClient,
    Timeout,
    TransportError,
    format_endpoint,
    probe,
)
from sdrpc_build.protocol.codec import format_version
from sdrpc_build.protocol.tensor import RpcTensor

__all__ = [
    "BenchError",
    "BenchOptions",
    "Progress",
    "bench_server",
    "bench_with_client",
    "payload",
]

T = TypeVar("T")
# (endpoint, what is being done, steps done, steps in all)
Progress = Callable[[str, str, int, int], None]
LATENCY_ROUNDS = 20
_BLOCK = 1 << 20
RESERVE = 0  # bytes of free memory left untouched (the schedule's reserve)


class BenchError(SdrpcError):
    """A server failed or broke off during the benchmark."""

    exit_code = 14


@dataclass(frozen=True)
class BenchOptions:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    timeout: float = 10.0
    verify: bool = True
    devices: Optional[tuple[int, ...]] = None  # None: every device the server reports
    repeat_budget: int = 256 << 20  # bytes per size and direction (see repeats_for)
    model_bytes: Optional[int] = None


def payload(nbytes: int, seed: int = 0x5D49C) -> bytearray:
    """Reproducible test data: a random 1 MiB block repeated, each copy stamped with
    its index (so data landing at the wrong offset is caught). Fast for 256 MiB."""
    block = random.Random(seed).getrandbits(_BLOCK * 8).to_bytes(_BLOCK, "little")
    out = bytearray(nbytes)
    view = memoryview(out)
    for i in range(0, nbytes, _BLOCK):
        chunk = view[i : i + _BLOCK]
        chunk[:] = block[: len(chunk)]
        stamp = (i // _BLOCK).to_bytes(8, "little")
        chunk[: min(8, len(chunk))] = stamp[: len(chunk)]
    return out


class _Conn:
    """An :class:`RpcClient` that remembers whether the stream is still in step."""

    def __init__(self, client: RpcClient) -> None:
        self.client = client
        self.in_step = True

    def call(self, fn: Callable[..., T], *args: object, **kw: object) -> T:
        self.in_step = False
        out = fn(*args, **kw)
        self.in_step = True
        return out


def _fail(endpoint: str, doing: str, exc: BaseException) -> BenchError:
    detail = str(exc)
    if detail.startswith(endpoint + " "):
        detail = detail[len(endpoint) + 1 :]
    if isinstance(exc, Closed):
        return BenchError(
            f"{endpoint}: the server closed the connection during {doing} ({detail})",
            hint="the server crashed, was stopped, or refused the request; look at its output",
        )
    if isinstance(exc, Timeout):
        return BenchError(
            f"{endpoint}: no progress during {doing} ({detail})",
            hint="the server or the link stalled; try a larger --timeout on slow links",
        )
    return BenchError(
        f"{endpoint}: {doing} failed: {detail}",
        hint="run sdrpc-check on this endpoint to see whether the server is compatible",
    )


def _probe_or_fail(host: str, port: int, timeout: float) -> ProbeResult:
    result = probe(host, port, timeout=timeout)
    where = result.endpoint
    detail = "; ".join(result.problems) or result.status
    if result.status == "busy":
        raise BenchError(
            f"{where} is busy: {detail}",
            hint="rpc-server serves one client at a time; stop the other client first",
        )
    if result.status == "unreachable":
        raise BenchError(
            f"{where}: {detail}",
            hint="check the address, and that rpc-server runs there with -H set to an "
            "address this machine can reach (it listens on 127.0.0.1 by default)",
        )
    if result.status != "ok" or result.protocol is None:
        raise BenchError(f"{where}: {detail}", hint="run sdrpc-check on it for details")
    if result.max_name is None:
        raise BenchError(
            f"{where}: could not tell the server's GGML_MAX_NAME ({detail})",
            hint="a tensor upload with the wrong name length crashes the server; "
            "run sdrpc-check on it",
        )
    return result


def bench_server(
    host: str, port: int, opts: BenchOptions, progress: Progress | None = None
) -> ServerResult:
    """Probe, then measure one server (every device, or ``opts.devices``)."""
    info = _probe_or_fail(host, port, opts.timeout)
    assert info.max_name is not None
    client = RpcClient(timeout=opts.timeout, max_name=info.max_name)
    where = format_endpoint(host, port)
    try:
        client.connect(host, port)
        client.hello()
    except ProtocolError as exc:
        client.close()
        raise _fail(where, "HELLO", exc) from None
    with client:
        return bench_with_client(client, opts, progress, devices=info.devices)


def bench_with_client(
    client: RpcClient,
    opts: BenchOptions,
    progress: Progress | None = None,
    devices: Sequence[DeviceInfo] | None = None,
) -> ServerResult:
    """Measure over an open, HELLO'd connection whose ``max_name`` is right."""
    where = format_endpoint(client.host, client.port)
    conn = _Conn(client)
    try:
        if devices is None:
            count = min(conn.call(client.device_count), MAX_DEVICES)
            devices = [conn.call(client.device_info, i) for i in range(count)]
    except (ProtocolError, OSError) as exc:
        raise _fail(where, "the device inventory", exc) from None
    chosen = [d for d in devices if opts.devices is None or d.index in opts.devices]
    missing = sorted(set(opts.devices or ()) - {d.index for d in devices})
    if missing:
        raise BenchError(
            f"{where} has no device {missing[0]} (it has {len(devices)})",
            hint="device numbers start at 0; sdrpc-check lists them",
        )
    plans = [(d, schedule(opts.sizes, d.free, d.max_size, RESERVE)) for d in chosen]
    total = sum(1 + 2 * len(p.sizes) for _, p in plans)
    done = 0

    def step(text: str) -> None:
        nonlocal done
        if progress is not None:
            progress(where, text, done, total)
        done += 1

    results: list[DeviceResult] = []
    latency: float | None = None
    for dev, plan in plans:
        res, lat = _bench_device(conn, where, dev, plan.sizes, plan.notes, opts, step)
        results.append(res)
        if latency is None:
            latency = lat
    if progress is not None:
        progress(where, "done", total, total)
    upload = None
    best = results[0].best("set") if results else None
    if opts.model_bytes and best is not None and latency is not None:
        upload = estimate_upload(opts.model_bytes, best, latency)
    version = client.version
    return ServerResult(
        endpoint=where,
        protocol=format_version(version) if version else None,
        max_name=client.max_name,
        latency_ms=None if latency is None else latency * 1000,
        devices=tuple(results),
        upload=upload,
    )


def _bench_device(
    conn: _Conn,
    where: str,
    dev: DeviceInfo,
    sizes: tuple[int, ...],
    notes: tuple[str, ...],
    opts: BenchOptions,
    step: Callable[[str], None],
) -> tuple[DeviceResult, float | None]:
    c = conn.client
    if not sizes:
        return DeviceResult(dev.index, dev.free, dev.total, None, (), notes), None
    doing = "ALLOC_BUFFER"
    try:
        free_before, total = conn.call(c.get_device_memory, dev.index)
        step(f"device {dev.index}: allocating {format_bytes(sizes[-1])}")
        ptr, got = conn.call(c.alloc_buffer, sizes[-1], dev.index)
    except (ProtocolError, OSError) as exc:
        raise _fail(where, doing, exc) from None
    if ptr == 0 or got < sizes[-1]:
        raise BenchError(
            f"{where}: device {dev.index} could not allocate {format_bytes(sizes[-1])} "
            f"(reports {format_bytes(dev.free)} free)",
            hint="use smaller --sizes, or free memory on the server",
        )
    samples: list[Sample] = []
    verified = False
    latency: float | None = None
    try:
        base = conn.call(c.buffer_get_base, ptr)
        tensor = RpcTensor.f32(sizes[-1] // 4, buffer=ptr, data=base, name=b"sdrpc-bench")
        data = memoryview(payload(sizes[-1]))
        out = memoryview(bytearray(sizes[-1]))
        tiny = memoryview(bytearray(4))
        doing = "the latency test"
        latency = _latency(conn, tensor, tiny)
        for n in sizes:
            reps = repeats_for(n, opts.repeat_budget)
            doing = f"SET_TENSOR of {format_bytes(n)}"
            step(f"device {dev.index}: upload {format_bytes(n)} x{reps}")
            samples.append(_timed(conn, "set", n, reps, tensor, data, out, tiny))
            doing = f"GET_TENSOR of {format_bytes(n)}"
            step(f"device {dev.index}: download {format_bytes(n)} x{reps}")
            samples.append(_timed(conn, "get", n, reps, tensor, data, out, tiny))
            if opts.verify:
                if out[:n].tobytes() != data[:n].tobytes():
                    raise BenchError(
                        f"{where}: the {format_bytes(n)} read back from device {dev.index} "
                        "differ from what was sent",
                        hint="the server or the link corrupts data; do not use it",
                    )
                verified = True
        doing = "FREE_BUFFER"
        conn.call(c.free_buffer, ptr)
        ptr = 0
        doing = "GET_DEVICE_MEMORY"
        free_after, _ = conn.call(c.get_device_memory, dev.index)
    except (ProtocolError, OSError) as exc:
        raise _fail(where, doing, exc) from None
    finally:
        if ptr:
            _release(conn, ptr)
    return (
        DeviceResult(dev.index, free_before, total, free_after, tuple(samples), notes, verified),
        latency,
    )


def _release(conn: _Conn, ptr: int) -> None:
    """Free the buffer on a failure path (Ctrl-C included)."""
    if conn.in_step:
        try:
            conn.call(conn.client.free_buffer, ptr)
            return
        except (TransportError, ProtocolError, OSError):
            pass
    # Half a request on the wire: a reset makes the server drop the connection,
    # and with it every buffer allocated on it.
    conn.client.close()


def _latency(conn: _Conn, tensor: RpcTensor, tiny: memoryview) -> float:
    times = []
    for _ in range(LATENCY_ROUNDS):
        t0 = time.perf_counter()
        conn.call(conn.client.get_tensor, tensor, 0, 4, tiny)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _timed(
    conn: _Conn,
    op: Op,
    n: int,
    reps: int,
    tensor: RpcTensor,
    data: memoryview,
    out: memoryview,
    tiny: memoryview,
) -> Sample:
    c = conn.client
    times = []
    src = data[:n]
    dst = out[:n]
    for _ in range(reps):
        t0 = time.perf_counter()
        if op == "set":
            conn.call(c.set_tensor, tensor, 0, src)
            conn.call(c.get_tensor, tensor, 0, 4, tiny)  # barrier: SET has no reply
        else:
            conn.call(c.get_tensor, tensor, 0, n, dst)
        times.append(time.perf_counter() - t0)
    return Sample(op, n, tuple(times))
