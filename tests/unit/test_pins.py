from __future__ import annotations

from pathlib import Path

import pytest

from sdrpc_build.build.pins import (
    apply_overrides,
    check_max_name,
    max_name_problem,
    parse_gitmodules,
    parse_max_name,
    parse_max_name_value,
    parse_rpc_version,
    parse_sync_llama_last,
    read_sd_tree,
)
from sdrpc_build.errors import PinsError, UsageError

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
    assert str(pins.ggml_url.value) == "https://github.com/leejet/ggml.git"
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


@pytest.mark.parametrize("ok", [16, 64, 128, 160, 256, 65536])
def test_max_name_values_ggml_builds(ok: int) -> None:
    assert max_name_problem(ok) is None
    assert check_max_name(ok, "--max-name") == ok
    assert parse_max_name_value(str(ok), "--max-name") == ok


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (0, "out of range"),
        (7, "out of range"),
        (8, "out of range"),
        (24, "nearest: 16 or 32"),  # rpc_tensor is fine, ggml_tensor is not
        (100, "nearest: 96 or 112"),
        (65552, "out of range"),
    ],
)
def test_max_name_values_ggml_cannot_build(bad: int, why: str) -> None:
    assert why in (max_name_problem(bad) or "")
    with pytest.raises(UsageError, match=why) as ei:
        check_max_name(bad, "--max-name", UsageError)
    assert ei.value.exit_code == 2 and ei.value.hint and "multiple of 16" in ei.value.hint
    with pytest.raises(PinsError, match=why):
        parse_max_name_value(str(bad), "CMakeLists.txt")


@pytest.mark.parametrize("text", ["²", "٣", "１６０", "0160", "+160", "-160", "", "1e3", "9" * 400])
def test_max_name_text_that_is_not_a_plain_number(text: str) -> None:
    with pytest.raises(PinsError) as ei:
        parse_max_name_value(text, "CMakeLists.txt")
    assert ei.value.hint and "multiple of 16" in ei.value.hint
    assert len(ei.value.message) < 200  # one line, even for 400 digits


@pytest.mark.parametrize("value", ["²", "9" * 400, "100", "7"])
def test_cmakelists_max_name_is_validated(tmp_path: Path, value: str) -> None:
    cm = f'project("stable-diffusion")\nadd_definitions(-DGGML_MAX_NAME={value})\n'
    with pytest.raises(PinsError, match="GGML_MAX_NAME"):
        parse_max_name(cm)
    with pytest.raises(PinsError) as ei:
        read_sd_tree(_tree(tmp_path, cm=cm))
    assert ei.value.exit_code == 3 and ei.value.hint


@pytest.mark.parametrize("value", ["٥", "9" * 400, "256", "x"])
def test_rpc_version_garbage_is_a_pins_error(value: str) -> None:
    h = (
        f"#define RPC_PROTO_MAJOR_VERSION {value}\n#define RPC_PROTO_MINOR_VERSION 0\n"
        "#define RPC_PROTO_PATCH_VERSION 0\n"
    )
    with pytest.raises(PinsError, match="RPC_PROTO_MAJOR_VERSION"):
        parse_rpc_version(h)


def test_unreadable_tree_files_are_pins_errors(tmp_path: Path) -> None:
    t = _tree(tmp_path / "t")
    (t / "CMakeLists.txt").unlink()
    # root reads any file whatever its mode: /proc/self/mem fails on read for everyone
    (t / "CMakeLists.txt").symlink_to("/proc/self/mem")
    with pytest.raises(PinsError, match="cannot read .*CMakeLists.txt") as ei:
        read_sd_tree(t)
    assert ei.value.hint and "readable" in ei.value.hint
    long = tmp_path / ("d" * 100_000)
    with pytest.raises(PinsError) as ei:
        read_sd_tree(long)
    assert len(ei.value.message) < 400 and "100" in ei.value.message


def test_gitmodules_credentials_never_leave_the_pin(tmp_path: Path) -> None:
    t = _tree(tmp_path)
    (t / ".gitmodules").write_text(
        '[submodule "ggml"]\npath = ggml\nurl = https://carol:ghp_TOKgm@github.com/leejet/ggml\n'
    )
    pins = read_sd_tree(t)
    url = pins.ggml_url.value
    assert url is not None and url.reveal().startswith("https://carol:ghp_TOKgm@")
    shown = repr(pins) + str(pins.as_dict()) + str(url)
    assert "ghp_TOKgm" not in shown and "carol" not in shown
    assert pins.as_dict()["ggml_url"]["value"] == "https://***@github.com/leejet/ggml"
