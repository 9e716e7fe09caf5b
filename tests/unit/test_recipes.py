from __future__ import annotations

import pytest

from sdrpc_build.errors import RecipeError
from sdrpc_build.recipes import builtin_recipe_dir, list_recipes, load_recipe, parse_recipe

REQUIRED = {"cpu", "cuda", "vulkan", "metal", "hip", "sycl", "musa", "opencl", "blas"}


def test_builtin_recipes_all_valid() -> None:
    names = {r.name for r in list_recipes()}
    assert names >= REQUIRED
    for r in list_recipes():
        assert r.defines, r.name
        assert len(r.sha256) == 64


def test_recipe_dir_resolves() -> None:
    assert (builtin_recipe_dir() / "cpu.toml").is_file()


def test_unknown_backend_suggests() -> None:
    with pytest.raises(RecipeError, match="did you mean 'vulkan'"):
        load_recipe("vulkn")


def test_unknown_key_suggests() -> None:
    with pytest.raises(RecipeError, match="did you mean 'defines'"):
        parse_recipe("x", b'[define]\nA = "ON"\n', "x.toml")


def test_wrong_types() -> None:
    with pytest.raises(RecipeError, match="'platforms' must be a list"):
        parse_recipe("x", b'platforms = "linux"\n[defines]\nA = "ON"\n', "x.toml")
    with pytest.raises(RecipeError, match="unknown value 'linx'"):
        parse_recipe("x", b'platforms = ["linx"]\n[defines]\nA = "ON"\n', "x.toml")
    with pytest.raises(RecipeError, match="not valid TOML"):
        parse_recipe("x", b"[defines\n", "x.toml")
    with pytest.raises(RecipeError, match="GGML_MAX_NAME cannot be set"):
        parse_recipe("x", b"[defines]\nGGML_MAX_NAME = 128\n", "x.toml")
    with pytest.raises(RecipeError, match="missing \\[defines\\]"):
        parse_recipe("x", b'description = "d"\n', "x.toml")


def test_bool_defines_and_tools() -> None:
    r = parse_recipe(
        "x",
        b'[defines]\nA = true\nB = false\n[[tools]]\nname = "nvcc"\ninstall.linux = "apt"\n',
        "x.toml",
    )
    assert r.defines == (("A", "ON"), ("B", "OFF"))
    assert r.tools[0].install_hint("linux") == "apt"
    assert "install nvcc" in r.tools[0].install_hint("macos")


def test_hip_variants() -> None:
    hip = load_recipe("hip")
    old = frozenset({"GGML_HIPBLAS"})
    assert hip.variants[0].matches(old, frozenset())
    assert not hip.variants[0].matches(frozenset({"GGML_HIP"}), frozenset())
