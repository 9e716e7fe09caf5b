"""On this real machine, for every recipe, sdrpc doctor's verdict is what sdrpc-build does.

doctor once said blas and opencl could be built here, and sdrpc-build --backend
cuda failed in cmake (exit 7) on a machine with nvcc but without cuBLAS. Now one
preflight decides for both, so whatever this machine (or a CI machine with more
packages) has installed:

- a backend doctor calls unbuildable stops sdrpc-build with exit 6, doctor's own
  error and hint, before anything is fetched or configured;
- a backend doctor calls buildable passes the build's preflight and really
  configures: the real llama.cpp tree of llama-cpp-python 0.3.35 with the recipe's
  defines, configure only (a few seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import servers

from sdrpc_build.build.doctor import require_buildable
from sdrpc_build.build.plan import BuildRequest, configure_argv, make_plan, read_tree_facts
from sdrpc_build.build.recipes import list_recipes, load_recipe
from sdrpc_build.build.source import Source
from sdrpc_build.build.toolchain import discover_toolchain, prepare_build_dir
from sdrpc_build.errors import BuildError
from sdrpc_build.run import run_logged

pytestmark = pytest.mark.integration

V5 = servers.LLAMA_SDISTS["0.3.35"][0]
BACKENDS = [r.name for r in list_recipes()]


def _run(module: str, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SDRPC_CACHE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def doctor_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, object]]]:
    """``sdrpc doctor --json`` on this machine."""
    proc = _run("sdrpc_build.cli.main", "doctor", "--json", cache=tmp_path_factory.mktemp("c"))
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.fixture(scope="module")
def verdicts(doctor_json: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, object]]:
    return {str(b["backend"]): b for b in doctor_json["backends"]}


def _error_lines(stderr: str, prog: str) -> list[str]:
    return [
        ln.removeprefix(prog)
        for ln in stderr.splitlines()
        if ln.startswith((f"{prog}: error:", f"{prog}: hint:"))
    ]


def _configure(backend: str, tree: Path, work: Path) -> None:
    """The build's own configure step for ``backend`` on the real tree (no compile)."""
    recipe = load_recipe(backend)
    tools = discover_toolchain(recipe, os.environ)
    req = BuildRequest(commit=V5, max_name=160, recipe=recipe, tool_versions=tools.versions())
    plan = make_plan(req, read_tree_facts(tree))
    build_dir = work / "build"
    prepare_build_dir(build_dir, Source(tree, V5, "local", str(tree)), plan)
    with (build_dir / "build.log").open("w") as log:
        try:
            run_logged(
                configure_argv(plan, tools.cmake, tree, build_dir, tools.ninja),
                log=log,
                env=os.environ,
                what=f"cmake configure ({backend})",
            )
        except BuildError as exc:
            pytest.fail(f"doctor says {backend} builds here, configure says\n{exc.details}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_doctor_verdict_is_the_build_outcome(
    backend: str,
    verdicts: dict[str, dict[str, object]],
    llama_tree: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    verdict = verdicts[backend]
    if verdict["buildable"]:
        require_buildable(load_recipe(backend), os.environ, tmp_path)  # no ToolError
        _configure(backend, llama_tree("0.3.35"), tmp_path)
        return
    cache = tmp_path / "cache"
    build = _run(
        "sdrpc_build.cli.build",
        *("--llama-commit", V5, "--max-name", "160", "--backend", backend),
        *("--llama-repo", (tmp_path / "no-repo").as_uri()),  # fetching would fail: exit 5
        cache=cache,
    )
    assert build.returncode == 6, (verdict, build.stderr)
    assert not (cache / "sources").exists() and not (cache / "builds").exists()
    doctor = _run("sdrpc_build.cli.main", "doctor", "--backend", backend, cache=cache)
    assert doctor.returncode == 6, doctor.stderr
    said = _error_lines(doctor.stderr, "sdrpc doctor")
    assert said[0].startswith(f": error: backend '{backend}' cannot be built here: ")
    assert said[1].startswith(": hint: ")
    assert _error_lines(build.stderr, "sdrpc-build") == said


def test_vulkan_headers_verdict_names_the_minimum_version(
    doctor_json: dict[str, list[dict[str, object]]], verdicts: dict[str, dict[str, object]]
) -> None:
    """Debian 12's Vulkan 1.3.239 headers configure but fail to compile 2026 trees:
    missing or too old, doctor blocks vulkan and says which version to install."""
    vk = next(c for c in doctor_json["checks"] if c["name"] == "vulkan-headers")
    blocked = "vulkan-headers" in list(verdicts["vulkan"]["missing"])  # type: ignore[call-overload]
    assert blocked == (vk["status"] != "ok")
    if blocked:
        assert str(vk["hint"]).startswith(
            "pass --vulkan-headers auto to sdrpc-build (it fetches them), or install Vulkan "
            "headers >= 1.3.272 (e.g. the LunarG SDK"
        )


def test_buildable_with_an_option_passes_the_preflight_with_it(
    verdicts: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    """A backend doctor calls "buildable with OPTION" passes sdrpc-build's preflight with that
    option (dry run: the preflight's verdict, nothing fetched)."""
    with_option = {b: str(v["buildable_with"]) for b, v in verdicts.items() if v["buildable_with"]}
    for backend, option in with_option.items():
        run = _run(
            "sdrpc_build.cli.build",
            *("--llama-commit", V5, "--max-name", "160", "--backend", backend, *option.split()),
            *("--dry-run", "--json"),
            cache=tmp_path / "cache",
        )
        assert run.returncode == 0, run.stderr
        notes = json.loads(run.stdout)["notes"]
        assert not any("cannot be built here" in n for n in notes), (backend, notes)
        assert not (tmp_path / "cache" / "sources").exists()
