from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdrpc_build.errors import UsageError
from sdrpc_build.launch.cache import cache_entries, format_size, parse_size, prune


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("123", 123),
        (123, 123),
        ("1k", 1024),
        ("10M", 10 * 1024**2),
        ("20G", 20 * 1024**3),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("2tb", 2 * 1000**4),  # TB is decimal, TiB/T binary (sdrpc_build.units)
        ("512 MiB", 512 * 1024**2),
    ],
)
def test_parse_size(text: str | int, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "ten", "-5", "5X", "1.2.3G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(3 * 1024**3) == "3 GiB"


def _file(d: Path, name: str, size: int, used: float) -> Path:
    p = d / name
    p.write_bytes(b"x" * size)
    os.utime(p, (used, used))
    return p


def test_prune_removes_least_recently_used_until_under_cap(tmp_path: Path) -> None:
    old = _file(tmp_path, "00000000000000aa", 400, 1000)
    mid = _file(tmp_path, "00000000000000bb", 400, 2000)
    new = _file(tmp_path, "00000000000000cc", 400, 3000)
    other = _file(tmp_path, "notes.txt", 10_000, 0)  # not a cache file: never touched
    result = prune(tmp_path, 900)
    assert result.removed == (old,)
    assert result.freed == 400
    assert result.remaining == 800
    assert not old.exists()
    assert mid.exists()
    assert new.exists()
    assert other.exists()
    assert prune(tmp_path, 0).removed == (mid, new)


def test_prune_uses_newer_of_atime_and_mtime(tmp_path: Path) -> None:
    a = _file(tmp_path, "000000000000000a", 10, 1000)
    b = _file(tmp_path, "000000000000000b", 10, 2000)
    os.utime(a, (5000, 1000))  # read recently
    assert [e.path for e in cache_entries(tmp_path)] == [b, a]
    assert prune(tmp_path, 10).removed == (b,)


def test_prune_missing_dir_and_under_cap(tmp_path: Path) -> None:
    assert prune(tmp_path / "nope", 0).count == 0
    _file(tmp_path, "000000000000000a", 10, 1000)
    assert prune(tmp_path, 10).count == 0
