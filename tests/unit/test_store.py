from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sdrpc_build.build.scratch import TAG, owner_of, scratch_path
from sdrpc_build.build.store import (
    UNKNOWN,
    ExactRef,
    Manifest,
    RecipeRef,
    SourceRef,
    ToolVersions,
    find_manifest,
    install_entry,
    list_manifests,
    lookup,
    prepare_cache,
)
from sdrpc_build.errors import StoreError

_NO_PID = 2**22 + 12345  # above Linux's pid_max: no such process


def _manifest(created: str, backend: str = "cpu") -> Manifest:
    return Manifest(
        backend=backend,
        commit="a" * 40,
        max_name=160,
        protocol="5.0.0",
        target="ggml-rpc-server",
        created=created,
        platform="linux-x86_64",
        verify={"ok": True},
    )


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
    again = install_entry(arts, "k1", binary, replace(m, notes=("x",)))  # --force
    assert again.notes == ("x",) and again.key == m.key
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
    (tmp_path / "cache").write_text("")
    assert list_manifests(tmp_path / "nowhere" / "artifacts") == []
    with pytest.raises(StoreError):
        list_manifests(tmp_path / "cache" / "artifacts")


def test_manifest_round_trip_keeps_types_and_unknown_keys(tmp_path: Path) -> None:
    m = Manifest(
        backend="vulkan",
        commit="b" * 40,
        max_name=128,
        target="rpc-server",
        created="2026-03-01T00:00:00Z",
        recipe=RecipeRef("vulkan", "recipes/vulkan.toml", "c" * 64),
        source=SourceRef("git", "https://***@example.com/llama.cpp.git"),
        exact=ExactRef("/sd/ggml", "sha256:d"),
        tools=ToolVersions("3.28.3", None, "cc 13", True),
        defines=(("GGML_RPC", "ON"), ("GGML_VULKAN", "ON")),  # sorted: JSON keys are
        notes=("a note",),
        verify={"ok": True, "devices": ["Vulkan0"]},
        extra={"from_a_newer_sdrpc": [1, 2]},
        path=tmp_path,
    )
    doc = json.loads(m.to_json())
    assert doc["protocol"] is None  # UNKNOWN is written as null
    assert doc["defines"] == {"GGML_VULKAN": "ON", "GGML_RPC": "ON"}
    assert doc["tools"] == {"cmake": "3.28.3", "ninja": None, "compiler": "cc 13", "ccache": True}
    assert doc["from_a_newer_sdrpc"] == [1, 2] and "extra" not in doc and "path" not in doc
    doc["key"], doc["binary"] = "k", "bin/rpc-server"
    back = Manifest.from_dict(doc, tmp_path)
    assert back == replace(m, key="k", binary_path="bin/rpc-server")
    assert (
        back.protocol == UNKNOWN
        and back.verified
        and back.binary == tmp_path / "bin" / "rpc-server"
    )


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"key": "k"}',
        '{"key": "k", "binary": "b", "backend": "cpu", '
        '"commit": "c", "max_name": "many", "target": "t", "created": "x"}',
        '{"key": "k", "binary": "b", "backend": "cpu", "commit": "c", "max_name": 1, '
        '"target": "t", "created": "x", "source": {"origin": "no method"}}',
    ],
)
def test_a_corrupt_manifest_is_a_store_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(StoreError, match="corrupt store entry") as info:
        Manifest.load(tmp_path)
    assert info.value.exit_code == 9
