"""One ggml RPC session: :class:`RpcClient` (HELLO, then the commands, typed).

Requests are built by the codec's :class:`~sdrpc_build.protocol.codec.Dialect`
for the negotiated version and GGML_MAX_NAME; bytes move through a
:class:`~sdrpc_build.protocol.transport.Connection`, whose time limits apply to
every exchange (see :mod:`.transport`). Uploads and downloads can stream
through the caller's buffers without copies (:meth:`RpcClient.set_tensor_stream`,
:meth:`RpcClient.get_tensor_stream`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from sdrpc_build.errors import (
    Closed,
    CodecError,
    NotRpcServer,
    SizeMismatch,
    TransportError,
)
from sdrpc_build.protocol.codec import (
    Dialect,
    Request,
    decode_hello,
    decode_u32,
    decode_u64,
    decode_u64_pair,
    hello_request,
)
from sdrpc_build.protocol.layouts import HELLO_ORDER, HELLO_SHAPES, HelloShapeName, Version
from sdrpc_build.protocol.tensor import RpcTensor
from sdrpc_build.protocol.transport import BufferLike, Connection

__all__ = ["DeviceInfo", "NotRpcServer", "RpcClient"]


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    free: int
    total: int
    alignment: int | None = None
    max_size: int | None = None


def _tried(shapes: tuple[HelloShapeName, ...]) -> str:
    """`` in both shapes (24-byte caps and empty)`` (nothing for one shape)."""
    if len(shapes) < 2:
        return ""
    forms = [
        f"{HELLO_SHAPES[s].request}-byte {s}" if HELLO_SHAPES[s].request else s for s in shapes
    ]
    many = "both" if len(shapes) == 2 else f"all {len(shapes)}"
    return f" in {many} shapes ({' and '.join(forms)})"


class RpcClient(Connection):
    """One ggml RPC session: ``with RpcClient(timeout=3) as c: c.connect(h, p); c.hello()``.

    ``deadline`` (monotonic seconds, optional) bounds every operation on it; see
    :mod:`.transport` for the per-exchange limits.
    """

    def __init__(
        self, *, timeout: float = 3.0, max_name: int = 64, deadline: float | None = None
    ) -> None:
        super().__init__(timeout=timeout, deadline=deadline)
        self.max_name = max_name
        self.dialect: Dialect | None = None
        self.hello_shape: HelloShapeName | None = None

    def __enter__(self) -> RpcClient:
        return self

    @property
    def version(self) -> Version | None:
        return self.dialect.version if self.dialect else None

    def use_max_name(self, max_name: int) -> None:
        """Pack tensors for a server built with ``GGML_MAX_NAME = max_name``."""
        self.max_name = max_name
        if self.dialect is not None:
            self.dialect = Dialect(self.dialect.version, max_name)

    def _d(self) -> Dialect:
        if self.dialect is None:
            raise TransportError("HELLO has not been exchanged yet")
        return self.dialect

    def _exchange(self, req: Request, what: str) -> bytes:
        """Send ``req``; return its reply payload (``b""`` when it has none)."""
        return self._exchange_many([(req, what)])[0]

    def _exchange_many(self, reqs: list[tuple[Request, str]]) -> list[bytes]:
        """Pipeline requests in one send, then read their replies in order."""
        wire = b"".join(r.wire for r, _ in reqs)
        until = self.start(len(reqs), len(wire) + sum(r.reply_bytes for r, _ in reqs))
        self.send(until, wire)
        out = [
            b"" if r.reply_size is None else self.read_reply(r.reply_size, what, until)
            for r, what in reqs
        ]
        self.done()
        return out

    # -------------------------------------------------------------- handshake
    def hello(self, shape: HelloShapeName | Literal["auto"] = "auto") -> Version:
        """HELLO; ``auto`` tries the shapes of :data:`~.layouts.HELLO_ORDER` (the 24-byte
        caps form, then the empty v1-v3 form), each on a new connection after the
        previous one was closed. Raises :class:`NotRpcServer` when none is answered
        with a HELLO reply."""
        shapes = HELLO_ORDER if shape == "auto" else (shape,)
        for i, s in enumerate(shapes):
            try:
                if i or not self.connected:
                    self.connect(self.host, self.port)
                reply = self._exchange(hello_request(s), f"{s} HELLO reply")
            except Closed as exc:
                if exc.received:  # cut off mid-reply: a fault, not a refusal
                    raise
                if i + 1 < len(shapes):
                    continue
                raise NotRpcServer(
                    f"{self.where} closed the connection on HELLO{_tried(shapes)}: "
                    "not a ggml RPC server, or one older than protocol v1"
                ) from None
            except SizeMismatch as exc:
                raise NotRpcServer(
                    f"{self.where} answered HELLO with something else "
                    f"(first bytes {exc.head!r}): not a ggml RPC server"
                ) from None
            hello = decode_hello(reply)
            self.hello_shape = s
            self.dialect = Dialect(hello.version, self.max_name)
            return hello.version
        raise AssertionError("unreachable")  # pragma: no cover

    # -------------------------------------------------------------- commands
    def device_count(self) -> int:
        d = self._d()
        if not d.has_devices:
            return 1
        return decode_u32(self._exchange(d.device_count(), "DEVICE_COUNT reply"))

    def get_alignment(self, device: int = 0) -> int:
        return decode_u64(self._exchange(self._d().get_alignment(device), "GET_ALIGNMENT reply"))

    def get_max_size(self, device: int = 0) -> int:
        return decode_u64(self._exchange(self._d().get_max_size(device), "GET_MAX_SIZE reply"))

    def get_device_memory(self, device: int = 0) -> tuple[int, int]:
        """``(free, total)`` bytes of one device."""
        req = self._d().get_device_memory(device)
        return decode_u64_pair(self._exchange(req, "GET_DEVICE_MEMORY reply"))

    def get_alloc_size(self, tensor: RpcTensor, device: int = 0) -> int:
        req = self._d().get_alloc_size(tensor, device)
        return decode_u64(self._exchange(req, "GET_ALLOC_SIZE reply"))

    def device_info(self, device: int = 0) -> DeviceInfo:
        """Memory, alignment and max buffer size of one device (one round trip)."""
        d = self._d()
        mem, align, max_size = self._exchange_many(
            [
                (d.get_device_memory(device), "GET_DEVICE_MEMORY reply"),
                (d.get_alignment(device), "GET_ALIGNMENT reply"),
                (d.get_max_size(device), "GET_MAX_SIZE reply"),
            ]
        )
        free, total = decode_u64_pair(mem)
        return DeviceInfo(device, free, total, decode_u64(align), decode_u64(max_size))

    def alloc_buffer(self, size: int, device: int = 0) -> tuple[int, int]:
        """``(remote_ptr, remote_size)``; both 0 when the server could not allocate."""
        req = self._d().alloc_buffer(size, device)
        return decode_u64_pair(self._exchange(req, "ALLOC_BUFFER reply"))

    def buffer_get_base(self, remote_ptr: int) -> int:
        req = self._d().buffer_get_base(remote_ptr)
        return decode_u64(self._exchange(req, "BUFFER_GET_BASE reply"))

    def free_buffer(self, remote_ptr: int) -> None:
        self._exchange(self._d().free_buffer(remote_ptr), "FREE_BUFFER reply")

    def buffer_clear(self, remote_ptr: int, value: int = 0) -> None:
        self._exchange(self._d().buffer_clear(remote_ptr, value), "BUFFER_CLEAR reply")

    def set_tensor(self, tensor: RpcTensor, offset: int, data: BufferLike) -> None:
        """Upload ``data`` without copying it (header and data go out back to back)."""
        view = memoryview(data).cast("B")
        self.set_tensor_stream(tensor, offset, len(view), (view,))

    def set_tensor_stream(
        self, tensor: RpcTensor, offset: int, size: int, chunks: Iterable[BufferLike]
    ) -> None:
        """Upload ``size`` bytes taken from ``chunks`` as they come (nothing is joined:
        a caller may hand out one reusable buffer, refilled between chunks). The
        chunks must add up to exactly ``size`` bytes."""
        req = self._d().set_tensor_header(tensor, offset, size)
        until = self.start(1, len(req.wire) + size + req.reply_bytes)
        self.send(until, req.wire)
        sent = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if sent + len(view) > size:
                raise CodecError(f"SET_TENSOR data longer than the declared {size} bytes")
            self.send(until, view)
            sent += len(view)
        if sent != size:
            raise CodecError(f"SET_TENSOR data of {sent} bytes, {size} declared")
        if req.reply_size is not None:
            self.read_reply(req.reply_size, "SET_TENSOR reply", until)
        self.done()

    def get_tensor(
        self, tensor: RpcTensor, offset: int, size: int, out: bytearray | memoryview | None = None
    ) -> memoryview:
        """Download ``size`` bytes straight into ``out`` (allocated if not given)."""
        target = memoryview(out if out is not None else bytearray(size)).cast("B")
        if len(target) < size or target.readonly:
            raise CodecError(f"GET_TENSOR needs a writable buffer of {size} bytes")
        for _ in self.get_tensor_stream(tensor, offset, size, target[:size]):
            pass
        return target[:size]

    def get_tensor_stream(
        self, tensor: RpcTensor, offset: int, size: int, window: bytearray | memoryview
    ) -> Iterator[memoryview]:
        """Download ``size`` bytes through ``window``: yields ``window[:k]`` each time it
        holds the next ``k`` bytes (overwritten by the next step, so use or copy it
        first). The time the caller spends between steps counts against the limits;
        a caller that stops early leaves the connection out of step (closing it
        then resets it)."""
        req = self._d().get_tensor(tensor, offset, size)
        win = memoryview(window).cast("B")
        if win.readonly or (size and not win):
            raise CodecError("GET_TENSOR needs a writable, non-empty window")
        until = self.start(1, len(req.wire) + req.reply_bytes)
        self.send(until, req.wire)
        self.read_header(size, "GET_TENSOR reply", until)
        got = 0
        while got < size:
            k = min(len(win), size - got)
            self.read_body(win[:k], "GET_TENSOR data", until)
            got += k
            yield win[:k]
        self.done()
