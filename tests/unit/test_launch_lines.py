"""Server output into lines: every break style, whole or byte by byte, long lines capped."""

from __future__ import annotations

import pytest

from sdrpc_build.launch.lines import MAX_LINE, LineSplitter

OUTPUT = b"Starting\r\nDevices:\n  CPU\rprogress 10%\rprogress 20%\r\n\nlast"
LINES = ["Starting", "Devices:", "  CPU", "progress 10%", "progress 20%", "", "last"]


def _split(chunks: list[bytes], max_line: int = MAX_LINE) -> list[str]:
    s = LineSplitter(max_line)
    out: list[str] = []
    for c in chunks:
        out += s.feed(c)
    return out + s.finish()


def test_breaks_whole_and_byte_by_byte() -> None:
    assert _split([OUTPUT]) == LINES
    assert _split([OUTPUT[i : i + 1] for i in range(len(OUTPUT))]) == LINES  # \r|\n split too
    assert _split([OUTPUT, b"\n"]) == LINES  # "last" ends with a newline: same lines


def test_a_long_line_is_split_at_the_cap_and_nothing_is_lost() -> None:
    s = LineSplitter(10)
    out = s.feed(b"x" * 25)
    assert out == ["x" * 10, "x" * 10]
    assert s.pending == 5
    assert s.feed(b"y\n") == ["xxxxxy"]
    assert s.pending == 0
    assert _split([b"a" * 10 + b"\n"], 10) == ["a" * 10]  # exactly the cap: one line


def test_held_back_bytes_stay_bounded_for_a_huge_line() -> None:
    s = LineSplitter()
    n = 0
    for _ in range(200):  # 12.5 MiB without a newline
        n += sum(len(x) for x in s.feed(b"z" * 65536))
        assert s.pending <= MAX_LINE
    assert n + s.pending == 200 * 65536


@pytest.mark.parametrize("cut", range(1, 8))
def test_utf8_is_not_cut_in_the_middle_of_a_character(cut: int) -> None:
    data = "é€😀".encode() * 20
    lines = _split([data[i : i + cut] for i in range(0, len(data), cut)], 8)
    assert "\ufffd" not in "".join(lines)
    assert "".join(lines) == data.decode()
    assert all(len(x.encode()) <= 8 for x in lines)


def test_invalid_bytes_are_replaced() -> None:
    assert _split([b"a\xffb\n"]) == ["a\ufffdb"]
