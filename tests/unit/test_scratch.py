from __future__ import annotations

import os
from pathlib import Path

from sdrpc_build.build.scratch import (
    TAG,
    Owner,
    clean_stale,
    is_stale,
    owner_of,
    process_start,
    scratch_path,
)

_NO_PID = 2**22 + 12345  # above Linux's pid_max: no such process


def _host(path: Path) -> str:
    owner = owner_of(path)
    assert owner is not None
    return owner.host


def test_scratch_path_names_its_owner(tmp_path: Path) -> None:
    p = scratch_path(tmp_path, "sdist-llama_cpp_python-0.3.35")
    assert p.parent == tmp_path and p.name.startswith("sdist-llama_cpp_python-0.3.35" + TAG)
    owner = owner_of(p)
    assert owner is not None and owner.pid == os.getpid()
    assert owner.start == process_start(os.getpid())
    assert not is_stale(owner)  # this very process
    assert owner_of(tmp_path / "sources") is None


def test_dead_and_reused_pids_are_stale_live_and_foreign_are_not(tmp_path: Path) -> None:
    mine = scratch_path(tmp_path, "a")
    host = _host(mine)
    me = owner_of(mine)
    assert me is not None
    assert is_stale(Owner(host, _NO_PID, 123))  # the owner is gone
    assert is_stale(Owner(host, me.pid, me.start + 1))  # PID reused by another process
    assert not is_stale(Owner("0badf00d", _NO_PID, 1))  # another host's: never touched
    assert not is_stale(me)


def test_clean_stale_removes_only_dead_owners_paths(tmp_path: Path) -> None:
    mine = scratch_path(tmp_path, "4df29be4")
    mine.mkdir()
    host = _host(mine)
    me = owner_of(mine)
    assert me is not None
    dead = tmp_path / f"4df29be4{TAG}{host}-{_NO_PID}-77"
    (dead / "ggml" / "src").mkdir(parents=True)
    (dead / "ggml" / "src" / "ggml.c").write_text("x" * 1000)
    reused = tmp_path / f".key{TAG}{host}-{me.pid}-{me.start + 5}"
    reused.write_text("half a manifest")
    foreign = tmp_path / f"x{TAG}0badf00d-{_NO_PID}-1"
    foreign.mkdir()
    plain = tmp_path / "4df29be4f4c3673f428170fda944a5b19f743bb8"
    plain.mkdir()
    removed = clean_stale([tmp_path, tmp_path / "absent"])
    assert sorted(removed) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert mine.is_dir() and foreign.is_dir() and plain.is_dir()
