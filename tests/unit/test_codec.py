"""The sans-I/O codec and its version table: golden bytes from real v5/v7 servers,
framing, layouts, fuzzing."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.wire import FrameTooLarge, RequestBuffer, encode_reply
from hypothesis import given, settings
from hypothesis import strategies as st

from sdrpc_build.errors import ProtocolError
from sdrpc_build.protocol.codec import (
    CodecError,
    Dialect,
    ReceiveBuffer,
    SizeMismatch,
    decode_hello,
    decode_u32,
    decode_u64,
    decode_u64_pair,
    encode_request,
    hello_request,
)
from sdrpc_build.protocol.layouts import (
    HELLO_ORDER,
    LAYOUTS,
    Cmd,
    format_version,
    layout_for,
    parse_version,
)
from sdrpc_build.protocol.tensor import RpcTensor, pack_tensor, tensor_size, unpack_tensor

GOLDEN = Path(__file__).parents[1] / "golden"
GOLDEN_FILES = sorted(GOLDEN.glob("v*-n*.json"))


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    doc["by_name"] = {s["name"]: s for s in doc["steps"]}
    return doc


def _replies(frames: bytes, sizes: list[int]) -> list[bytes]:
    """Feed ``frames`` whole, byte by byte, and with trailing bytes; all must agree."""
    results = []
    for chunking in ("whole", "bytes", "trailing"):
        rb = ReceiveBuffer()
        data = frames + (b"\x99" * 5 if chunking == "trailing" else b"")
        step = 1 if chunking == "bytes" else len(data)
        out: list[bytes] = []
        want = iter(sizes)
        current = next(want, None)
        for i in range(0, len(data), step):
            rb.feed(data[i : i + step])
            while current is not None:
                got = rb.next_reply(current)
                if got is None:
                    break
                out.append(got)
                current = next(want, None)
        assert current is None, chunking
        assert rb.pending == (b"\x99" * 5 if chunking == "trailing" else b"")
        results.append(out)
    assert results[0] == results[1] == results[2]
    return results[0]


def test_golden_files_cover_v5_and_v7_with_two_name_lengths() -> None:
    names = {p.stem for p in GOLDEN_FILES}
    assert {"v5-n64", "v5-n160", "v7-n64", "v7-n160"} <= names


def test_the_newest_layout_row_has_golden_bytes() -> None:
    # a new protocol version is a new LAYOUTS row plus a golden file from a real server
    newest = LAYOUTS[-1].since
    covered = {tuple(_load(p)["protocol"]) for p in GOLDEN_FILES}
    assert any(v[:2] == newest[:2] for v in covered), format_version(newest)


def test_layout_rows_are_in_version_order_and_lookups_take_the_last_row_not_newer() -> None:
    since = [row.since for row in LAYOUTS]
    assert since == sorted(set(since)) and since[0] == (1, 0, 0)
    assert layout_for((3, 6, 1)).since == (3, 6, 0)
    assert layout_for((4, 0, 3)).since == (4, 0, 0)
    assert layout_for((5, 1, 0)).since == (5, 0, 0)
    assert layout_for((9, 0, 0)) is LAYOUTS[-1]  # newer: spoken like the newest known
    with pytest.raises(CodecError, match="unsupported protocol version 0.9.0"):
        layout_for((0, 9, 0))


def test_command_counts_follow_rpc_cmd_count() -> None:
    counts = {(1, 0, 0): 15, (3, 0, 0): 16, (3, 5, 0): 17, (4, 0, 3): 17, (5, 1, 0): 18}
    for version, count in counts.items():
        layout = layout_for(version)
        assert [c for c in Cmd if layout.knows(c)] == list(Cmd)[:count], version
    d = Dialect((3, 0, 0))
    assert d.device_count().cmd == Cmd.DEVICE_COUNT
    with pytest.raises(CodecError, match="DEVICE_COUNT does not exist in protocol 2.0.0"):
        Dialect((2, 0, 0)).device_count()


def test_hello_shape_comes_from_the_table_newest_first() -> None:
    assert HELLO_ORDER == ("caps", "empty")
    for row in LAYOUTS:
        d = Dialect(row.since)
        assert d.hello() == hello_request(row.hello.name)
        assert d.hello().reply_size == row.hello.reply


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_requests_are_what_the_codec_builds(path: Path) -> None:
    g = _load(path)
    version = tuple(g["protocol"])
    d = Dialect(version, g["max_name"])
    req = {k: bytes.fromhex(v["request"]) for k, v in g["by_name"].items()}
    rep = {k: bytes.fromhex(v["reply"]) if v["reply"] else None for k, v in g["by_name"].items()}
    assert d.hello().wire == req["hello_caps"]
    assert d.device_count().wire == req["device_count"]
    assert d.get_device_memory(0).wire == req["get_device_memory"]
    assert d.get_alignment(0).wire == req["get_alignment"]
    assert d.get_max_size(0).wire == req["get_max_size"]
    probe = RpcTensor.f32(1, name=b"sdrpc-probe")
    assert d.get_alloc_size(probe).wire == req["get_alloc_size"]
    assert d.alloc_buffer(4096).wire == req["alloc_buffer"]
    ptr = decode_u64_pair(rep["alloc_buffer"][8:])[0]  # type: ignore[index]
    base = decode_u64(rep["buffer_get_base"][8:])  # type: ignore[index]
    assert d.buffer_get_base(ptr).wire == req["buffer_get_base"]
    t = RpcTensor.f32(4, buffer=ptr, data=base)
    assert d.set_tensor(t, 0, bytes(range(16))).wire == req["set_tensor"]
    assert d.get_tensor(t, 0, 16).wire == req["get_tensor"]
    assert d.buffer_clear(ptr, 0).wire == req["buffer_clear"]
    assert d.free_buffer(ptr).wire == req["free_buffer"]
    # which commands had a reply on the real server is what the dialect says
    for name, cmd in (
        ("set_tensor", Cmd.SET_TENSOR),
        ("buffer_clear", Cmd.BUFFER_CLEAR),
        ("free_buffer", Cmd.FREE_BUFFER),
        ("get_tensor", Cmd.GET_TENSOR),
    ):
        assert d.has_reply(cmd) == (rep[name] is not None), name


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_replies_decode(path: Path) -> None:
    g = _load(path)
    steps = [s for s in g["steps"] if s["reply"]]
    frames = b"".join(bytes.fromhex(s["reply"]) for s in steps)
    sizes = [struct.unpack_from("<Q", bytes.fromhex(s["reply"]))[0] for s in steps]
    payloads = dict(zip([s["name"] for s in steps], _replies(frames, sizes), strict=True))
    hello = decode_hello(payloads["hello_caps"])
    assert hello.version == tuple(g["protocol"]) and hello.caps == bytes(24)
    assert decode_u32(payloads["device_count"]) == 1
    free, total = decode_u64_pair(payloads["get_device_memory"])
    assert 0 < free <= total
    assert decode_u64(payloads["get_alignment"]) == 32
    assert decode_u64(payloads["get_max_size"]) == 2**64 - 1
    assert decode_u64(payloads["get_alloc_size"]) == 4  # one F32
    assert decode_u64_pair(payloads["alloc_buffer"])[1] == 4096
    assert payloads["get_tensor"] == bytes(range(16))
    assert payloads["get_tensor_cleared"] == bytes(16)


def test_v7_inserts_cache_flag_and_v5_does_not() -> None:
    t = RpcTensor.f32(1)
    v5 = Dialect((5, 0, 0), 64).set_tensor(t, 3, b"abcd").wire
    v7 = Dialect((7, 0, 0), 64).set_tensor(t, 3, b"abcd").wire
    assert len(v7) == len(v5) + 1
    assert v5[9 + 296 :] == struct.pack("<Q", 3) + b"abcd"
    assert v7[9 + 296 :] == b"\x00" + struct.pack("<Q", 3) + b"abcd"
    assert struct.unpack_from("<Q", v7, 1)[0] == 296 + 1 + 8 + 4


@pytest.mark.parametrize(
    ("version", "payload_size", "replies"),
    [
        ((1, 0, 0), 296, {Cmd.SET_TENSOR: True, Cmd.FREE_BUFFER: True}),
        ((2, 0, 0), 296, {Cmd.SET_TENSOR: False, Cmd.GRAPH_COMPUTE: True}),
        ((3, 0, 0), 4 + 296, {Cmd.GRAPH_COMPUTE: True}),
        ((3, 5, 0), 4 + 296, {Cmd.GRAPH_COMPUTE: False, Cmd.GRAPH_RECOMPUTE: False}),
        ((3, 6, 1), 4 + 11 * 296, {Cmd.FREE_BUFFER: True}),
        ((5, 0, 0), 4 + 11 * 296, {Cmd.MEMSET_TENSOR: True, Cmd.INIT_TENSOR: True}),
        ((6, 0, 0), 4 + 11 * 296, {Cmd.FREE_BUFFER: False, Cmd.BUFFER_CLEAR: False}),
        ((7, 0, 0), 4 + 11 * 296, {Cmd.MEMSET_TENSOR: False, Cmd.GET_ALLOC_SIZE: True}),
    ],
)
def test_per_version_layouts(version: Any, payload_size: int, replies: dict[Cmd, bool]) -> None:
    d = Dialect(version, 64)
    req = d.get_alloc_size(RpcTensor.f32(1))
    assert struct.unpack_from("<Q", req.wire, 1)[0] == payload_size
    for cmd, has in replies.items():
        assert d.has_reply(cmd) is has, cmd
    assert d.caps_hello == (version >= (4, 0, 0))
    assert len(d.get_alignment(0).wire) == 9 + (4 if version >= (3, 0, 0) else 0)


def test_pre_v3_has_no_device_count_and_one_device() -> None:
    d = Dialect((2, 0, 0))
    with pytest.raises(CodecError):
        d.device_count()
    with pytest.raises(CodecError):
        d.get_device_memory(1)
    assert d.alloc_buffer(10).wire == encode_request(Cmd.ALLOC_BUFFER, struct.pack("<Q", 10))


def test_hello_shapes() -> None:
    empty = hello_request("empty")
    assert empty.wire == b"\x0e" + bytes(8) and empty.reply_size == 3
    caps = hello_request("caps")
    assert caps.wire == b"\x0e" + struct.pack("<Q", 24) + bytes(24) and caps.reply_size == 28
    assert decode_hello(b"\x03\x06\x01").version == (3, 6, 1)
    with pytest.raises(CodecError):
        decode_hello(b"\x03\x06")


@pytest.mark.parametrize("n", [64, 128, 160, 256, 8])
def test_tensor_size_and_offsets(n: int) -> None:
    t = RpcTensor(id=7, type=1, buffer=2, data=3, name=b"w", use_count=-1)
    raw = pack_tensor(t, n)
    assert len(raw) == tensor_size(n) == 232 + n
    assert struct.unpack_from("<Q", raw, 220)[0] == 3 and raw[228:229] == b"w"
    assert unpack_tensor(raw, n) == t


def test_tensor_errors_are_codec_errors() -> None:
    for bad in (0, 60, 1 << 20):
        with pytest.raises(ProtocolError):
            tensor_size(bad)
    with pytest.raises(ProtocolError):
        pack_tensor(RpcTensor(name=b"x" * 64), 64)  # no room for the NUL
    with pytest.raises(ProtocolError):
        pack_tensor(RpcTensor(id=-1), 64)
    with pytest.raises(ProtocolError):
        unpack_tensor(bytes(295), 64)


def test_size_mismatch_is_detected_before_the_body() -> None:
    rb = ReceiveBuffer()
    rb.feed(struct.pack("<Q", 1 << 63))  # absurd declared size, no body
    with pytest.raises(SizeMismatch) as info:
        rb.next_reply(28)
    assert info.value.declared == 1 << 63 and info.value.expected == 28


def _stream(frames: bytes, chunking: str, size: int) -> tuple[bytes, int]:
    """Read a streamed reply of ``size`` bytes out of ``frames`` fed whole / byte by byte:
    the header through next_header, the body with take_into (as the transport does).
    Returns the body and the bytes left in the buffer."""
    rb = ReceiveBuffer()
    step = 1 if chunking == "bytes" else len(frames)
    chunks = iter(frames[i : i + step] for i in range(0, len(frames), step))
    while not rb.next_header(size, "GET_TENSOR reply"):
        assert rb.missing() == 8 - len(rb)
        rb.feed(next(chunks))
    body = bytearray(size)
    got = 0
    while got < size:
        got += rb.take_into(memoryview(body)[got:])
        if got < size:
            rb.feed(next(chunks))
    for rest in chunks:
        rb.feed(rest)
    return bytes(body), len(rb)


@pytest.mark.parametrize("chunking", ["whole", "bytes", "trailing"])
def test_streamed_reply_header_then_body(chunking: str) -> None:
    trailing = b"\x99" * 5 if chunking == "trailing" else b""
    body, left = _stream(encode_reply(b"0123456789") + trailing, chunking, 10)
    assert body == b"0123456789" and left == len(trailing)


def test_streamed_reply_checks_the_declared_size_before_the_body() -> None:
    rb = ReceiveBuffer()
    absurd = struct.pack("<Q", 1 << 63)
    rb.feed(absurd[:7])
    assert not rb.next_header(16) and len(rb) == 7 and rb.missing() == 1
    rb.feed(absurd[7:])
    with pytest.raises(SizeMismatch) as info:
        rb.next_header(16, "GET_TENSOR reply")
    assert info.value.declared == 1 << 63 and "GET_TENSOR reply" in str(info.value)


def test_missing_counts_what_a_reply_still_lacks() -> None:
    rb = ReceiveBuffer()
    assert rb.missing(28) == 36 and rb.missing() == 8
    rb.feed(encode_reply(bytes(28))[:20])
    assert rb.missing(28) == 16 and rb.missing() == 0
    rb.feed(bytes(16) + b"extra")
    assert rb.missing(28) == 0 and rb.next_reply(28) == bytes(28) and rb.pending == b"extra"


def test_incomplete_frames_roll_back() -> None:
    rb = ReceiveBuffer()
    rb.feed(encode_reply(b"abcdef")[:10])
    assert rb.next_reply(6) is None and len(rb) == 10
    rb.feed(b"cdef")
    assert rb.next_reply(6) == b"abcdef" and len(rb) == 0


def test_request_reader_caps_declared_size() -> None:
    # the fakes' server-side reader (tests/fakes/wire.py) against requests the codec builds
    rb = RequestBuffer()
    rb.feed(b"\x06" + struct.pack("<Q", 2**63))
    with pytest.raises(FrameTooLarge):
        rb.next_request()
    rb2 = RequestBuffer()
    wire = Dialect((5, 0, 0)).get_alignment(2).wire
    for b in wire:
        assert rb2.next_request() is None
        rb2.feed(bytes([b]))
    assert rb2.next_request() == (Cmd.GET_ALIGNMENT, struct.pack("<I", 2))


def test_parse_version() -> None:
    assert parse_version("5.0.1") == (5, 0, 1)
    assert parse_version("5.1") == (5, 1, 0)
    bad_inputs = ("5", "5.x.0", "1.2.3.4", "300.0.0", "", "5.0.\u00b2", "\u0665.0.0", "9" * 400)
    for bad in bad_inputs:
        with pytest.raises(CodecError):
            parse_version(bad)


def test_out_of_range_values_are_codec_errors() -> None:
    d = Dialect((7, 0, 0))
    with pytest.raises(CodecError):
        d.alloc_buffer(-1)
    with pytest.raises(CodecError):
        d.get_alignment(2**32)
    with pytest.raises(CodecError):
        Dialect((0, 9, 0))


# ------------------------------------------------------------------ property-based

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
names = st.binary(max_size=63).filter(lambda b: b"\0" not in b)
tensors = st.builds(
    RpcTensor,
    id=u64,
    type=u32,
    buffer=u64,
    ne=st.tuples(u32, u32, u32, u32),
    nb=st.tuples(u32, u32, u32, u32),
    op=u32,
    op_params=st.tuples(*[i32] * 16),
    flags=i32,
    src=st.tuples(*[u64] * 10),
    view_src=u64,
    view_offs=u64,
    data=u64,
    name=names,
    use_count=i32,
)


@given(tensors, st.sampled_from([64, 128, 160, 256]))
def test_tensor_round_trip(t: RpcTensor, n: int) -> None:
    assert unpack_tensor(pack_tensor(t, n), n) == t


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20))
def test_frames_round_trip_in_any_chunking(payload: bytes, cuts: list[int]) -> None:
    data = encode_reply(payload) + encode_reply(payload[::-1])
    rb = ReceiveBuffer()
    out: list[bytes] = []
    pos = 0
    for c in [*cuts, len(data)]:
        rb.feed(data[pos : pos + c])
        pos += c
        while len(out) < 2 and (got := rb.next_reply(len(payload))) is not None:
            out.append(got)
    assert out == [payload, payload[::-1]]


DECODERS: list[Callable[[bytes], object]] = [decode_hello, decode_u32, decode_u64, decode_u64_pair]


@settings(max_examples=300)
@given(st.binary(max_size=64), st.sampled_from(DECODERS), st.integers(0, 64))
def test_random_bytes_raise_only_codec_errors(data: bytes, decoder: Any, expected: int) -> None:
    with contextlib.suppress(CodecError):
        decoder(data)
    rb = ReceiveBuffer()
    rb.feed(data)
    try:
        while rb.next_reply(expected) is not None:
            pass
    except CodecError:
        pass
    rb2 = RequestBuffer()
    rb2.feed(data)
    try:
        while rb2.next_request(limit=1024) is not None:
            pass
    except FrameTooLarge:
        pass


@settings(max_examples=200)
@given(st.binary(min_size=200, max_size=400), st.sampled_from([64, 128]))
def test_random_tensor_bytes_unpack_or_codec_error(data: bytes, n: int) -> None:
    try:
        t = unpack_tensor(data, n)
    except CodecError:
        return
    assert len(data) == tensor_size(n) and t.name == data[228 : 228 + n].split(b"\0")[0]
