"""One ggml RPC connection: :class:`RpcClient`, the socket code behind :mod:`.client`.

Time limits (``timeout`` = T seconds):

* every exchange (request sent, reply read) must complete within
  ``T x (requests + MiB moved)``: T per request, plus T per MiB of data, so a
  peer that drips bytes cannot stall us, while a bulk transfer may take as
  long as a link of 1 MiB per T needs; see :meth:`RpcClient.exchange_limit`;
* no single socket call waits more than T (a stalled transfer fails after T);
* ``deadline`` (a :func:`time.monotonic` value), when set, bounds everything
  on the connection: every connect, send and read waits at most until then,
  and past it :class:`TooSlow` is raised.

A reply's declared size is compared with the size the request calls for before
any byte of the body is read, so nothing a peer declares is ever allocated.

rpc-server has no SIGPIPE protection: if a client hangs up while a request is
still unanswered, the server later writes the reply into a dead socket and is
killed. So a connection with an unanswered request is closed abortively (RST,
``SO_LINGER`` 0), which makes the server's read fail instead.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Union

from sdrpc_build.errors import (
    Closed,
    CodecError,
    NotRpcServer,
    SizeMismatch,
    Timeout,
    TooSlow,
    TransportError,
    Unreachable,
)
from sdrpc_build.protocol.codec import (
    HEADER,
    Dialect,
    Request,
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
    "TooSlow",
    "TransportError",
    "Unreachable",
    "format_endpoint",
    "sniff",
]

_LINGER_RST = struct.pack("ii", 1, 0)
MIB = 1 << 20
_SLACK = 0.005  # seconds: a socket timeout fires at, or a hair before, the time asked for
# Sent on a second connection to a peer that ignored HELLO: any byte back proves
# it is not rpc-server (which never answers a first byte other than HELLO).
SNIFF_REQUEST = b"GET / HTTP/1.0\r\n\r\n"


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _left(until: float) -> float:
    return until - time.monotonic()


def _resolve(host: str, port: int, wait: float) -> list[tuple[int, str]]:
    """``(family, address)`` pairs for ``host``. A name is resolved in a daemon thread,
    so a slow resolver cannot hold us longer than ``wait`` (raises TimeoutError)."""
    try:
        ip = ipaddress.ip_address(host)
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, host)]
    except ValueError:
        pass
    box: list[object] = []

    def work() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            box.append(exc)

    threading.Thread(target=work, name=f"resolve {host}", daemon=True).start()
    deadline = time.monotonic() + wait
    while not box:  # poll: Thread.join(timeout) is not interruptible on every platform
        if _left(deadline) <= 0:
            raise TimeoutError
        time.sleep(min(0.01, max(_left(deadline), 0)))
    found = box[0]
    if isinstance(found, BaseException):
        raise found
    assert isinstance(found, list)
    return [(int(fam), str(addr[0])) for fam, _, _, _, addr in found]


def _open(host: str, port: int, until: float) -> socket.socket:
    """A connected socket to ``host:port`` by ``until``: every address in turn."""
    last: OSError = TimeoutError()
    for family, addr in _resolve(host, port, _left(until)):
        left = _left(until)
        if left <= 0:
            raise TimeoutError
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(left)
            sock.connect((addr, port))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last


def sniff(host: str, port: int, *, timeout: float, deadline: float | None = None) -> bytes | None:
    """Ask a peer that ignored HELLO to say anything: on a new connection send
    :data:`SNIFF_REQUEST` and return the first bytes it sends back, ``b""`` when it
    closes without a byte, ``None`` when nothing came within ``timeout`` (or by
    ``deadline``). The connection is always reset, so an rpc-server that reaches
    it later (a busy one queues it) only sees a failed read."""
    until = time.monotonic() + timeout
    if deadline is not None:
        until = min(until, deadline)
    if _left(until) <= 0:
        return None
    try:
        sock = _open(host, port, until)
    except (OSError, OverflowError, ValueError, UnicodeError):
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        sock.settimeout(max(_left(until), 0.001))
        sock.sendall(SNIFF_REQUEST)
        sock.settimeout(max(_left(until), 0.001))
        return sock.recv(64)
    except TimeoutError:
        return None
    except OSError:
        return b""
    finally:
        sock.close()


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    free: int
    total: int
    alignment: int | None = None
    max_size: int | None = None


BufferLike = Union[bytes, bytearray, memoryview]


class RpcClient:
    """One ggml RPC session: ``with RpcClient(timeout=3) as c: c.connect(h, p); c.hello()``.

    ``deadline`` (monotonic seconds, optional) bounds every operation on it; see
    the module doc for the per-exchange limits.
    """

    def __init__(
        self, *, timeout: float = 3.0, max_name: int = 64, deadline: float | None = None
    ) -> None:
        self.timeout = timeout
        self.max_name = max_name
        self.deadline = deadline
        self.host = ""
        self.port = 0
        self.dialect: Dialect | None = None
        self.hello_shape: Literal["caps", "empty"] | None = None
        self._sock: socket.socket | None = None
        self._outstanding = False  # a request was sent and its reply not fully read
        self._limit = timeout  # seconds allowed for the current exchange (for messages)
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
        wait = self.timeout
        if self.deadline is not None:
            wait = min(wait, _left(self.deadline))
            if wait <= 0:
                raise TooSlow(f"{where}: the deadline passed before connecting")
        try:
            sock = _open(host, port, time.monotonic() + wait)
        except socket.gaierror as exc:
            raise Unreachable(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
        except (ConnectionResetError, ConnectionAbortedError):
            raise Closed(f"{where} accepted and at once reset the connection") from None
        except ConnectionRefusedError:
            raise Unreachable(f"connection refused by {where} (nothing listens there)") from None
        except TimeoutError:
            if self._past_deadline():
                raise TooSlow(f"connecting to {where}: the deadline passed") from None
            raise Unreachable(f"connecting to {where} timed out after {wait:.3g} s") from None
        except (OSError, OverflowError, ValueError, UnicodeError) as exc:
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

    def exchange_limit(self, requests: int = 1, nbytes: int = 0) -> float:
        """Seconds allowed for ``requests`` pipelined requests moving ``nbytes`` in all:
        ``timeout`` per request plus ``timeout`` per MiB."""
        return self.timeout * (requests + nbytes / MIB)

    def _until(self, requests: int = 1, nbytes: int = 0) -> float:
        self._limit = self.exchange_limit(requests, nbytes)
        return time.monotonic() + self._limit

    def _past_deadline(self) -> bool:
        return self.deadline is not None and _left(self.deadline) <= _SLACK

    def _wait(self, sock: socket.socket, until: float) -> None:
        """Arm the socket for one call: at most ``timeout``, and never past ``until``
        or the deadline (raises :class:`TimeoutError` when no time is left)."""
        left = _left(until)
        if self.deadline is not None:
            left = min(left, _left(self.deadline))
        if left <= 0:
            raise TimeoutError
        sock.settimeout(min(self.timeout, left))

    def _timed_out(self, doing: str, got: int, until: float) -> Timeout:
        """The right :class:`Timeout` for a wait that ran out while ``doing``."""
        where = self._where()
        if self._past_deadline():
            return TooSlow(
                f"{doing} {where} was not done when the deadline passed (got {got} bytes)", got
            )
        if _left(until) <= _SLACK:
            return Timeout(
                f"{doing} {where} did not complete within {self._limit:.3g} s (got {got} bytes)",
                got,
            )
        return Timeout(
            f"{doing} {where} stalled: nothing moved for {self.timeout:g} s (got {got} bytes)",
            got,
            stalled=True,
        )

    def _send(self, until: float, *parts: BufferLike) -> None:
        sock = self._need_sock()
        sent = 0
        try:
            for part in parts:
                view = memoryview(part).cast("B")
                while view:
                    self._wait(sock, until)
                    n = sock.send(view)
                    view = view[n:]
                    sent += n
        except TimeoutError:
            raise self._timed_out("sending to", sent, until) from None
        except OSError as exc:
            raise Closed(f"{self._where()} closed the connection while we sent ({exc})") from None

    def _recv_into(
        self, view: memoryview, what: str, until: float, header: int | None = None
    ) -> None:
        """Fill ``view`` exactly, by ``until`` (and the deadline).

        With ``header``, ``view`` starts with a reply's u64 size, which is checked
        against ``header`` as soon as its 8 bytes are in.
        """
        sock = self._need_sock()
        got, want = 0, len(view)
        check = header is not None
        try:
            while got < want:
                self._wait(sock, until)
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
            raise self._timed_out(f"the {what} from", got, until) from None
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

    def _read_header(self, expected: int, what: str, until: float) -> None:
        self._recv_into(memoryview(self._hdr), what, until)
        declared = int.from_bytes(self._hdr, "little")
        if declared != expected:
            raise SizeMismatch(what, expected, declared, bytes(self._hdr))

    def _exchange(self, req: Request, what: str) -> bytes:
        """Send ``req``; return its reply payload (``b""`` when it has none)."""
        return self._exchange_many([(req, what)])[0]

    def _exchange_many(self, reqs: list[tuple[Request, str]]) -> list[bytes]:
        """Pipeline requests in one send, then read their replies in order."""
        wire = b"".join(r.wire for r, _ in reqs)
        replies = sum(HEADER + r.reply_size for r, _ in reqs if r.reply_size is not None)
        until = self._until(len(reqs), len(wire) + replies)
        self._outstanding = True
        self._send(until, wire)
        out: list[bytes] = []
        for req, what in reqs:
            size = req.reply_size
            if size is None:
                out.append(b"")
            elif size + HEADER <= len(self._small):  # header and body in one recv
                view = memoryview(self._small)[: HEADER + size]
                self._recv_into(view, what, until, header=size)
                out.append(bytes(view[HEADER:]))
            else:
                self._read_header(size, what, until)
                buf = bytearray(size)
                self._recv_into(memoryview(buf), what, until)
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
        self.set_tensor_stream(tensor, offset, len(view), (view,))

    def set_tensor_stream(
        self, tensor: RpcTensor, offset: int, size: int, chunks: Iterable[BufferLike]
    ) -> None:
        """Upload ``size`` bytes taken from ``chunks`` as they come (nothing is joined:
        a caller may hand out one reusable buffer, refilled between chunks). The
        chunks must add up to exactly ``size`` bytes."""
        req = self._d().set_tensor_header(tensor, offset, size)
        until = self._until(1, len(req.wire) + size)
        self._outstanding = True
        self._send(until, req.wire)
        sent = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if sent + len(view) > size:
                raise CodecError(f"SET_TENSOR data longer than the declared {size} bytes")
            self._send(until, view)
            sent += len(view)
        if sent != size:
            raise CodecError(f"SET_TENSOR data of {sent} bytes, {size} declared")
        if req.reply_size is not None:
            self._read_header(0, "SET_TENSOR reply", until)
        self._outstanding = False

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
        until = self._until(1, len(req.wire) + HEADER + size)
        self._outstanding = True
        self._send(until, req.wire)
        self._read_header(size, "GET_TENSOR reply", until)
        got = 0
        while got < size:
            k = min(len(win), size - got)
            self._recv_into(win[:k], "GET_TENSOR data", until)
            got += k
            yield win[:k]
        self._outstanding = False
