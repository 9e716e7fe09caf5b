"""``rpc_tensor``: ggml's packed tensor description, for any GGML_MAX_NAME.

Layout (little-endian, ``#pragma pack(1)``), byte offsets for name length ``N``::

    0 id u64 | 8 type u32 | 12 buffer u64 | 20 ne[4] u32 | 36 nb[4] u32 | 52 op u32
    56 op_params[16] i32 | 120 flags i32 | 124 src[10] u64 | 204 view_src u64
    212 view_offs u64 | 220 data u64 | 228 name[N] | 228+N padding[4] / i32 use_count

so ``sizeof(rpc_tensor) == 232 + N``. The trailing four bytes were padding up to
v5.0 and became ``use_count`` in v5.1; the size never changed.

Standard library only; raises :class:`CodecError` (a
:class:`~sdrpc_build.errors.ProtocolError`) only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sdrpc_build.errors import CodecError, TensorLayoutError

__all__ = [
    "GGML_MAX_DIMS",
    "GGML_MAX_OP_PARAMS",
    "GGML_MAX_SRC",
    "MAX_NAME_LIMIT",
    "CodecError",
    "RpcTensor",
    "TensorLayoutError",
    "pack_tensor",
    "tensor_size",
    "unpack_tensor",
    "usable_max_name",
]

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64  # bytes: 16 x int32
MAX_NAME_LIMIT = 1 << 16  # sanity bound for GGML_MAX_NAME values we accept

# id, type, buffer, ne[4], nb[4], op, op_params[16], flags, src[10], view_src, view_offs, data
_HEAD = struct.Struct("<QIQ4I4II16ii10QQQQ")
assert _HEAD.size == 228


def tensor_size(max_name: int) -> int:
    """``sizeof(rpc_tensor)`` for a server built with ``GGML_MAX_NAME = max_name``."""
    _check_max_name(max_name)
    return _HEAD.size + max_name + 4


def usable_max_name(max_name: int) -> bool:
    """Whether an ``rpc_tensor`` can have ``GGML_MAX_NAME = max_name`` on the wire:
    ggml requires ``sizeof(rpc_tensor) % 8 == 0``, i.e. a multiple of 8 (bounded by
    :data:`MAX_NAME_LIMIT`). Which values ggml *builds* with is stricter (build.pins)."""
    return 8 <= max_name <= MAX_NAME_LIMIT and max_name % 8 == 0


def _check_max_name(max_name: int) -> None:
    if not usable_max_name(max_name):
        raise TensorLayoutError(
            f"GGML_MAX_NAME={max_name} is not usable: it must be a multiple of 8 "
            f"between 8 and {MAX_NAME_LIMIT}"
        )


def _zeros(n: int) -> tuple[int, ...]:
    return (0,) * n


@dataclass(frozen=True)
class RpcTensor:
    """One serialized ggml tensor. ``name`` is raw bytes (NUL padding stripped)."""

    id: int = 0
    type: int = 0
    buffer: int = 0
    ne: tuple[int, int, int, int] = (1, 1, 1, 1)
    nb: tuple[int, int, int, int] = (4, 4, 4, 4)
    op: int = 0
    op_params: tuple[int, ...] = field(default_factory=lambda: _zeros(16))
    flags: int = 0
    src: tuple[int, ...] = field(default_factory=lambda: _zeros(GGML_MAX_SRC))
    view_src: int = 0
    view_offs: int = 0
    data: int = 0
    name: bytes = b""
    use_count: int = 0

    @classmethod
    def f32(
        cls, n_elements: int, *, buffer: int = 0, data: int = 0, id: int = 1, name: bytes = b""
    ) -> RpcTensor:
        """A contiguous 1-D F32 tensor (type 0) of ``n_elements`` elements."""
        return cls(
            id=id,
            type=0,
            buffer=buffer,
            ne=(n_elements, 1, 1, 1),
            nb=(4, 4 * n_elements, 4 * n_elements, 4 * n_elements),
            data=data,
            name=name,
        )


def pack_tensor(t: RpcTensor, max_name: int) -> bytes:
    """Serialize ``t`` as the ``rpc_tensor`` of a build with ``GGML_MAX_NAME = max_name``."""
    _check_max_name(max_name)
    if len(t.op_params) != 16 or len(t.src) != GGML_MAX_SRC:
        raise TensorLayoutError("rpc_tensor needs 16 op_params and 10 src entries")
    if len(t.name) >= max_name:
        raise TensorLayoutError(
            f"tensor name of {len(t.name)} bytes does not fit GGML_MAX_NAME={max_name} "
            "(one byte is kept for the terminating NUL)"
        )
    try:
        head = _HEAD.pack(
            t.id,
            t.type,
            t.buffer,
            *t.ne,
            *t.nb,
            t.op,
            *t.op_params,
            t.flags,
            *t.src,
            t.view_src,
            t.view_offs,
            t.data,
        )
        tail = struct.pack("<i", t.use_count)
    except struct.error as exc:
        raise TensorLayoutError(f"rpc_tensor field out of range: {exc}") from None
    return head + t.name.ljust(max_name, b"\0") + tail


def unpack_tensor(data: bytes | bytearray | memoryview, max_name: int) -> RpcTensor:
    """Parse exactly one ``rpc_tensor`` of name length ``max_name``."""
    size = tensor_size(max_name)
    if len(data) != size:
        raise TensorLayoutError(
            f"rpc_tensor with GGML_MAX_NAME={max_name} is {size} bytes, got {len(data)}"
        )
    f = _HEAD.unpack_from(data, 0)
    raw_name = bytes(data[_HEAD.size : _HEAD.size + max_name])
    (use_count,) = struct.unpack_from("<i", data, _HEAD.size + max_name)
    return RpcTensor(
        id=f[0],
        type=f[1],
        buffer=f[2],
        ne=(f[3], f[4], f[5], f[6]),
        nb=(f[7], f[8], f[9], f[10]),
        op=f[11],
        op_params=tuple(f[12:28]),
        flags=f[28],
        src=tuple(f[29:39]),
        view_src=f[39],
        view_offs=f[40],
        data=f[41],
        name=raw_name.split(b"\0", 1)[0],
        use_count=use_count,
    )
