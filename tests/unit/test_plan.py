from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sdrpc_build.build.plan import (
    PENDING_TARGET,
    BuildDirs,
    BuildRequest,
    TreeFacts,
    build_argv,
    build_dirs,
    cache_key,
    commands,
    configure_argv,
    make_plan,
    parse_define,
    project_include_text,
    read_tree_facts,
)
from sdrpc_build.build.recipes import load_recipe
from sdrpc_build.errors import UsageError

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"
NEW = TreeFacts(
    "tools/rpc", "ggml-rpc-server", (5, 0, 0), frozenset({"GGML_HIP"}), frozenset({"tools/rpc"})
)
OLD = TreeFacts(
    "examples/rpc",
    "rpc-server",
    (1, 0, 0),
    frozenset({"GGML_HIPBLAS"}),
    frozenset({"examples/rpc"}),
)


def req(**kw: object) -> BuildRequest:
    base = BuildRequest(
        commit=SHA, max_name=160, recipe=load_recipe("cpu"), tool_versions=(("cmake", "3.30.0"),)
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_configure_argv_exact() -> None:
    plan = make_plan(req(), NEW)
    argv = configure_argv(plan, "cmake", Path("/src"), Path("/b"), "/bin/ninja")
    assert argv == [
        "cmake",
        "-S",
        "/src",
        "-B",
        "/b",
        "-G",
        "Ninja",
        "-DCMAKE_MAKE_PROGRAM=/bin/ninja",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_RPC=ON",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DGGML_CUDA=OFF",
        "-DGGML_VULKAN=OFF",
        "-DGGML_METAL=OFF",
        "-DCMAKE_PROJECT_INCLUDE=/b/sdrpc-defines.cmake",
    ]
    assert "GGML_BUILD_SHARED_LIBS" not in " ".join(argv)  # the documented no-op
    assert build_argv(plan, "cmake", Path("/b"), 2) == [
        "cmake",
        "--build",
        "/b",
        "--target",
        "ggml-rpc-server",
        "--config",
        "Release",
        "--parallel",
        "2",
    ]


def test_old_tree_keeps_examples_and_old_target() -> None:
    plan = make_plan(req(), OLD)
    assert dict(plan.defines)["LLAMA_BUILD_EXAMPLES"] == "ON"
    assert build_argv(plan, "cmake", Path("/b"))[4] == "rpc-server"


def test_hip_variant_renames_switch() -> None:
    hip = load_recipe("hip")
    assert dict(make_plan(req(recipe=hip), NEW).defines)["GGML_HIP"] == "ON"
    old = dict(make_plan(req(recipe=hip), OLD).defines)
    assert old["GGML_HIPBLAS"] == "ON" and "GGML_HIP" not in old


def test_portable_and_user_defines_win() -> None:
    d = dict(make_plan(req(portable=True, user_defines=(("GGML_CUDA", "ON"),)), NEW).defines)
    assert d["GGML_NATIVE"] == "OFF"
    assert d["GGML_CUDA"] == "ON"


def test_project_include_reaches_every_language() -> None:
    text = project_include_text(160)
    assert "add_compile_definitions(GGML_MAX_NAME=160)" in text
    assert "CMAKE_C_FLAGS" not in text


def test_cache_key_covers_every_input() -> None:
    base = cache_key(req())
    assert base.startswith("cpu-4df29be4f4-n160-")
    assert cache_key(req()) == base
    variants = [
        req(max_name=128),
        req(commit="0" * 40),
        req(portable=True),
        req(user_defines=(("A", "1"),)),
        req(tool_versions=(("cmake", "3.31.0"),)),
        req(source_state="dirty:abc"),
        req(recipe=load_recipe("vulkan")),
    ]
    keys = {cache_key(r) for r in variants}
    assert base not in keys and len(keys) == len(variants)


def test_dry_run_plan_without_tree() -> None:
    plan = make_plan(req(), None)
    assert plan.target is None
    assert any("target name" in n for n in plan.notes)
    with pytest.raises(UsageError):
        build_argv(plan, "cmake", Path("/b"))


@pytest.mark.parametrize("bad", ["GGML_MAX_NAME=128", "GGML_RPC=OFF", "noequals", "1A=2"])
def test_parse_define_refuses(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_define(bad)


def test_parse_define_typed() -> None:
    assert parse_define("GGML_CUDA_F16:BOOL=ON") == ("GGML_CUDA_F16", "ON")


def test_read_tree_facts(tmp_path: Path) -> None:
    (tmp_path / "tools" / "rpc").mkdir(parents=True)
    (tmp_path / "tools" / "rpc" / "CMakeLists.txt").write_text("set(TARGET ggml-rpc-server)\n")
    (tmp_path / "ggml" / "include").mkdir(parents=True)
    (tmp_path / "ggml" / "CMakeLists.txt").write_text('option(GGML_HIP "x" OFF)\n')
    (tmp_path / "ggml" / "include" / "ggml-rpc.h").write_text(
        "#define RPC_PROTO_MAJOR_VERSION 7\n#define RPC_PROTO_MINOR_VERSION 0\n"
        "#define RPC_PROTO_PATCH_VERSION 0\n"
    )
    f = read_tree_facts(tmp_path)
    assert (f.target, f.server_dir, f.protocol) == ("ggml-rpc-server", "tools/rpc", (7, 0, 0))
    assert "GGML_HIP" in f.options


def test_commands_are_what_runs_and_what_dry_run_prints() -> None:
    """One place for the directories and both command lines, tree known or not."""
    cache = Path("/c")
    pending = make_plan(req(), None)
    dirs = build_dirs(cache, pending.key, Path("/c/sources") / SHA)
    assert dirs == BuildDirs(Path("/c/sources") / SHA, Path("/c/builds") / pending.key)
    cmds = commands(pending, dirs, jobs=4)
    assert cmds.configure == tuple(configure_argv(pending, "cmake", dirs.project, dirs.build))
    assert cmds.build == (
        "cmake", "--build", f"/c/builds/{pending.key}", "--target", PENDING_TARGET,
        "--config", "Release", "--parallel", "4",
    )  # fmt: skip
    known = make_plan(req(), NEW)
    real = commands(known, dirs, "/bin/cmake", "/bin/ninja")
    assert real.build == tuple(build_argv(known, "/bin/cmake", dirs.build))
    assert "ggml-rpc-server" in real.build and "-DCMAKE_MAKE_PROGRAM=/bin/ninja" in real.configure
    exact = build_dirs(cache, "k", Path("/src"), exact=True)
    assert exact == BuildDirs(Path("/c/builds/k.src"), Path("/c/builds/k"))
