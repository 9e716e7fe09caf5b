"""0600 files and 0700 directories whatever the umask; atomic private writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sdrpc_build.launch.private import write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_is_0600_in_0700_dirs_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "a" / "b" / "state.json"
        write_private(path, "one\n")
        write_private(path, "two\n")
    finally:
        os.umask(old)
    assert path.read_text() == "two\n"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_private(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_private(path, "\udcff")  # a lone surrogate cannot be written as UTF-8
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
