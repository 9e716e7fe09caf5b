from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdrpc_build.build.scratch import TAG, owner_of, scratch_path
from sdrpc_build.build.store import (
    find_manifest,
    install_entry,
    list_manifests,
    lookup,
    prepare_cache,
    update_manifest,
)
from sdrpc_build.errors import StoreError

_NO_PID = 2**22 + 12345  # above Linux's pid_max: no such process


def _manifest(created: str, backend: str = "cpu") -> dict[str, object]:
    return {
        "backend": backend,
        "commit": "a" * 40,
        "max_name": 160,
        "protocol": "5.0.0",
        "target": "ggml-rpc-server",
        "created": created,
        "platform": "linux-x86_64",
        "verify": {"ok": True},
    }


def test_install_and_lookup(tmp_path: Path) -> None:
    binary = tmp_path / "ggml-rpc-server"
    binary.write_bytes(b"\x7fELF fake")
    arts = tmp_path / "arts"
    m = install_entry(arts, "k1", binary, _manifest("2026-01-01T00:00:00Z"))
    assert m.binary.read_bytes() == b"\x7fELF fake"
    assert m.verified and m.max_name == 160
    data = json.loads((arts / "k1" / "manifest.json").read_text())
    assert len(data["binary_sha256"]) == 64
    assert lookup(arts, "k1") == m
    assert lookup(arts, "missing") is None
    assert not list(arts.glob(f"*{TAG}*"))


def test_leftovers_and_damage_are_not_entries(tmp_path: Path) -> None:
    arts = tmp_path / "arts"
    owner = owner_of(scratch_path(arts, "x"))
    assert owner is not None
    killed = arts / f".k9{TAG}{owner.host}-{_NO_PID}-42"  # a write killed with SIGKILL
    (killed / "bin").mkdir(parents=True)
    (arts / "k2").mkdir()
    (arts / "k2" / "manifest.json").write_text("{not json")
    assert list_manifests(arts) == []
    binary = tmp_path / "b"
    binary.write_bytes(b"x")
    m = install_entry(arts, "k1", binary, _manifest("2026-01-01T00:00:00Z"))
    assert not killed.exists()  # cleaned by the next write, whatever its key
    (arts / "k1" / f".manifest.json{TAG}{owner.host}-{_NO_PID}-1").write_text("{")
    assert update_manifest(m, {"note": "x"}).data["note"] == "x"
    assert sorted(p.name for p in (arts / "k1").iterdir()) == ["bin", "manifest.json"]


def test_newest_first_and_find(tmp_path: Path) -> None:
    arts = tmp_path / "arts"
    binary = tmp_path / "b"
    binary.write_bytes(b"x")
    install_entry(arts, "cpu-old", binary, _manifest("2026-01-01T00:00:00Z"))
    install_entry(arts, "cpu-new", binary, _manifest("2026-02-01T00:00:00Z"))
    assert [m.key for m in list_manifests(arts)] == ["cpu-new", "cpu-old"]
    assert find_manifest(arts, "cpu-n").key == "cpu-new"
    assert find_manifest(arts, str(arts / "cpu-old" / "manifest.json")).key == "cpu-old"
    with pytest.raises(StoreError, match="matches 2"):
        find_manifest(arts, "cpu-")
    with pytest.raises(StoreError, match="no build"):
        find_manifest(arts, "zzz")


@pytest.mark.parametrize("kind", ["file", "under-a-file", "too-long", "proc"])
def test_unusable_cache_is_a_store_error(tmp_path: Path, kind: str) -> None:
    if kind == "file":
        root = tmp_path / "cache"
        root.write_text("not a directory")
    elif kind == "under-a-file":
        (tmp_path / "f").write_text("x")
        root = tmp_path / "f" / "cache"
    elif kind == "too-long":
        root = tmp_path / ("c" * 100_000)
    else:  # not writable even for root
        root = Path("/proc/self/sdrpc-cache")
    with pytest.raises(StoreError) as ei:
        prepare_cache(root, ("locks",))
    e = ei.value
    assert e.exit_code == 9 and e.hint and "--cache-dir" in e.hint
    assert len(e.message) < 400 and "\n" not in e.message


def test_listing_a_cache_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    from sdrpc_build.build.store import list_manifests
    from sdrpc_build.errors import StoreError

    (tmp_path / "cache").write_text("")
    assert list_manifests(tmp_path / "nowhere" / "artifacts") == []
    with pytest.raises(StoreError):
        list_manifests(tmp_path / "cache" / "artifacts")
