from __future__ import annotations

import pytest

from sdrpc_build.build.doctor.requires import VERSION_PARSERS
from sdrpc_build.build.recipes import (
    VERSION_READERS,
    builtin_recipe_dir,
    list_recipes,
    load_recipe,
    parse_recipe,
)
from sdrpc_build.errors import RecipeError

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


def test_requires_entries() -> None:
    r = parse_recipe(
        "x",
        b"""[defines]
A = "ON"
[[requires]]
name = "vk"
kind = "header"
files = ["vulkan/vulkan_core.h"]
dirs = ["$ENV{VULKAN_SDK}/include"]
define = "Vulkan_INCLUDE_DIR"
min_version = "1.3.272"
version_from = "vulkan-header"
platforms = ["linux"]
install.linux = "install headers >= {min_version}"
""",
        "x.toml",
    )
    (req,) = r.requires
    assert (req.kind, req.files, req.define, req.platforms) == (
        "header",
        ("vulkan/vulkan_core.h",),
        "Vulkan_INCLUDE_DIR",
        ("linux",),
    )
    assert req.min_version == (1, 3, 272)
    assert req.install_hint("linux") == "install headers >= 1.3.272"
    assert req.install_hint("windows") == "install the package that provides vk"
    assert r.tools == r.requires


def test_bad_requires_entries() -> None:
    def parse(body: str) -> None:
        parse_recipe("x", ('[defines]\nA = "ON"\n[[requires]]\n' + body).encode(), "x.toml")

    with pytest.raises(RecipeError, match="did you mean 'header'"):
        parse('name = "a"\nkind = "headr"\n')
    with pytest.raises(RecipeError, match="did you mean 'files'"):
        parse('name = "a"\nfile = ["a"]\n')
    with pytest.raises(RecipeError, match="missing 'name'"):
        parse('kind = "tool"\n')
    with pytest.raises(RecipeError, match="min_version and version_from go together"):
        parse('name = "a"\nmin_version = "1.2"\n')
    with pytest.raises(RecipeError, match="unknown version_from"):
        parse('name = "a"\nmin_version = "1.2"\nversion_from = "x"\n')
    with pytest.raises(RecipeError, match="'1.x' is not a version"):
        parse('name = "a"\nmin_version = "1.x"\nversion_from = "vulkan-header"\n')
    with pytest.raises(RecipeError, match="unknown platform 'linx'"):
        parse('name = "a"\ninstall.linx = "apt"\n')


def test_every_version_reader_named_by_recipes_exists() -> None:
    assert set(VERSION_READERS) == set(VERSION_PARSERS)


def test_vulkan_minimum_header_version_lives_in_its_recipe() -> None:
    (vk,) = [r for r in load_recipe("vulkan").requires if r.name == "vulkan-headers"]
    assert vk.min_version == (1, 3, 272)
    assert "Vulkan headers >= 1.3.272" in vk.install_hint("linux")
