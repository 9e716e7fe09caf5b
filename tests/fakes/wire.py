"""The server half of the ggml RPC framing, for fake servers: read requests, frame replies.

sdrpc is only ever a client, so this half lives with the fakes, not in the
package. Raw ``struct``, independent of sdrpc's codec, so tests do not check
the codec against itself.

* Request: ``u8 cmd | u64 size | payload``; reply: ``u64 size | data``.
* :class:`RequestBuffer` is sans-I/O (h11-style): it hands out whole requests,
  consumes nothing while one is incomplete, and refuses a declared size over
  its limit before waiting for the body. :class:`RequestReader` feeds one from
  a blocking socket.
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "DEFAULT_REQUEST_LIMIT",
    "FrameTooLarge",
    "RequestBuffer",
    "RequestReader",
    "encode_reply",
]

DEFAULT_REQUEST_LIMIT = 64 << 20  # biggest request payload a fake accepts
_REQ = struct.Struct("<BQ")
_U64 = struct.Struct("<Q")


class FrameTooLarge(ValueError):
    """A peer declared a request larger than the fake is willing to buffer."""


def encode_reply(payload: bytes) -> bytes:
    """``u64 len(payload) | payload`` (a reply frame)."""
    return _U64.pack(len(payload)) + payload


class RequestBuffer:
    """Accumulates received bytes; :meth:`next_request` returns whole requests."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def next_request(self, limit: int = DEFAULT_REQUEST_LIMIT) -> tuple[int, bytes] | None:
        """The next ``(cmd, payload)``, ``None`` while incomplete; payloads over
        ``limit`` raise :class:`FrameTooLarge` as soon as the header is in."""
        if len(self._buf) < _REQ.size:
            return None
        cmd, declared = _REQ.unpack_from(self._buf, 0)
        if declared > limit:
            raise FrameTooLarge(f"request declares {declared} bytes (limit {limit})")
        end = _REQ.size + declared
        if len(self._buf) < end:
            return None
        out = bytes(self._buf[_REQ.size : end])
        del self._buf[:end]
        return cmd, out


class RequestReader:
    """Whole requests from a blocking socket (its own timeout applies to each read)."""

    def __init__(self, sock: socket.socket, limit: int = DEFAULT_REQUEST_LIMIT) -> None:
        self.sock = sock
        self.limit = limit
        self.buffer = RequestBuffer()

    def next(self) -> tuple[int, bytes] | None:
        """The next request; ``None`` when the peer closed or declared too much."""
        while True:
            try:
                request = self.buffer.next_request(self.limit)
            except FrameTooLarge:
                return None
            if request is not None:
                return request
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer.feed(chunk)
