"""--vulkan-headers PATH: finding, verifying and keying Vulkan headers; what verification
records and says (auto, with real git: tests/integration/test_vulkan_headers.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sdrpc_build.build.plan import BuildRequest, cache_key, make_plan
from sdrpc_build.build.recipes import load_recipe
from sdrpc_build.build.verify import cpu_only_warning, judge_verification, runtime_env
from sdrpc_build.build.vulkan_headers import (
    Headers,
    HeadersChoice,
    content_digest,
    from_path,
    include_dir_of,
    prepare,
)
from sdrpc_build.cli import build as cli_build
from sdrpc_build.cli.build_report import shout
from sdrpc_build.errors import UsageError
from sdrpc_build.protocol.probe import ProbeResult

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"


def core_h(patch: int, minor: int = 4) -> str:
    return (
        f"#define VK_HEADER_VERSION {patch}\n"
        "#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION"
        f"(0, 1, {minor}, VK_HEADER_VERSION)\n"
    )


def headers(root: Path, patch: int = 309, minor: int = 4, extra: str = "") -> Path:
    """An include dir with vulkan/vulkan_core.h (and vk_video/) at ``root``."""
    (root / "vulkan").mkdir(parents=True)
    (root / "vulkan" / "vulkan_core.h").write_text(core_h(patch, minor) + extra)
    (root / "vk_video").mkdir()
    (root / "vk_video" / "vulkan_video_codecs_common.h").write_text("// codecs\n")
    return root


# ---------------------------------------------------------------- PATH


def test_path_may_be_an_include_dir_a_checkout_or_an_sdk(tmp_path: Path) -> None:
    inc = headers(tmp_path / "sdk" / "include")
    for given in (inc, tmp_path / "sdk"):
        assert include_dir_of(given) == inc
    assert include_dir_of(tmp_path) is None
    h = from_path(str(tmp_path / "sdk"), {})
    assert (h.include_dir, h.version, h.source) == (inc.resolve(), (1, 4, 309), "path")
    assert h.defines() == (("Vulkan_INCLUDE_DIR", str(inc.resolve())),)
    # the LunarG SDK sets VULKAN_SDK: headers from there say so
    assert from_path(str(inc), {"VULKAN_SDK": str(tmp_path / "sdk")}).source == "VULKAN_SDK"


def test_path_without_headers_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no vulkan/vulkan_core.h in it") as info:
        from_path(str(tmp_path), {})
    assert "--vulkan-headers auto" in (info.value.hint or "")
    (tmp_path / "vulkan").mkdir()
    (tmp_path / "vulkan" / "vulkan_core.h").write_text("// not real\n")
    with pytest.raises(UsageError, match="no VK_HEADER_VERSION"):
        from_path(str(tmp_path), {})


def test_the_key_holds_what_the_headers_are_not_where(tmp_path: Path) -> None:
    """The same headers at two paths are one build; changed headers at one path a new one."""
    a = from_path(str(headers(tmp_path / "a")), {})
    b = from_path(str(headers(tmp_path / "b")), {})
    assert a.include_dir != b.include_dir and a.digest == b.digest
    recipe = load_recipe("vulkan")

    def request(h: Headers) -> BuildRequest:
        return BuildRequest(
            commit=SHA,
            max_name=160,
            recipe=recipe,
            resolved_defines=h.defines(),
            inputs=(h.key_input(),),
        )

    assert cache_key(request(a)) == cache_key(request(b))
    plan = make_plan(request(a), None)
    assert dict(plan.defines)["Vulkan_INCLUDE_DIR"] == str(a.include_dir)
    (tmp_path / "b" / "vk_video" / "vulkan_video_codecs_common.h").write_text("// changed\n")
    c = from_path(str(tmp_path / "b"), {})
    assert c.digest != a.digest and cache_key(request(c)) != cache_key(request(a))
    # nothing but vulkan/ and vk_video/ counts
    (tmp_path / "b" / "zlib.h").write_text("// another library\n")
    assert content_digest(tmp_path / "b") == c.digest
    # a build without such inputs keeps the key it always had
    plain = BuildRequest(commit=SHA, max_name=160, recipe=recipe)
    assert cache_key(plain) == cache_key(replace(plain, resolved_defines=()))
    assert cache_key(plain) != cache_key(replace(plain, inputs=(a.key_input(),)))


def test_choice_is_checked_before_anything(tmp_path: Path) -> None:
    inc = headers(tmp_path / "inc")
    with pytest.raises(UsageError, match="for Vulkan builds, not --backend cpu"):
        prepare(HeadersChoice(str(inc)), load_recipe("cpu"), (), {}, tmp_path)
    with pytest.raises(UsageError, match="-D Vulkan_INCLUDE_DIR both say"):
        prepare(
            HeadersChoice("auto"),
            load_recipe("vulkan"),
            (("Vulkan_INCLUDE_DIR", str(inc)),),
            {},
            tmp_path,
        )
    assert prepare(None, load_recipe("cpu"), (), {}, tmp_path) is None
    # auto not fetched yet: nothing without the network
    assert prepare(HeadersChoice("auto"), load_recipe("vulkan"), (), {}, tmp_path) is None


# ---------------------------------------------------------------- verification


def test_runtime_env_records_the_backends_variables_never_secrets() -> None:
    env = {
        "VK_ICD_FILENAMES": "/icd/a.json:/icd/b.json",
        "GGML_VK_VISIBLE_DEVICES": "0,1",
        "MESA_SHADER_CACHE_DIR": "/cache/mesa",
        "VK_LOADER_DEBUG": "error",
        "MESA_API_TOKEN": "hunter2",
        "VK_LAYER_PATH": "https://u:pw1234@example.invalid/layers",
        "HOME": "/root",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    got = runtime_env(env, "vulkan", "GGML_VK_VISIBLE_DEVICES")
    assert set(got) == {
        "VK_ICD_FILENAMES",
        "GGML_VK_VISIBLE_DEVICES",
        "MESA_SHADER_CACHE_DIR",
        "VK_LOADER_DEBUG",
        "VK_LAYER_PATH",
    }
    assert got["VK_ICD_FILENAMES"] == "/icd/a.json:/icd/b.json"
    assert "pw1234" not in got["VK_LAYER_PATH"]
    assert runtime_env(env, "cuda", "CUDA_VISIBLE_DEVICES") == {"CUDA_VISIBLE_DEVICES": "0"}
    assert runtime_env(env, "cpu") == {}


def test_a_vulkan_build_listing_only_the_cpu_is_warned_about() -> None:
    answered = ProbeResult("127.0.0.1:1", "127.0.0.1", 1, "ok", protocol=(5, 0, 0), max_name=160)
    _, warnings = judge_verification(
        answered,
        tree_protocol=(5, 0, 0),
        client_protocol=None,
        max_name=160,
        devices=("CPU",),
        device_prefix="Vulkan",
        visible_devices_env="GGML_VK_VISIBLE_DEVICES",
    )
    (w,) = warnings
    assert w.startswith("ONLY THE CPU: no Vulkan device listed (only CPU)")
    assert "GGML_VK_VISIBLE_DEVICES" in w and "lavapipe" in w
    _, warnings = judge_verification(
        answered,
        tree_protocol=(5, 0, 0),
        client_protocol=None,
        max_name=160,
        devices=("Vulkan0", "CPU"),
        device_prefix="Vulkan",
    )
    assert warnings == []
    assert "CUDA_VISIBLE_DEVICES" in cpu_only_warning("CUDA", ("CPU",), "CUDA_VISIBLE_DEVICES")


def test_shout_frames_every_line(tmp_path: Path) -> None:
    out = tmp_path / "err"
    with out.open("w") as f:
        shout("sdrpc-build", "ONLY THE CPU: no Vulkan device listed", file=f)
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(ln.startswith("sdrpc-build: WARNING: ") for ln in lines)
    assert lines[0] == lines[2] and set(lines[0].split(": ")[-1]) == {"*"}


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--vulkan-headers-repo", "file:///x"], "only used with --vulkan-headers auto"),
        (["--vulkan-headers", " "], "needs 'auto' or a path"),
        (["--vulkan-headers", "auto"], "for Vulkan builds, not --backend cpu"),
    ],
)
def test_cli_usage_errors(
    argv: list[str], text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--llama-commit", SHA, "--max-name", "160", "--cache-dir", str(tmp_path)]
    assert cli_build.main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert "sdrpc-build: error: " in err and text in err, err
    assert "sdrpc-build: hint: " in err and "Traceback" not in err
