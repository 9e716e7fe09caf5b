"""One ggml RPC connection: :class:`RpcClient`, the socket code behind :mod:`.client`.

Every connect, send and read has a timeout. Small replies must complete within
``timeout`` seconds per exchange (so a slow drip cannot stall us); bulk tensor
transfers use ``timeout`` as an idle timeout per socket call. A reply's declared
size is compared with the size the request calls for before any byte of the body
is read, so nothing a peer declares is ever allocated.

rpc-server has no SIGPIPE protection: if a client hangs up while a request is
still unanswered, the server later writes the reply into a dead socket and is
killed. So a connection with an unanswered request is closed abortively (RST,
``SO_LINGER`` 0), which makes the server's read fail instead.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Union

from sdrpc_build.errors import ProtocolError
from sdrpc_build.protocol.codec import (
    HEADER,
    CodecError,
    Dialect,
    Request,
    SizeMismatch,
    Version,
    decode_hello,
    decode_u32,
    decode_u64,
    decode_u64_pair,
    hello_request,
)
from sdrpc_build.protocol.tensor import RpcTensor

__all__ = [
    "BufferLike",
    "Closed",
    "DeviceInfo",
    "NotRpcServer",
    "RpcClient",
    "Timeout",
    "TransportError",
    "Unreachable",
    "format_endpoint",
]

_LINGER_RST = struct.pack("ii", 1, 0)


class TransportError(ProtocolError):
    """The connection failed (as opposed to bytes that make no sense)."""


class Unreachable(TransportError):
    """No TCP connection could be made (refused, unresolvable, timed out)."""


class Timeout(TransportError):
    """No (complete) reply in time; ``received`` bytes of it had arrived."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class Closed(TransportError):
    """The peer closed or reset the connection; ``received`` bytes had arrived."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class NotRpcServer(ProtocolError):
    """The peer does not speak (HELLO-era) ggml RPC."""


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    free: int
    total: int
    alignment: int | None = None
    max_size: int | None = None


BufferLike = Union[bytes, bytearray, memoryview]


class RpcClient:
    """One ggml RPC session: ``with RpcClient(timeout=3) as c: c.connect(h, p); c.hello()``."""

    def __init__(self, *, timeout: float = 3.0, max_name: int = 64) -> None:
        self.timeout = timeout
        self.max_name = max_name
        self.host = ""
        self.port = 0
        self.dialect: Dialect | None = None
        self.hello_shape: Literal["caps", "empty"] | None = None
        self._sock: socket.socket | None = None
        self._outstanding = False  # a request was sent and its reply not fully read
        self._hdr = bytearray(HEADER)
        self._small = bytearray(64)

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> RpcClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close; abortively (RST) when a request is still unanswered (see module doc)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if self._outstanding:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        finally:
            self._outstanding = False
            sock.close()

    def connect(self, host: str, port: int, timeout: float | None = None) -> RpcClient:
        """Open the TCP connection (raises :class:`Unreachable`)."""
        if timeout is not None:
            self.timeout = timeout
        self.close()
        self.host, self.port = host, port
        where = format_endpoint(host, port)
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except socket.gaierror as exc:
            raise Unreachable(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
        except (ConnectionResetError, ConnectionAbortedError):
            raise Closed(f"{where} accepted and at once reset the connection") from None
        except ConnectionRefusedError:
            raise Unreachable(f"connection refused by {where} (nothing listens there)") from None
        except TimeoutError:
            raise Unreachable(f"connecting to {where} timed out after {self.timeout:g} s") from None
        except (OSError, OverflowError, ValueError) as exc:
            raise Unreachable(f"cannot connect to {where}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        return self

    @property
    def version(self) -> Version | None:
        return self.dialect.version if self.dialect else None

    def use_max_name(self, max_name: int) -> None:
        """Pack tensors for a server built with ``GGML_MAX_NAME = max_name``."""
        self.max_name = max_name
        if self.dialect is not None:
            self.dialect = Dialect(self.dialect.version, max_name)

    # -------------------------------------------------------------- raw I/O
    def _need_sock(self) -> socket.socket:
        if self._sock is None:
            raise TransportError("not connected")
        return self._sock

    def _send(self, *parts: BufferLike) -> None:
        sock = self._need_sock()
        sock.settimeout(self.timeout)
        try:
            for part in parts:
                view = memoryview(part).cast("B")
                while view:  # each send() call gets its own idle timeout
                    n = sock.send(view)
                    view = view[n:]
        except TimeoutError:
            raise Timeout(f"sending to {self._where()} stalled for {self.timeout:g} s") from None
        except OSError as exc:
            raise Closed(f"{self._where()} closed the connection while we sent ({exc})") from None

    def _recv_into(
        self, view: memoryview, what: str, deadline: float | None, header: int | None = None
    ) -> None:
        """Fill ``view`` exactly; ``deadline`` bounds the total time (else idle timeout).

        With ``header``, ``view`` starts with a reply's u64 size, which is checked
        against ``header`` as soon as its 8 bytes are in.
        """
        sock = self._need_sock()
        got, want = 0, len(view)
        check = header is not None
        try:
            while got < want:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(left)
                else:
                    sock.settimeout(self.timeout)
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise Closed(self._closed_msg(what, got), got)
                got += n
                if check and got >= HEADER:
                    check = False
                    declared = int.from_bytes(view[:HEADER], "little")
                    if declared != header:
                        raise SizeMismatch(what, want - HEADER, declared, bytes(view[:16]))
        except TimeoutError:
            raise Timeout(
                f"no complete {what} from {self._where()} within {self.timeout:g} s "
                f"(got {got} bytes)",
                got,
            ) from None
        except Closed:
            raise
        except OSError as exc:
            raise Closed(self._closed_msg(what, got) + f" ({exc.strerror or exc})", got) from None

    def _closed_msg(self, what: str, got: int) -> str:
        if got:
            return f"{self._where()} closed the connection in the middle of the {what}"
        return f"{self._where()} closed the connection instead of sending the {what}"

    def _where(self) -> str:
        return format_endpoint(self.host, self.port)

    def _read_header(self, expected: int, what: str, deadline: float | None) -> None:
        self._recv_into(memoryview(self._hdr), what, deadline)
        declared = int.from_bytes(self._hdr, "little")
        if declared != expected:
            raise SizeMismatch(what, expected, declared, bytes(self._hdr))

    def _exchange(self, req: Request, what: str) -> bytes:
        """Send ``req``; return its reply payload (``b""`` when it has none)."""
        return self._exchange_many([(req, what)])[0]

    def _exchange_many(self, reqs: list[tuple[Request, str]]) -> list[bytes]:
        """Pipeline requests in one send, then read their replies in order."""
        deadline = time.monotonic() + self.timeout
        self._outstanding = True
        self._send(b"".join(r.wire for r, _ in reqs))
        out: list[bytes] = []
        for req, what in reqs:
            size = req.reply_size
            if size is None:
                out.append(b"")
            elif size + HEADER <= len(self._small):  # header and body in one recv
                view = memoryview(self._small)[: HEADER + size]
                self._recv_into(view, what, deadline, header=size)
                out.append(bytes(view[HEADER:]))
            else:
                self._read_header(size, what, deadline)
                buf = bytearray(size)
                self._recv_into(memoryview(buf), what, deadline)
                out.append(bytes(buf))
        self._outstanding = False
        return out

    def _d(self) -> Dialect:
        if self.dialect is None:
            raise TransportError("HELLO has not been exchanged yet")
        return self.dialect

    # -------------------------------------------------------------- handshake
    def hello(self, shape: Literal["caps", "empty", "auto"] = "auto") -> Version:
        """HELLO; ``auto`` sends the 24-byte caps form, and on a closed connection
        reconnects and sends the empty (v1-v3) form. Raises :class:`NotRpcServer`
        when neither is answered with a HELLO reply."""
        shapes: tuple[Literal["caps", "empty"], ...] = (
            ("caps", "empty") if shape == "auto" else (shape,)
        )
        for i, s in enumerate(shapes):
            try:
                if i or self._sock is None:
                    self.connect(self.host, self.port)
                reply = self._exchange(hello_request(s == "caps"), f"{s} HELLO reply")
            except Closed as exc:
                if exc.received:  # cut off mid-reply: a fault, not a refusal
                    raise
                if i + 1 < len(shapes):
                    continue
                raise NotRpcServer(
                    f"{self._where()} closed the connection on HELLO"
                    + (" in both shapes (24-byte caps and empty)" if len(shapes) > 1 else "")
                    + ": not a ggml RPC server, or one older than protocol v1"
                ) from None
            except SizeMismatch as exc:
                raise NotRpcServer(
                    f"{self._where()} answered HELLO with something else "
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
        req = self._d().set_tensor_header(tensor, offset, len(view))
        self._outstanding = True
        self._send(req.wire, view)
        if req.reply_size is not None:
            self._read_header(0, "SET_TENSOR reply", time.monotonic() + self.timeout)
        self._outstanding = False

    def get_tensor(
        self, tensor: RpcTensor, offset: int, size: int, out: bytearray | memoryview | None = None
    ) -> memoryview:
        """Download ``size`` bytes straight into ``out`` (allocated if not given)."""
        req = self._d().get_tensor(tensor, offset, size)
        target = memoryview(out if out is not None else bytearray(size)).cast("B")
        if len(target) < size or target.readonly:
            raise CodecError(f"GET_TENSOR needs a writable buffer of {size} bytes")
        self._outstanding = True
        self._send(req.wire)
        self._read_header(size, "GET_TENSOR reply", time.monotonic() + self.timeout)
        self._recv_into(target[:size], "GET_TENSOR data", None)
        self._outstanding = False
        return target[:size]
