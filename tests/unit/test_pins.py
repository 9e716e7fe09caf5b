from __future__ import annotations

from pathlib import Path

import pytest

from sdrpc_build.errors import PinsError
from sdrpc_build.pins import (
    apply_overrides,
    parse_gitmodules,
    parse_max_name,
    parse_rpc_version,
    parse_sync_llama_last,
    read_sd_tree,
)

SHA = "b0f0dd3e516a783b46bb15b20e6a6579367e2ff2"


def test_sync_llama_last_valid() -> None:
    assert parse_sync_llama_last((SHA + "\n").encode(), "f") == SHA
    assert parse_sync_llama_last(SHA.encode(), "f") == SHA


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (SHA[:39].encode() + b"\n", "39 characters"),
        (SHA.upper().encode(), "not a lowercase hex"),
        ((SHA[:-1] + "g").encode(), "not a lowercase hex"),
        (f"{SHA}\n{SHA}\n".encode(), "more than one line"),
        (b"\xff" * 40, "not ASCII"),
    ],
)
def test_sync_llama_last_invalid(data: bytes, why: str) -> None:
    with pytest.raises(PinsError, match=why) as ei:
        parse_sync_llama_last(data, "ggml/scripts/sync-llama.last")
    assert ei.value.hint and "--llama-commit" in ei.value.hint


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("add_definitions(-DGGML_MAX_NAME=128)", 128),
        ('add_definitions("-DGGML_MAX_NAME=160")', 160),
        ("add_compile_definitions(GGML_MAX_NAME=160)", 160),
        ("ADD_DEFINITIONS( -DFOO=1 -DGGML_MAX_NAME=256 )", 256),
        ("if (NOT SD_USE_SYSTEM_GGML)\n  add_definitions(-DGGML_MAX_NAME=128)\nendif()", 128),
        (
            "if (SD_USE_SYSTEM_GGML)\n  add_definitions(-DGGML_MAX_NAME=64)\nelse()\n"
            "  add_definitions(-DGGML_MAX_NAME=160)\nendif()",
            160,
        ),
        ("# add_definitions(-DGGML_MAX_NAME=999)\nadd_definitions(-DGGML_MAX_NAME=160)", 160),
        ("project(x)", None),
    ],
)
def test_parse_max_name(text: str, want: int | None) -> None:
    assert parse_max_name(text) == want


def test_parse_max_name_errors() -> None:
    with pytest.raises(PinsError, match="not a positive number"):
        parse_max_name("add_definitions(-DGGML_MAX_NAME=abc)")
    with pytest.raises(PinsError, match="different values"):
        parse_max_name("add_definitions(-DGGML_MAX_NAME=128)\nadd_definitions(-DGGML_MAX_NAME=160)")


def test_rpc_version_and_gitmodules() -> None:
    h = (
        "#define RPC_PROTO_MAJOR_VERSION    3\n#define RPC_PROTO_MINOR_VERSION 6\n"
        "#define RPC_PROTO_PATCH_VERSION 1\n"
    )
    assert parse_rpc_version(h) == (3, 6, 1)
    assert parse_rpc_version("nothing") is None
    gm = (
        '[submodule "ggml"]\n    path = ggml\n\turl = https://github.com/leejet/ggml.git\n'
        '[submodule "x"]\n path = x\n url = u\n'
    )
    assert parse_gitmodules(gm) == {"ggml": "https://github.com/leejet/ggml.git", "x": "u"}


def _tree(
    tmp: Path,
    cm: str = 'project("stable-diffusion")\nadd_definitions(-DGGML_MAX_NAME=160)\n',
    sync: bytes | None = (SHA + "\n").encode(),
) -> Path:
    (tmp / "ggml" / "scripts").mkdir(parents=True)
    (tmp / "ggml" / "include").mkdir()
    (tmp / "CMakeLists.txt").write_text(cm)
    if sync is not None:
        (tmp / "ggml" / "scripts" / "sync-llama.last").write_bytes(sync)
    (tmp / "ggml" / "include" / "ggml-rpc.h").write_text(
        "#define RPC_PROTO_MAJOR_VERSION 5\n#define RPC_PROTO_MINOR_VERSION 0\n"
        "#define RPC_PROTO_PATCH_VERSION 1\n"
    )
    (tmp / ".gitmodules").write_text(
        '[submodule "ggml"]\npath = ggml\nurl = https://github.com/leejet/ggml.git\n'
    )
    return tmp


def test_read_plain_tree(tmp_path: Path) -> None:
    pins = read_sd_tree(_tree(tmp_path))
    assert pins.llama_commit.value == SHA
    assert pins.llama_commit.source == "ggml/scripts/sync-llama.last"
    assert pins.max_name.value == 160
    assert pins.client_protocol.value == (5, 0, 1)
    assert pins.ggml_url.value == "https://github.com/leejet/ggml.git"
    assert pins.sd_commit.value is None and "not a git checkout" in pins.sd_commit.source
    o = apply_overrides(pins, max_name=128)
    assert (o.max_name.value, o.max_name.source) == (128, "--max-name")


def test_read_tree_errors(tmp_path: Path) -> None:
    with pytest.raises(PinsError, match="not a stable-diffusion.cpp tree"):
        read_sd_tree(tmp_path)
    (tmp_path / "CMakeLists.txt").write_text('project("stable-diffusion")\n')
    with pytest.raises(PinsError, match="not initialised") as ei:
        read_sd_tree(tmp_path)
    assert ei.value.hint and "submodule update --init" in ei.value.hint


def test_read_tree_missing_pieces(tmp_path: Path) -> None:
    t = _tree(tmp_path / "a", sync=None)
    with pytest.raises(PinsError, match="sync-llama.last is missing"):
        read_sd_tree(t)
    assert read_sd_tree(t, llama_commit=SHA).llama_commit.source == "--llama-commit"
    t2 = _tree(tmp_path / "b", cm='project("stable-diffusion")\n')
    with pytest.raises(PinsError, match="no GGML_MAX_NAME"):
        read_sd_tree(t2)
    assert read_sd_tree(t2, max_name=128).max_name.value == 128
    with pytest.raises(PinsError, match="full 40-hex"):
        read_sd_tree(t2, llama_commit="abc123", max_name=1)
