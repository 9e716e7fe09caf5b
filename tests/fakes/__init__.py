"""Misbehaving (and well-behaved fake) ggml RPC servers on 127.0.0.1, for tests only.

Each fake is a context manager running one accept loop in a daemon thread:

    with FakeServer(garbage) as port:
        probe("127.0.0.1", port)

Handlers get the accepted socket and the server's stop event. Everything a fake
does is independent of sdrpc's codec (raw ``struct``), so tests do not check the
codec against itself.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = [
    "FakeRpc",
    "FakeServer",
    "absurd_size",
    "close_mid_reply",
    "garbage",
    "hang",
    "http",
    "reset_on_connect",
    "slow_drip",
]

Handler = Callable[[socket.socket, threading.Event], None]

V7_HELLO = struct.pack("<Q", 28) + bytes([7, 0, 0, 0]) + bytes(24)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


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


@dataclass
class FakeRpc:
    """A well-behaved fake ggml RPC server: any version, devices, GGML_MAX_NAME.

    Checks request sizes like rpc-server does and hangs up on a mismatch.
    ``trailing`` bytes are appended after the HELLO reply (protocol abuse).
    """

    version: tuple[int, int, int] = (7, 0, 0)
    max_name: int = 64
    devices: list[tuple[int, int]] = field(default_factory=lambda: [(1 << 30, 2 << 30)])
    device_count: int | None = None  # override what DEVICE_COUNT claims
    trailing: bytes = b""
    delay: float = 0.0  # seconds before every reply (simulated network latency)
    log: list[int] = field(default_factory=list)

    def __call__(self, conn: socket.socket, stop: threading.Event) -> None:
        caps = self.version >= (4, 0, 0)
        head = _recv_exact(conn, 9)
        if head is None or head[0] != 14:
            return
        (size,) = struct.unpack("<Q", head[1:])
        if size != (24 if caps else 0) or (size and _recv_exact(conn, size) is None):
            return
        major, minor, patch = self.version
        body = bytes([major, minor, patch]) + (bytes(25) if caps else b"")
        time.sleep(self.delay)
        conn.sendall(struct.pack("<Q", len(body)) + body + self.trailing)
        while not stop.is_set():
            head = _recv_exact(conn, 9)
            if head is None:
                return
            cmd, size = head[0], struct.unpack("<Q", head[1:])[0]
            self.log.append(cmd)
            reply = self._answer(cmd, size, conn)
            if reply is None:
                return
            time.sleep(self.delay)
            conn.sendall(struct.pack("<Q", len(reply)) + reply)

    def _answer(self, cmd: int, size: int, conn: socket.socket) -> bytes | None:
        dev = 4 if self.version >= (3, 0, 0) else 0
        t = 232 + self.max_name
        n_tensors = 11 if self.version >= (3, 6, 0) else 1
        want = {15: 0, 11: dev, 1: dev, 2: dev, 13: dev + n_tensors * t}.get(cmd)
        if want is None or size != want:
            return None  # unknown here, or a size mismatch: hang up like rpc-server
        payload = _recv_exact(conn, size) if size else b""
        if payload is None:
            return None
        index = struct.unpack("<I", payload[:4])[0] if dev and cmd != 15 else 0
        if cmd == 15:
            count = len(self.devices) if self.device_count is None else self.device_count
            return struct.pack("<I", count)
        if index >= len(self.devices):
            return None
        if cmd == 11:
            return struct.pack("<QQ", *self.devices[index])
        if cmd == 1:
            return struct.pack("<Q", 32)
        if cmd == 2:
            return struct.pack("<Q", 1 << 40)
        return struct.pack("<Q", 4)  # GET_ALLOC_SIZE of the 1-element F32 probe tensor
