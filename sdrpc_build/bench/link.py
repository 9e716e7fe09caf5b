"""The sdrpc-bench measuring loop: time SET_TENSOR / GET_TENSOR against one server.

Per server: :func:`~sdrpc_build.protocol.probe.probe` (version, devices and
GGML_MAX_NAME, which a tensor upload must match or the server aborts), then one
connection that, per device, measures round-trip latency (a 4-byte GET_TENSOR),
allocates one buffer for the largest size that fits, times uploads and
downloads, reads the data back and compares it, and frees the buffer.

Timing: SET_TENSOR has no reply since protocol v2, so each timed upload ends
with a 4-byte GET_TENSOR (the barrier the native baseline in ``bench/`` uses
too); without it only the copy into the kernel's socket buffer would be timed.
Each size is repeated (see :func:`~sdrpc_build.bench.maths.repeats_for`) and the
fastest run is reported, with the median alongside.

Memory: the test data is never held whole. :class:`~.pattern.Pattern` makes it
one window (:data:`~.pattern.WINDOW` bytes) at a time in one reusable buffer; uploads send
window after window from it, downloads land in one reusable window and are
dropped (timed runs) or compared with the pattern window by window (one extra,
untimed download per size). A 256 MiB transfer needs two 4 MiB buffers.

Time (``timeout`` = T): every request gets T seconds plus T per MiB it moves
(a stalled or dripping server fails after about T), and each server gets at
most :data:`~.options.DEADLINE_FACTOR` x T in all (``BenchOptions.deadline_s``
overrides it). Past that the server is "too slow": :class:`~.failures.BenchError`
carries what was measured until then in ``partial``.

Cleanup on every path: when the connection is in step with the server (no
request half sent or half answered) the buffer is freed with FREE_BUFFER;
otherwise (Ctrl-C or a failure inside a transfer) the connection is reset,
and the server frees every buffer of a connection when it ends. After a normal
run the device's free memory is read again and compared with the value before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sdrpc_build.bench.failures import BenchError, failure, probe_or_fail
from sdrpc_build.bench.maths import (
    DeviceResult,
    Op,
    Sample,
    ServerResult,
    estimate_upload,
    repeats_for,
    schedule,
)
from sdrpc_build.bench.options import BenchOptions
from sdrpc_build.bench.pattern import WINDOW, Pattern
from sdrpc_build.errors import ProtocolError
from sdrpc_build.protocol.client import DeviceInfo, RpcClient
from sdrpc_build.protocol.endpoint import format_endpoint
from sdrpc_build.protocol.layouts import format_version
from sdrpc_build.protocol.probe import DEADLINE_FACTOR as PROBE_DEADLINE_FACTOR
from sdrpc_build.protocol.probe import MAX_DEVICES
from sdrpc_build.protocol.tensor import RpcTensor
from sdrpc_build.protocol.transport import TransportError
from sdrpc_build.units import format_size

__all__ = ["Progress", "bench_server", "bench_with_client"]

T = TypeVar("T")
# (endpoint, what is being done, steps done, steps in all)
Progress = Callable[[str, str, int, int], None]
LATENCY_ROUNDS = 20
RESERVE = 0  # bytes of free memory left untouched (the schedule's reserve)


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

    def stream(
        self, fn: Callable[..., Iterator[memoryview]], *args: object
    ) -> Iterator[memoryview]:
        """Like :meth:`call` for a streaming download: in step once fully consumed."""
        self.in_step = False
        yield from fn(*args)
        self.in_step = True


def bench_server(
    host: str, port: int, opts: BenchOptions, progress: Progress | None = None
) -> ServerResult:
    """Probe, then measure one server (every device, or ``opts.devices``), all within
    ``opts.server_deadline_s``."""
    start = time.monotonic()
    deadline = start + opts.server_deadline_s
    probe_deadline = min(deadline, start + PROBE_DEADLINE_FACTOR * opts.timeout)
    info = probe_or_fail(host, port, opts.timeout, probe_deadline)
    assert info.max_name is not None
    client = RpcClient(timeout=opts.timeout, max_name=info.max_name, deadline=deadline)
    where = format_endpoint(host, port)
    try:
        client.connect(host, port)
        client.hello()
    except ProtocolError as exc:
        client.close()
        raise failure(where, "HELLO", exc, opts.server_deadline_s) from None
    with client:
        return bench_with_client(client, opts, progress, devices=info.devices)


@dataclass
class _Run:
    """What one server's run has measured so far (for a partial result)."""

    where: str
    client: RpcClient
    devices: list[DeviceResult] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)  # the current device's
    latency: float | None = None

    def result(self, opts: BenchOptions, current: DeviceInfo | None = None) -> ServerResult:
        devices = list(self.devices)
        if current is not None and self.samples:
            devices.append(
                DeviceResult(current.index, current.free, current.total, None, tuple(self.samples))
            )
        upload = None
        best = devices[0].best("set") if devices else None
        if opts.model_bytes and best is not None and self.latency is not None:
            upload = estimate_upload(opts.model_bytes, best, self.latency)
        version = self.client.version
        return ServerResult(
            endpoint=self.where,
            protocol=format_version(version) if version else None,
            max_name=self.client.max_name,
            latency_ms=None if self.latency is None else self.latency * 1000,
            devices=tuple(devices),
            upload=upload,
        )


def bench_with_client(
    client: RpcClient,
    opts: BenchOptions,
    progress: Progress | None = None,
    devices: Sequence[DeviceInfo] | None = None,
) -> ServerResult:
    """Measure over an open, HELLO'd connection whose ``max_name`` is right.

    The connection's own ``deadline`` (if any) bounds the run; a :class:`BenchError`
    carries the results measured before a failure in ``partial``.
    """
    where = format_endpoint(client.host, client.port)
    conn = _Conn(client)
    limit = opts.server_deadline_s if client.deadline is not None else None
    try:
        if devices is None:
            count = min(conn.call(client.device_count), MAX_DEVICES)
            devices = [conn.call(client.device_info, i) for i in range(count)]
    except (ProtocolError, OSError) as exc:
        raise failure(where, "the device inventory", exc, limit) from None
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

    run = _Run(where, client)
    pattern = Pattern() if plans and any(p.sizes for _, p in plans) else None
    window = bytearray(WINDOW) if pattern is not None else bytearray()
    for dev, plan in plans:
        run.samples = []
        try:
            res = _bench_device(
                conn, run, dev, plan.sizes, plan.notes, opts, step, pattern, window, limit
            )
        except BenchError as exc:
            exc.partial = run.result(opts, dev)
            raise
        run.devices.append(res)
    if progress is not None:
        progress(where, "done", total, total)
    return run.result(opts)


def _bench_device(
    conn: _Conn,
    run: _Run,
    dev: DeviceInfo,
    sizes: tuple[int, ...],
    notes: tuple[str, ...],
    opts: BenchOptions,
    step: Callable[[str], None],
    pattern: Pattern | None,
    window: bytearray,
    limit: float | None,
) -> DeviceResult:
    c = conn.client
    where = run.where
    if not sizes or pattern is None:
        return DeviceResult(dev.index, dev.free, dev.total, None, (), notes)
    doing = "ALLOC_BUFFER"
    try:
        free_before, total = conn.call(c.get_device_memory, dev.index)
        step(f"device {dev.index}: allocating {format_size(sizes[-1])}")
        ptr, got = conn.call(c.alloc_buffer, sizes[-1], dev.index)
    except (ProtocolError, OSError) as exc:
        raise failure(where, doing, exc, limit) from None
    if ptr == 0 or got < sizes[-1]:
        raise BenchError(
            f"{where}: device {dev.index} could not allocate {format_size(sizes[-1])} "
            f"(reports {format_size(dev.free)} free)",
            hint="use smaller --sizes, or free memory on the server",
        )
    verified = False
    try:
        base = conn.call(c.buffer_get_base, ptr)
        tensor = RpcTensor.f32(sizes[-1] // 4, buffer=ptr, data=base, name=b"sdrpc-bench")
        tiny = memoryview(bytearray(4))
        doing = "the latency test"
        latency = _latency(conn, tensor, tiny)
        if run.latency is None:
            run.latency = latency
        for n in sizes:
            reps = repeats_for(n, opts.repeat_budget)
            doing = f"SET_TENSOR of {format_size(n)}"
            step(f"device {dev.index}: upload {format_size(n)} x{reps}")
            run.samples.append(_timed(conn, "set", n, reps, tensor, pattern, window, tiny))
            doing = f"GET_TENSOR of {format_size(n)}"
            step(f"device {dev.index}: download {format_size(n)} x{reps}")
            run.samples.append(_timed(conn, "get", n, reps, tensor, pattern, window, tiny))
            if opts.verify:
                doing = f"reading back {format_size(n)}"
                if not _matches(conn, tensor, n, pattern, window):
                    raise BenchError(
                        f"{where}: the {format_size(n)} read back from device {dev.index} "
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
        raise failure(where, doing, exc, limit) from None
    finally:
        if ptr:
            _release(conn, ptr)
    samples = tuple(run.samples)
    return DeviceResult(dev.index, free_before, total, free_after, samples, notes, verified)


def _release(conn: _Conn, ptr: int) -> None:
    """Free the buffer on a failure path (Ctrl-C included)."""
    if conn.in_step:
        try:
            conn.call(conn.client.free_buffer, ptr)
            return
        except (TransportError, ProtocolError, OSError):
            pass
    # Half a request on the wire (or no time left to send one): a reset makes the
    # server drop the connection, and with it every buffer allocated on it.
    conn.client.close()


def _latency(conn: _Conn, tensor: RpcTensor, tiny: memoryview) -> float:
    times = []
    for _ in range(LATENCY_ROUNDS):
        t0 = time.perf_counter()
        conn.call(conn.client.get_tensor, tensor, 0, 4, tiny)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _matches(conn: _Conn, tensor: RpcTensor, n: int, pattern: Pattern, window: bytearray) -> bool:
    """Download ``n`` bytes once more and compare them with the pattern, window by
    window (the whole reply is read even after a mismatch, to stay in step)."""
    same = True
    offset = 0
    for got in conn.stream(conn.client.get_tensor_stream, tensor, 0, n, window):
        k = len(got)
        want = pattern.chunk(offset, k)
        if same:  # bytearray comparison is a memcmp; memoryview's is per element
            same = (
                window == pattern.buffer
                if k == len(window) == len(pattern.buffer)
                else bytes(got) == bytes(want)
            )
        offset += k
    return same


def _timed(
    conn: _Conn,
    op: Op,
    n: int,
    reps: int,
    tensor: RpcTensor,
    pattern: Pattern,
    window: bytearray,
    tiny: memoryview,
) -> Sample:
    c = conn.client
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        if op == "set":
            conn.call(c.set_tensor_stream, tensor, 0, n, pattern.chunks(n))
            conn.call(c.get_tensor, tensor, 0, 4, tiny)  # barrier: SET has no reply
        else:
            for _chunk in conn.stream(c.get_tensor_stream, tensor, 0, n, window):
                pass
        times.append(time.perf_counter() - t0)
    return Sample(op, n, tuple(times))
