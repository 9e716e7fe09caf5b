"""Sans-I/O codec for the ggml RPC wire protocol, versions 1.x to 7.x.

Bytes in, typed values out; no sockets here (see :mod:`sdrpc_build.protocol.probe`).

* Request: ``u8 cmd | u64 size | payload``; reply (when the command has one):
  ``u64 size | data``. Little-endian, packed structs.
* :class:`Dialect` (negotiated version + GGML_MAX_NAME) builds each request as a
  :class:`Request` that also says how many reply bytes to expect, or ``None``
  when that command has no reply in that version.
* :class:`ReceiveBuffer` accumulates bytes and hands out whole frames; an
  incomplete frame is left untouched (roll back), and a declared size is checked
  against what is expected or allowed *before* anything is allocated.

Per-version facts (llama.cpp ``ggml-rpc.cpp``; v6 inferred from v7 source):

=====================  ==========================================================
HELLO                  v1-v3 empty request -> 3-byte reply; v4+ 24-byte caps -> 28
device argument        ``u32 dev`` in front of device commands since v3.0
GET_ALLOC_SIZE         v1-2 ``tensor``; v3.0-3.5 ``dev, tensor``; v3.6+ ``dev, tensor, srcs[10]``
SET_TENSOR             ``tensor, u64 offset, data``; v7+ ``tensor, u8 cache_flag, u64 offset, data``
no reply at all        SET_TENSOR (v2+); GRAPH_COMPUTE/RECOMPUTE (v3.5+);
                       FREE_BUFFER, BUFFER_CLEAR, INIT_TENSOR, MEMSET_TENSOR (v6+)
=====================  ==========================================================

Every error raised here is a :class:`CodecError` (a :class:`ProtocolError`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from sdrpc_build.errors import CodecError, FrameTooLarge, SizeMismatch
from sdrpc_build.protocol.tensor import (
    GGML_MAX_SRC,
    RpcTensor,
    pack_tensor,
    tensor_size,
)

__all__ = [
    "CAPS_SIZE",
    "DEFAULT_REQUEST_LIMIT",
    "HEADER",
    "Cmd",
    "CodecError",
    "Dialect",
    "FrameTooLarge",
    "Hello",
    "ReceiveBuffer",
    "Request",
    "SizeMismatch",
    "Version",
    "decode_hello",
    "decode_u32",
    "decode_u64",
    "decode_u64_pair",
    "encode_frame",
    "encode_reply",
    "encode_request",
    "format_version",
    "hello_request",
    "parse_version",
]

Version = tuple[int, int, int]

HEADER = 8  # u64 size prefix of a reply
CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE
DEFAULT_REQUEST_LIMIT = 64 << 20  # server side (fakes): biggest request payload accepted

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_REQ = struct.Struct("<BQ")
_DEV = struct.Struct("<I")
_U64_U8 = struct.Struct("<QB")
_U64X2 = struct.Struct("<QQ")


class Cmd(enum.IntEnum):
    """Command numbers (stable since 2025-03-28, i.e. for every HELLO-era server)."""

    ALLOC_BUFFER = 0
    GET_ALIGNMENT = 1
    GET_MAX_SIZE = 2
    BUFFER_GET_BASE = 3
    FREE_BUFFER = 4
    BUFFER_CLEAR = 5
    SET_TENSOR = 6
    SET_TENSOR_HASH = 7
    GET_TENSOR = 8
    COPY_TENSOR = 9
    GRAPH_COMPUTE = 10
    GET_DEVICE_MEMORY = 11
    INIT_TENSOR = 12
    GET_ALLOC_SIZE = 13
    HELLO = 14
    DEVICE_COUNT = 15
    GRAPH_RECOMPUTE = 16
    MEMSET_TENSOR = 17


def format_version(v: Version) -> str:
    return f"{v[0]}.{v[1]}.{v[2]}"


def parse_version(text: str) -> Version:
    """``"5.0.1"`` (or ``"5.0"``) -> ``(5, 0, 1)``; raises :class:`CodecError`."""
    parts = text.strip().split(".")
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    if not 2 <= len(parts) <= 3 or not all(
        p.isascii() and p.isdigit() and len(p) <= 3 for p in parts
    ):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise CodecError(f"not a protocol version (want MAJOR.MINOR[.PATCH]): {shown!r}")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    if any(n > 255 for n in nums):
        raise CodecError(f"protocol version parts are single bytes (0-255): {text.strip()!r}")
    return nums[0], nums[1], nums[2]


# ---------------------------------------------------------------- framing


def _pack(st: struct.Struct, *values: int) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise CodecError(f"value out of range for the wire format: {values}: {exc}") from None


def encode_request(cmd: int, payload: bytes = b"") -> bytes:
    """``u8 cmd | u64 len(payload) | payload``."""
    return _pack(_REQ, cmd, len(payload)) + payload


def encode_frame(payload: bytes) -> bytes:
    """``u64 len(payload) | payload`` (a reply frame)."""
    return _U64.pack(len(payload)) + payload


encode_reply = encode_frame


class ReceiveBuffer:
    """Accumulates received bytes and returns complete frames (h11-style).

    ``next_reply`` / ``next_request`` return ``None`` while the frame is
    incomplete and consume nothing in that case. A declared size is validated
    before the body is awaited, so a peer can never make us buffer more than
    the caller allows.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def pending(self) -> bytes:
        """Bytes received but not consumed yet (a copy)."""
        return bytes(self._buf)

    def next_reply(self, expected: int, what: str = "reply") -> bytes | None:
        """The next reply payload, which must declare exactly ``expected`` bytes."""
        if len(self._buf) < HEADER:
            return None
        (declared,) = _U64.unpack_from(self._buf, 0)
        if declared != expected:
            raise SizeMismatch(what, expected, declared, bytes(self._buf[:16]))
        end = HEADER + expected
        if len(self._buf) < end:
            return None
        out = bytes(self._buf[HEADER:end])
        del self._buf[:end]
        return out

    def next_request(self, limit: int = DEFAULT_REQUEST_LIMIT) -> tuple[int, bytes] | None:
        """Server side: the next ``(cmd, payload)``; payloads over ``limit`` are refused."""
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


# ---------------------------------------------------------------- decoders


def _exact(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise CodecError(f"{what}: expected {n} bytes, got {len(data)}")


def decode_u32(data: bytes, what: str = "u32 reply") -> int:
    _exact(data, 4, what)
    return int(_U32.unpack(data)[0])


def decode_u64(data: bytes, what: str = "u64 reply") -> int:
    _exact(data, 8, what)
    return int(_U64.unpack(data)[0])


def decode_u64_pair(data: bytes, what: str = "reply") -> tuple[int, int]:
    _exact(data, 16, what)
    a, b = _U64X2.unpack(data)
    return int(a), int(b)


@dataclass(frozen=True)
class Hello:
    """A decoded HELLO reply. ``caps`` is ``None`` for the 3-byte (v1-v3) shape."""

    version: Version
    caps: bytes | None = None


def decode_hello(data: bytes) -> Hello:
    """Decode a 3-byte (empty-request) or 28-byte (caps-request) HELLO reply."""
    if len(data) == 3:
        return Hello((data[0], data[1], data[2]))
    if len(data) == 4 + CAPS_SIZE:
        return Hello((data[0], data[1], data[2]), bytes(data[4:]))
    raise CodecError(f"HELLO reply must be 3 or {4 + CAPS_SIZE} bytes, got {len(data)}")


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """Wire bytes of one request and the exact reply size (``None``: no reply)."""

    cmd: Cmd
    wire: bytes
    reply_size: int | None


def hello_request(caps: bool) -> Request:
    """HELLO: 24 zero caps bytes (v4+, reply 28) or empty (v1-v3, reply 3)."""
    if caps:
        return Request(Cmd.HELLO, encode_request(Cmd.HELLO, bytes(CAPS_SIZE)), 4 + CAPS_SIZE)
    return Request(Cmd.HELLO, encode_request(Cmd.HELLO), 3)


@dataclass(frozen=True)
class Dialect:
    """Message layouts for one negotiated protocol version and GGML_MAX_NAME."""

    version: Version
    max_name: int = 64

    def __post_init__(self) -> None:
        tensor_size(self.max_name)  # validates
        if not 1 <= self.version[0] <= 255:
            raise CodecError(f"unsupported protocol version {format_version(self.version)}")

    @property
    def tensor_size(self) -> int:
        return tensor_size(self.max_name)

    @property
    def has_devices(self) -> bool:
        """Device-indexed commands and DEVICE_COUNT exist (v3.0+)."""
        return self.version >= (3, 0, 0)

    @property
    def caps_hello(self) -> bool:
        """HELLO carries 24 caps bytes (v4+)."""
        return self.version >= (4, 0, 0)

    def has_reply(self, cmd: Cmd) -> bool:
        v = self.version
        if cmd == Cmd.SET_TENSOR:
            return v < (2, 0, 0)
        if cmd in (Cmd.GRAPH_COMPUTE, Cmd.GRAPH_RECOMPUTE):
            return v < (3, 5, 0)
        if cmd in (Cmd.FREE_BUFFER, Cmd.BUFFER_CLEAR, Cmd.INIT_TENSOR, Cmd.MEMSET_TENSOR):
            return v < (6, 0, 0)
        return True

    def _req(self, cmd: Cmd, payload: bytes, reply: int) -> Request:
        return Request(cmd, encode_request(cmd, payload), reply if self.has_reply(cmd) else None)

    def _dev(self, device: int) -> bytes:
        if not self.has_devices:
            if device != 0:
                raise CodecError(f"protocol {format_version(self.version)} has only device 0")
            return b""
        return _pack(_DEV, device)

    def hello(self) -> Request:
        return hello_request(self.caps_hello)

    def device_count(self) -> Request:
        if not self.has_devices:
            raise CodecError("DEVICE_COUNT needs protocol 3.0 or newer")
        return self._req(Cmd.DEVICE_COUNT, b"", 4)

    def get_alignment(self, device: int = 0) -> Request:
        return self._req(Cmd.GET_ALIGNMENT, self._dev(device), 8)

    def get_max_size(self, device: int = 0) -> Request:
        return self._req(Cmd.GET_MAX_SIZE, self._dev(device), 8)

    def get_device_memory(self, device: int = 0) -> Request:
        return self._req(Cmd.GET_DEVICE_MEMORY, self._dev(device), 16)

    def get_alloc_size(
        self, tensor: RpcTensor, device: int = 0, srcs: tuple[RpcTensor | None, ...] = ()
    ) -> Request:
        if len(srcs) > GGML_MAX_SRC:
            raise CodecError(f"at most {GGML_MAX_SRC} src tensors")
        body = self._dev(device) + pack_tensor(tensor, self.max_name)
        if self.version >= (3, 6, 0):
            empty = bytes(self.tensor_size)  # id 0: "no tensor"
            packed = [pack_tensor(s, self.max_name) if s is not None else empty for s in srcs]
            body += b"".join(packed) + empty * (GGML_MAX_SRC - len(srcs))
        return self._req(Cmd.GET_ALLOC_SIZE, body, 8)

    def alloc_buffer(self, size: int, device: int = 0) -> Request:
        payload = self._dev(device) + _pack(_U64, size)
        return self._req(Cmd.ALLOC_BUFFER, payload, 16)

    def buffer_get_base(self, remote_ptr: int) -> Request:
        return self._req(Cmd.BUFFER_GET_BASE, _pack(_U64, remote_ptr), 8)

    def free_buffer(self, remote_ptr: int) -> Request:
        return self._req(Cmd.FREE_BUFFER, _pack(_U64, remote_ptr), 0)

    def buffer_clear(self, remote_ptr: int, value: int = 0) -> Request:
        return self._req(Cmd.BUFFER_CLEAR, _pack(_U64_U8, remote_ptr, value), 0)

    def set_tensor_header(
        self, tensor: RpcTensor, offset: int, nbytes: int, cache: bool = False
    ) -> Request:
        """SET_TENSOR without its data: send ``wire`` then the ``nbytes`` of data.

        v7 added a ``u8 cache_flag`` between the tensor and the offset
        (llama.cpp #28789); ``cache`` sets it (ignored before v7).
        """
        head = pack_tensor(tensor, self.max_name)
        if self.version >= (7, 0, 0):
            head += b"\x01" if cache else b"\x00"
        head += _pack(_U64, offset)
        wire = _pack(_REQ, Cmd.SET_TENSOR, len(head) + nbytes) + head
        return Request(Cmd.SET_TENSOR, wire, 0 if self.has_reply(Cmd.SET_TENSOR) else None)

    def set_tensor(self, tensor: RpcTensor, offset: int, data: bytes) -> Request:
        head = self.set_tensor_header(tensor, offset, len(data))
        return Request(head.cmd, head.wire + data, head.reply_size)

    def get_tensor(self, tensor: RpcTensor, offset: int, size: int) -> Request:
        payload = pack_tensor(tensor, self.max_name) + _pack(_U64X2, offset, size)
        return self._req(Cmd.GET_TENSOR, payload, size)
