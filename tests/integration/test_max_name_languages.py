"""GGML_MAX_NAME must reach every compiled language, GPU languages included.

The seed guide passes it through CMAKE_C_FLAGS/CMAKE_CXX_FLAGS only; a CUDA build
then compiles its .cu files with ggml's default (64) and links without a word.
sdrpc's plan defines it project-wide. Checked from CMake's own compile database,
produced by a real configure of the real llama.cpp tree with the real nvcc.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import servers

from sdrpc_build.build.plan import BuildRequest, configure_argv, make_plan, read_tree_facts
from sdrpc_build.build.recipes import load_recipe
from sdrpc_build.build.source import Source
from sdrpc_build.build.toolchain import discover_toolchain, prepare_build_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs the CUDA toolkit (nvcc)"),
]

V5 = servers.LLAMA_SDISTS["0.3.35"][0]


def _compile_db(build_dir: Path) -> list[dict[str, str]]:
    return list(json.loads((build_dir / "compile_commands.json").read_text()))


def _configure(argv: list[str]) -> None:
    """Configure; a toolkit without cuBLAS (nvcc alone, as on this CI machine) fails only
    at CMake's generate step, after the complete compile database has been written."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    no_cublas = "CUDA::cublas" in out and "Generating done" in out
    assert proc.returncode == 0 or no_cublas, out[-3000:]


def test_cuda_sources_see_max_name(tmp_path: Path) -> None:
    tree = servers.llama_tree("0.3.35")
    recipe = load_recipe("cuda")
    tools = discover_toolchain(recipe, os.environ)
    req = BuildRequest(
        commit=V5,
        max_name=160,
        recipe=recipe,
        user_defines=(("CMAKE_CUDA_ARCHITECTURES", "75"),),
        tool_versions=tools.versions(),
    )
    plan = make_plan(req, read_tree_facts(tree))
    build_dir = tmp_path / "sdrpc"
    prepare_build_dir(build_dir, Source(tree, V5, "local", str(tree)), plan)
    _configure(configure_argv(plan, tools.cmake, tree, build_dir, tools.ninja))
    db = _compile_db(build_dir)
    cu = [c for c in db if c["file"].endswith(".cu")]
    assert len(cu) > 10, "expected ggml-cuda's kernels in the compile database"
    missing = [c["file"] for c in db if "-DGGML_MAX_NAME=160" not in c["command"]]
    assert missing == []

    # the seed guide's recipe: C/C++ flags only -> the CUDA kernels never see it
    seed = tmp_path / "seed"
    _configure(
        [
            tools.cmake,
            "-S",
            str(tree),
            "-B",
            str(seed),
            "-G",
            "Ninja",
            "-DGGML_RPC=ON",
            "-DGGML_CUDA=ON",
            "-DCMAKE_CUDA_ARCHITECTURES=75",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_CURL=OFF",
            "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
            "-DCMAKE_C_FLAGS=-DGGML_MAX_NAME=160",
            "-DCMAKE_CXX_FLAGS=-DGGML_MAX_NAME=160",
        ]
    )
    seed_cu = [c for c in _compile_db(seed) if c["file"].endswith(".cu")]
    assert seed_cu
    assert all("GGML_MAX_NAME" not in c["command"] for c in seed_cu)
