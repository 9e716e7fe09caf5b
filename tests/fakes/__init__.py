"""Misbehaving (and well-behaved fake) ggml RPC servers on 127.0.0.1, for tests only.

Each fake is a context manager running one accept loop in a daemon thread:

    with FakeServer(garbage) as port:
        probe("127.0.0.1", port)

Handlers get the accepted socket and the server's stop event. Everything a fake
does is independent of sdrpc's codec (raw ``struct``; the server half of the
framing is :mod:`fakes.wire`), so tests do not check the codec against itself.
"""

from __future__ import annotations

import contextlib
import http.server as http_server
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from fakes.wire import RequestReader, encode_reply

__all__ = [
    "FakeRpc",
    "FakeServer",
    "absurd_size",
    "close_mid_reply",
    "garbage",
    "hang",
    "http",
    "real_http_server",
    "reset_on_connect",
    "slow_drip",
]

Handler = Callable[[socket.socket, threading.Event], None]

V7_HELLO = encode_reply(bytes([7, 0, 0, 0]) + bytes(24))
_NO_REPLY = b"no reply"  # a sentinel (compared by identity)


class FakeServer:
    """Listens on 127.0.0.1:<free port>; serves connections one at a time."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.stop = threading.Event()
        self.connections = 0
        self._ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", 0))
        self._ls.listen(4)
        self._ls.settimeout(0.05)
        self.port = int(self._ls.getsockname()[1])
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # like rpc-server
                with contextlib.suppress(OSError):
                    self.handler(conn, self.stop)

    def __enter__(self) -> int:
        self._thread.start()
        return self.port

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop.set()
        self._thread.join(timeout=10)
        self._ls.close()


def garbage(conn: socket.socket, stop: threading.Event) -> None:
    conn.recv(4096)
    conn.sendall(bytes(range(7, 250)) * 3)


def hang(conn: socket.socket, stop: threading.Event) -> None:
    """Accepts and never answers (until the test ends)."""
    stop.wait(30)


def close_mid_reply(conn: socket.socket, stop: threading.Event) -> None:
    conn.recv(4096)
    conn.sendall(V7_HELLO[:13])


def slow_drip(conn: socket.socket, stop: threading.Event) -> None:
    """A correct v7 HELLO reply, one byte every 0.2 s."""
    conn.recv(4096)
    for b in V7_HELLO:
        if stop.wait(0.2):
            return
        conn.sendall(bytes([b]))
    stop.wait(30)


def absurd_size(conn: socket.socket, stop: threading.Event) -> None:
    """Declares a 2**63-byte reply, then sends a few bytes and waits."""
    conn.recv(4096)
    conn.sendall(struct.pack("<Q", 1 << 63) + b"\x07\x00\x00")
    stop.wait(30)


def http(conn: socket.socket, stop: threading.Event) -> None:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def reset_on_connect(conn: socket.socket, stop: threading.Event) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _QuietHandler(http_server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http_server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that resets the connection is expected here


@contextlib.contextmanager
def real_http_server() -> Iterator[int]:
    """The standard library's HTTP server on 127.0.0.1 (a real, non-ggml service).

    Like most HTTP servers it says nothing until it has read a request line, so
    ggml's binary HELLO gets no answer at all.
    """
    server = _QuietServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class FakeRpc:
    """A well-behaved fake ggml RPC server: any version, devices, GGML_MAX_NAME.

    Reads whole requests (:mod:`fakes.wire`), checks their sizes like rpc-server
    does and hangs up on a mismatch.
    ``trailing`` bytes are appended after the HELLO reply (protocol abuse).
    Tensor commands (ALLOC_BUFFER, BUFFER_GET_BASE, FREE_BUFFER, SET_TENSOR,
    GET_TENSOR) work on one flat memory; ``drip`` sends GET_TENSOR data one
    byte every ``drip`` seconds (a server that never stalls, but crawls).
    """

    version: tuple[int, int, int] = (7, 0, 0)
    max_name: int = 64
    devices: list[tuple[int, int]] = field(default_factory=lambda: [(1 << 30, 2 << 30)])
    device_count: int | None = None  # override what DEVICE_COUNT claims
    trailing: bytes = b""
    delay: float = 0.0  # seconds before every reply (simulated network latency)
    alignment: int = 32
    drip: float = 0.0
    log: list[int] = field(default_factory=list)
    memory: bytearray = field(default_factory=bytearray)

    def __call__(self, conn: socket.socket, stop: threading.Event) -> None:
        caps = self.version >= (4, 0, 0)
        requests = RequestReader(conn)
        hello = requests.next()
        if hello is None or hello[0] != 14 or len(hello[1]) != (24 if caps else 0):
            return
        major, minor, patch = self.version
        body = bytes([major, minor, patch]) + (bytes(25) if caps else b"")
        time.sleep(self.delay)
        conn.sendall(encode_reply(body) + self.trailing)
        while not stop.is_set():
            request = requests.next()
            if request is None:
                return
            cmd, payload = request
            self.log.append(cmd)
            if cmd in (0, 3, 4, 6, 8):
                reply = self._tensor_cmd(cmd, payload)
            else:
                reply = self._answer(cmd, payload)
            if reply is None:
                return
            if reply is _NO_REPLY:
                continue
            time.sleep(self.delay)
            frame = encode_reply(reply)
            if cmd == 8 and self.drip:
                conn.sendall(frame[:8])
                for b in frame[8:]:
                    if stop.wait(self.drip):
                        return
                    conn.sendall(bytes([b]))
                continue
            conn.sendall(frame)

    _BASE = 0x7F0000000000

    def _tensor_cmd(self, cmd: int, payload: bytes) -> bytes | None:
        """ALLOC_BUFFER, BUFFER_GET_BASE, FREE_BUFFER, SET_TENSOR, GET_TENSOR."""
        t = 232 + self.max_name
        v7 = self.version >= (7, 0, 0)
        if cmd == 0:  # u32 dev, u64 size
            (n,) = struct.unpack_from("<Q", payload, 4 if self.version >= (3, 0, 0) else 0)
            return struct.pack("<QQ", 0x1000, n)
        if cmd == 3:
            return struct.pack("<Q", self._BASE)
        if cmd == 4:
            return _NO_REPLY if self.version >= (6, 0, 0) else b""
        (data_ptr,) = struct.unpack_from("<Q", payload, 220)
        if cmd == 6:  # tensor, [u8 cache flag (v7)], u64 offset, data
            at = t + (1 if v7 else 0)
            (offset,) = struct.unpack_from("<Q", payload, at)
            data = payload[at + 8 :]
            start = data_ptr - self._BASE + offset
            if len(self.memory) < start + len(data):
                self.memory.extend(bytes(start + len(data) - len(self.memory)))
            self.memory[start : start + len(data)] = data
            return _NO_REPLY if self.version >= (2, 0, 0) else b""
        offset, n = struct.unpack_from("<QQ", payload, t)  # GET_TENSOR
        start = data_ptr - self._BASE + offset
        return bytes(self.memory[start : start + n]).ljust(n, b"\0")

    def _answer(self, cmd: int, payload: bytes) -> bytes | None:
        dev = 4 if self.version >= (3, 0, 0) else 0
        t = 232 + self.max_name
        n_tensors = 11 if self.version >= (3, 6, 0) else 1
        want = {15: 0, 11: dev, 1: dev, 2: dev, 13: dev + n_tensors * t}.get(cmd)
        if want is None or len(payload) != want:
            return None  # unknown here, or a size mismatch: hang up like rpc-server
        index = struct.unpack("<I", payload[:4])[0] if dev and cmd != 15 else 0
        if cmd == 15:
            count = len(self.devices) if self.device_count is None else self.device_count
            return struct.pack("<I", count)
        if index >= len(self.devices):
            return None
        if cmd == 11:
            return struct.pack("<QQ", *self.devices[index])
        if cmd == 1:
            return struct.pack("<Q", self.alignment)
        if cmd == 2:
            return struct.pack("<Q", 1 << 40)
        return struct.pack("<Q", 4)  # GET_ALLOC_SIZE of the 1-element F32 probe tensor
