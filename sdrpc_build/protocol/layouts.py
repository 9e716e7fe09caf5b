"""THE table of what differs between ggml RPC protocol versions: :data:`LAYOUTS`.

One :class:`Layout` row per version that changed the wire: which commands exist
(RPC_CMD_COUNT), the HELLO shape, the ``u32 dev`` argument, GET_ALLOC_SIZE's src
tensors, SET_TENSOR's cache flag, and which commands stopped replying. The codec
(:mod:`.codec`) and the compatibility rules (:mod:`.compat`) look every
per-version decision up here (:func:`layout_for`).

Supporting a new protocol version: add its row (and a :class:`Cmd` member for a
new command), then capture one golden file from a real server
(``tests/golden/capture.py``); ``tests/unit/test_codec.py`` checks the codec
against every golden file and that the newest row has one.

Standard library only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from sdrpc_build.protocol.tensor import CodecError

__all__ = [
    "CAPS_SIZE",
    "HELLO_CAPS",
    "HELLO_EMPTY",
    "HELLO_ORDER",
    "HELLO_SHAPES",
    "LAYOUTS",
    "Cmd",
    "HelloShape",
    "HelloShapeName",
    "Layout",
    "Version",
    "format_version",
    "layout_for",
    "parse_version",
]

Version = tuple[int, int, int]

CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE


class Cmd(enum.IntEnum):
    """Command numbers (stable since 2025-03-28, i.e. for every HELLO-era server).

    New commands are appended, so the commands a version knows are ``0 ..
    RPC_CMD_COUNT - 1`` (:attr:`Layout.cmd_count`).
    """

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


HelloShapeName = Literal["caps", "empty"]


@dataclass(frozen=True)
class HelloShape:
    """One form of HELLO: ``request`` zero bytes of payload, a ``reply`` of that many
    bytes (``u8 major, minor, patch``, then for the caps form ``u8 pad, conn_caps``)."""

    name: HelloShapeName
    request: int
    reply: int


HELLO_EMPTY = HelloShape("empty", 0, 3)
HELLO_CAPS = HelloShape("caps", CAPS_SIZE, 4 + CAPS_SIZE)  # zero caps: plain TCP
HELLO_SHAPES: dict[HelloShapeName, HelloShape] = {s.name: s for s in (HELLO_CAPS, HELLO_EMPTY)}


@dataclass(frozen=True)
class Layout:
    """The wire layouts of protocol versions from ``since`` until the next row.

    ``cmd_count``: RPC_CMD_COUNT (the commands ``0 .. cmd_count - 1`` exist);
    ``no_reply``: commands the server never answers; ``device_arg``: ``u32 dev``
    in front of ALLOC_BUFFER, GET_ALIGNMENT, GET_MAX_SIZE, GET_DEVICE_MEMORY and
    GET_ALLOC_SIZE (a server lists its devices where DEVICE_COUNT exists, else it
    is one device); ``alloc_srcs``: GET_ALLOC_SIZE
    carries ``srcs[GGML_MAX_SRC]`` after the tensor; ``cache_flag``: SET_TENSOR
    carries ``u8 cache_flag`` between the tensor and the offset.
    """

    since: Version
    hello: HelloShape
    cmd_count: int
    no_reply: frozenset[Cmd]
    device_arg: bool
    alloc_srcs: bool
    cache_flag: bool

    def knows(self, cmd: Cmd) -> bool:
        return cmd < self.cmd_count

    def replies(self, cmd: Cmd) -> bool:
        return cmd not in self.no_reply


_SILENT_V2 = frozenset({Cmd.SET_TENSOR})
_SILENT_V3_5 = _SILENT_V2 | {Cmd.GRAPH_COMPUTE, Cmd.GRAPH_RECOMPUTE}
_SILENT_V6 = _SILENT_V3_5 | {Cmd.FREE_BUFFER, Cmd.BUFFER_CLEAR, Cmd.INIT_TENSOR, Cmd.MEMSET_TENSOR}

# From llama.cpp's ggml-rpc.cpp / ggml-rpc.h history (docs/rpc-protocol.md, section 5); v7
# from the source llama-cpp-python 0.3.36 vendors, v6 inferred from it. Golden bytes from
# real servers: tests/golden (v5, v7). A version newer than the last row is spoken with the
# last row's layouts (whether a client accepts it is compat.version_problem's business).
# fmt: off
LAYOUTS: tuple[Layout, ...] = (
    #       since      HELLO        cmds  no reply      dev    srcs   cache flag
    Layout((1, 0, 0), HELLO_EMPTY, 15,   frozenset(),  False, False, False),
    Layout((2, 0, 0), HELLO_EMPTY, 15,   _SILENT_V2,   False, False, False),
    Layout((3, 0, 0), HELLO_EMPTY, 16,   _SILENT_V2,   True,  False, False),  # DEVICE_COUNT
    Layout((3, 5, 0), HELLO_EMPTY, 17,   _SILENT_V3_5, True,  False, False),  # GRAPH_RECOMPUTE
    Layout((3, 6, 0), HELLO_EMPTY, 17,   _SILENT_V3_5, True,  True,  False),
    Layout((4, 0, 0), HELLO_CAPS,  17,   _SILENT_V3_5, True,  True,  False),
    Layout((5, 0, 0), HELLO_CAPS,  18,   _SILENT_V3_5, True,  True,  False),  # MEMSET_TENSOR
    Layout((6, 0, 0), HELLO_CAPS,  18,   _SILENT_V6,   True,  True,  False),
    Layout((7, 0, 0), HELLO_CAPS,  18,   _SILENT_V6,   True,  True,  True),
)
# fmt: on
#: HELLO shapes to try on a server of unknown version: the newest first.
HELLO_ORDER: tuple[HelloShapeName, ...] = tuple(
    dict.fromkeys(row.hello.name for row in reversed(LAYOUTS))
)


def layout_for(version: Version) -> Layout:
    """The :data:`LAYOUTS` row for ``version`` (the last one whose ``since`` is not
    newer); raises :class:`CodecError` for versions before the first row."""
    found = [row for row in LAYOUTS if row.since <= version]
    if not found:
        raise CodecError(f"unsupported protocol version {format_version(version)}")
    return found[-1]
