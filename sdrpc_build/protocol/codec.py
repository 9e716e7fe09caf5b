"""Sans-I/O codec for the ggml RPC wire protocol, versions 1.x to 7.x.

Bytes in, typed values out; no sockets here (the socket side is
:mod:`.transport`, used by :class:`~sdrpc_build.protocol.client.RpcClient`).

* Request: ``u8 cmd | u64 size | payload``; reply (when the command has one):
  ``u64 size | data``. Little-endian, packed structs.
* :class:`Dialect` (negotiated version + GGML_MAX_NAME) builds each request as a
  :class:`Request` that also says how many reply bytes to expect, or ``None``
  when that command has no reply in that version. Every per-version decision
  is a lookup in the version table, :data:`~sdrpc_build.protocol.layouts.LAYOUTS`.
* :class:`ReceiveBuffer` accumulates bytes and hands out whole reply frames (or,
  for a streamed reply, its checked header, then its body); an incomplete frame
  is left untouched (roll back), and a declared size is checked against the one
  expected *before* anything is allocated.

Every error raised here is a :class:`CodecError` (a :class:`ProtocolError`).
Standard library only (and the package's error root).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sdrpc_build.errors import CodecError, SizeMismatch
from sdrpc_build.protocol.layouts import (
    HELLO_CAPS,
    HELLO_SHAPES,
    Cmd,
    HelloShapeName,
    Layout,
    Version,
    format_version,
    layout_for,
)
from sdrpc_build.protocol.tensor import (
    GGML_MAX_SRC,
    RpcTensor,
    pack_tensor,
    tensor_size,
)

__all__ = [
    "HEADER",
    "CodecError",
    "Dialect",
    "Hello",
    "ReceiveBuffer",
    "Request",
    "SizeMismatch",
    "decode_hello",
    "decode_u32",
    "decode_u64",
    "decode_u64_pair",
    "encode_request",
    "hello_request",
]

HEADER = 8  # u64 size prefix of a reply

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_REQ = struct.Struct("<BQ")
_DEV = struct.Struct("<I")
_U64_U8 = struct.Struct("<QB")
_U64X2 = struct.Struct("<QQ")


# ---------------------------------------------------------------- framing


def _pack(st: struct.Struct, *values: int) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise CodecError(f"value out of range for the wire format: {values}: {exc}") from None


def encode_request(cmd: int, payload: bytes = b"") -> bytes:
    """``u8 cmd | u64 len(payload) | payload``."""
    return _pack(_REQ, cmd, len(payload)) + payload


class ReceiveBuffer:
    """Accumulates received reply bytes and returns complete frames (h11-style).

    ``next_reply`` returns ``None`` while the frame is incomplete and consumes
    nothing in that case; ``missing`` says how many more bytes would complete it
    (a transport reads no more than that, so it never reads past the reply it
    waits for). A declared size is validated as soon as its 8 bytes are in,
    before the body is awaited, so a peer can never make us buffer more than
    the caller expects.

    A big reply can be streamed instead: ``next_header`` consumes its (checked)
    size, then ``take_into`` hands out the body bytes already received; the rest
    of the body is the caller's to read, straight into its own memory.
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

    def missing(self, body: int = 0) -> int:
        """Bytes still to receive for a reply header plus ``body`` bytes (0: complete)."""
        return max(HEADER + body - len(self._buf), 0)

    def _check(self, expected: int, what: str) -> bool:
        """Whether the header is in; raises :class:`SizeMismatch` when it declares
        another size than ``expected``."""
        if len(self._buf) < HEADER:
            return False
        (declared,) = _U64.unpack_from(self._buf, 0)
        if declared != expected:
            raise SizeMismatch(what, expected, declared, bytes(self._buf[:16]))
        return True

    def next_reply(self, expected: int, what: str = "reply") -> bytes | None:
        """The next reply payload, which must declare exactly ``expected`` bytes."""
        if not self._check(expected, what) or self.missing(expected):
            return None
        end = HEADER + expected
        out = bytes(self._buf[HEADER:end])
        del self._buf[:end]
        return out

    def next_header(self, expected: int, what: str = "reply") -> bool:
        """Streaming: consume the header of a reply that must declare ``expected``
        bytes; ``False`` (nothing consumed) while it is incomplete."""
        if not self._check(expected, what):
            return False
        del self._buf[:HEADER]
        return True

    def take_into(self, view: memoryview) -> int:
        """Streaming: move up to ``len(view)`` received body bytes into ``view``."""
        n = min(len(view), len(self._buf))
        view[:n] = self._buf[:n]
        del self._buf[:n]
        return n


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
    """A decoded HELLO reply. ``caps`` is ``None`` for the empty-request (v1-v3) shape."""

    version: Version
    caps: bytes | None = None


def decode_hello(data: bytes) -> Hello:
    """Decode a HELLO reply of any shape in :data:`HELLO_SHAPES`."""
    for shape in HELLO_SHAPES.values():
        if len(data) == shape.reply:
            caps = bytes(data[4:]) if shape.request else None
            return Hello((data[0], data[1], data[2]), caps)
    sizes = " or ".join(str(s.reply) for s in sorted(HELLO_SHAPES.values(), key=lambda s: s.reply))
    raise CodecError(f"HELLO reply must be {sizes} bytes, got {len(data)}")


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """Wire bytes of one request and the exact reply size (``None``: no reply)."""

    cmd: Cmd
    wire: bytes
    reply_size: int | None

    @property
    def reply_bytes(self) -> int:
        """Bytes of the reply frame on the wire (0 when there is none)."""
        return 0 if self.reply_size is None else HEADER + self.reply_size


def hello_request(shape: HelloShapeName) -> Request:
    """HELLO in one of the :data:`HELLO_SHAPES`."""
    s = HELLO_SHAPES[shape]
    return Request(Cmd.HELLO, encode_request(Cmd.HELLO, bytes(s.request)), s.reply)


@dataclass(frozen=True)
class Dialect:
    """Message layouts for one negotiated protocol version and GGML_MAX_NAME."""

    version: Version
    max_name: int = 64
    layout: Layout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tensor_size(self.max_name)  # validates
        if not 1 <= self.version[0] <= 255:
            raise CodecError(f"unsupported protocol version {format_version(self.version)}")
        object.__setattr__(self, "layout", layout_for(self.version))

    @property
    def tensor_size(self) -> int:
        return tensor_size(self.max_name)

    @property
    def has_devices(self) -> bool:
        """The server lists its devices (DEVICE_COUNT exists)."""
        return self.layout.knows(Cmd.DEVICE_COUNT)

    @property
    def caps_hello(self) -> bool:
        """HELLO carries the caps bytes."""
        return self.layout.hello == HELLO_CAPS

    def has_reply(self, cmd: Cmd) -> bool:
        return self.layout.replies(cmd)

    def _req(self, cmd: Cmd, payload: bytes, reply: int) -> Request:
        if not self.layout.knows(cmd):
            v = format_version(self.version)
            raise CodecError(f"{cmd.name} does not exist in protocol {v}")
        return Request(cmd, encode_request(cmd, payload), reply if self.has_reply(cmd) else None)

    def _dev(self, device: int) -> bytes:
        if not self.layout.device_arg:
            if device != 0:
                raise CodecError(f"protocol {format_version(self.version)} has only device 0")
            return b""
        return _pack(_DEV, device)

    def hello(self) -> Request:
        return hello_request(self.layout.hello.name)

    def device_count(self) -> Request:
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
        if self.layout.alloc_srcs:
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

        ``cache`` sets the cache flag where the layout has one (v7+, llama.cpp #28789).
        """
        head = pack_tensor(tensor, self.max_name)
        if self.layout.cache_flag:
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
