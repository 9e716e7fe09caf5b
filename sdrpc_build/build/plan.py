"""BuildPlan: a pure, printable, hashable description of one server build.

Everything here is a pure function of its inputs: the request (pins, recipe,
overrides, tool versions) and, once the source is at hand, :class:`TreeFacts`
read from it. CMake command lines are produced here and tested by equality.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdrpc_build.build.pins import parse_rpc_version
from sdrpc_build.build.recipes import Recipe
from sdrpc_build.errors import SourceError, UsageError

__all__ = [
    "BASE_DEFINES",
    "OPTION_RE",
    "PENDING_TARGET",
    "PROJECT_INCLUDE_NAME",
    "BuildDirs",
    "BuildPlan",
    "BuildRequest",
    "Commands",
    "TreeFacts",
    "build_argv",
    "build_dirs",
    "cache_key",
    "commands",
    "configure_argv",
    "exact_project_text",
    "make_plan",
    "parse_define",
    "project_include_text",
    "read_tree_facts",
]

#: Defines every server build gets, whatever the backend.
BASE_DEFINES: tuple[tuple[str, str], ...] = (
    ("CMAKE_BUILD_TYPE", "Release"),
    ("GGML_RPC", "ON"),
    ("BUILD_SHARED_LIBS", "OFF"),  # the real switch; GGML_BUILD_SHARED_LIBS does nothing
    ("LLAMA_CURL", "OFF"),
    ("LLAMA_BUILD_TESTS", "OFF"),
    ("LLAMA_BUILD_SERVER", "OFF"),
    ("LLAMA_BUILD_TOOLS", "ON"),
    ("CMAKE_EXPORT_COMPILE_COMMANDS", "ON"),
)
PROJECT_INCLUDE_NAME = "sdrpc-defines.cmake"
#: the compile target shown before the tree that names it is fetched
PENDING_TARGET = "<target read from the fetched tree>"
_FORBIDDEN_USER_DEFINES = {
    "GGML_MAX_NAME": "use --max-name N (it must reach every compiled language)",
    "GGML_RPC": "an RPC server needs GGML_RPC=ON",
    "CMAKE_PROJECT_INCLUDE": "sdrpc uses it to define GGML_MAX_NAME for every language",
}
_DEFINE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z]+)?=(.*)$")


@dataclass(frozen=True)
class TreeFacts:
    """What only the fetched llama.cpp tree can tell."""

    server_dir: str  # "tools/rpc" or "examples/rpc"
    target: str  # "ggml-rpc-server" or "rpc-server"
    protocol: Optional[tuple[int, int, int]]
    options: frozenset[str]
    paths: frozenset[str]


@dataclass(frozen=True)
class BuildRequest:
    """Everything that determines the artifact. Hashing it gives the cache key."""

    commit: str
    max_name: int
    recipe: Recipe
    user_defines: tuple[tuple[str, str], ...] = ()
    portable: bool = False
    generator: str = "Ninja"
    tool_versions: tuple[tuple[str, str], ...] = ()
    source_state: str = "clean"  # or "dirty:<hash>" for --llama-src --allow-dirty
    exact_ggml: str = ""  # --exact: identity of the sd.cpp tree's own ggml (commit or digest)
    #: defines sdrpc resolved itself (``--vulkan-headers``: ``Vulkan_INCLUDE_DIR``); the key
    #: holds ``inputs`` instead: what those paths contain (version and content digest), so
    #: the same headers found elsewhere are the same build, and changed ones a new build
    resolved_defines: tuple[tuple[str, str], ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BuildPlan:
    request: BuildRequest
    facts: Optional[TreeFacts]
    defines: tuple[tuple[str, str], ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def target(self) -> Optional[str]:
        return self.facts.target if self.facts else None

    @property
    def key(self) -> str:
        return cache_key(self.request)

    def describe(self) -> dict[str, object]:
        r = self.request
        return {
            "key": self.key,
            "commit": r.commit,
            "backend": r.recipe.name,
            "recipe": {"source": r.recipe.source, "sha256": r.recipe.sha256},
            "max_name": r.max_name,
            "portable": r.portable,
            "generator": r.generator,
            "target": self.target or "unknown until the source is fetched",
            "server_dir": self.facts.server_dir if self.facts else None,
            "defines": dict(self.defines),
            "tool_versions": dict(r.tool_versions),
            "notes": list(self.notes),
        }


def parse_define(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` or ``KEY:TYPE=VALUE`` from ``-D``; some keys are sdrpc's own."""
    m = _DEFINE_RE.match(text)
    if not m:
        raise UsageError(f"-D {text!r} is not KEY=VALUE", hint="e.g. -D GGML_CUDA_F16=ON")
    key, value = m.group(1), m.group(2)
    if key in _FORBIDDEN_USER_DEFINES:
        raise UsageError(f"-D {key} is managed by sdrpc", hint=_FORBIDDEN_USER_DEFINES[key])
    return key, value


def cache_key(req: BuildRequest) -> str:
    """Readable prefix + hash of every input of the build."""
    doc = {
        "commit": req.commit,
        "max_name": req.max_name,
        "recipe": req.recipe.name,
        "recipe_sha256": req.recipe.sha256,
        "user_defines": list(req.user_defines),
        "portable": req.portable,
        "generator": req.generator,
        "tools": list(req.tool_versions),
        "source_state": req.source_state,
        "exact_ggml": req.exact_ggml,
        "layout": 1,
    }
    if req.inputs:  # absent otherwise: the keys of builds without such inputs stay the same
        doc["inputs"] = list(req.inputs)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    exact = "-exact" if req.exact_ggml else ""
    return f"{req.recipe.name}-{req.commit[:10]}-n{req.max_name}{exact}-{digest}"


def project_include_text(max_name: int) -> str:
    """CMake code run after every ``project()``: GGML_MAX_NAME for every language.

    ``add_compile_definitions`` reaches C, C++, CUDA, HIP and Objective-C alike,
    unlike ``CMAKE_C_FLAGS``/``CMAKE_CXX_FLAGS`` which miss the GPU languages.
    """
    return (
        "# generated by sdrpc: GGML_MAX_NAME must agree in every translation unit\n"
        "include_guard(GLOBAL)\n"
        f"add_compile_definitions(GGML_MAX_NAME={max_name})\n"
    )


def make_plan(req: BuildRequest, facts: Optional[TreeFacts]) -> BuildPlan:
    """Merge base defines, the recipe (with variants for this tree) and user overrides."""
    notes: list[str] = []
    defines: dict[str, str] = dict(BASE_DEFINES)
    if req.exact_ggml:
        # the wrapper project has no llama.cpp options: only ggml's and CMake's own
        defines = {k: v for k, v in defines.items() if not k.startswith("LLAMA_")}
        notes.append("exact match: llama.cpp's rpc-server.cpp built against the sd.cpp tree's ggml")
    elif facts is None:
        defines["LLAMA_BUILD_EXAMPLES"] = "OFF"
        notes.append("LLAMA_BUILD_EXAMPLES becomes ON if the tree still has examples/rpc")
        notes.append(
            "the target name (rpc-server or ggml-rpc-server) is read from the fetched tree"
        )
    elif facts.server_dir == "examples/rpc":
        defines["LLAMA_BUILD_EXAMPLES"] = "ON"
        notes.append("old tree: the server lives in examples/rpc, so examples stay on")
    else:
        defines["LLAMA_BUILD_EXAMPLES"] = "OFF"
    recipe_defines = dict(req.recipe.defines)
    if facts is not None:
        for variant in req.recipe.variants:
            if variant.matches(facts.options, facts.paths):
                for old, new in variant.rename:
                    if old in recipe_defines:
                        recipe_defines[new] = recipe_defines.pop(old)
                recipe_defines.update(variant.defines)
                notes.append(variant.note)
                break
    elif req.recipe.variants:
        notes.append("recipe variants for older trees are chosen once the tree is fetched")
    defines.update(recipe_defines)
    if req.portable:
        defines["GGML_NATIVE"] = "OFF"
        defines["GGML_RPC_RDMA"] = "OFF"
    for key, value in (*req.user_defines, *req.resolved_defines):
        defines[key] = value
    return BuildPlan(request=req, facts=facts, defines=tuple(defines.items()), notes=tuple(notes))


def configure_argv(
    plan: BuildPlan,
    cmake: str,
    source_dir: Path,
    build_dir: Path,
    make_program: Optional[str] = None,
) -> list[str]:
    argv = [cmake, "-S", str(source_dir), "-B", str(build_dir), "-G", plan.request.generator]
    if make_program:
        argv.append(f"-DCMAKE_MAKE_PROGRAM={make_program}")
    argv += [f"-D{k}={v}" for k, v in plan.defines]
    argv.append(f"-DCMAKE_PROJECT_INCLUDE={build_dir / PROJECT_INCLUDE_NAME}")
    return argv


def build_argv(
    plan: BuildPlan,
    cmake: str,
    build_dir: Path,
    jobs: Optional[int] = None,
    target: Optional[str] = None,
) -> list[str]:
    """The compile command; ``target`` stands in for the tree's until the tree is known."""
    target = plan.target or target
    if target is None:
        raise UsageError("cannot build before the tree is known", hint="this is an sdrpc bug")
    argv = [cmake, "--build", str(build_dir), "--target", target, "--config", "Release"]
    if jobs:
        argv += ["--parallel", str(jobs)]
    return argv


@dataclass(frozen=True)
class BuildDirs:
    """Where a plan is configured from (``-S``) and built in (``-B``)."""

    project: Path  # the llama.cpp tree, or for --exact a generated wrapper project
    build: Path


def build_dirs(cache_root: Path, key: str, source_tree: Path, exact: bool = False) -> BuildDirs:
    """``<cache>/builds/<key>``; an ``--exact`` build's project is ``<cache>/builds/<key>.src``."""
    builds = cache_root / "builds"
    return BuildDirs(builds / f"{key}.src" if exact else source_tree, builds / key)


@dataclass(frozen=True)
class Commands:
    """The two commands of a build, as sdrpc-build runs them and ``--dry-run`` prints them."""

    configure: tuple[str, ...]
    build: tuple[str, ...]


def commands(
    plan: BuildPlan,
    dirs: BuildDirs,
    cmake: str = "cmake",
    make_program: Optional[str] = None,
    jobs: Optional[int] = None,
) -> Commands:
    """Configure and compile command lines for ``plan`` (the target may still be pending)."""
    return Commands(
        tuple(configure_argv(plan, cmake, dirs.project, dirs.build, make_program)),
        tuple(build_argv(plan, cmake, dirs.build, jobs, target=PENDING_TARGET)),
    )


OPTION_RE = re.compile(r"^\s*option\s*\(\s*([A-Za-z0-9_]+)", re.MULTILINE | re.IGNORECASE)
_TARGET_RE = re.compile(r"set\s*\(\s*TARGET\s+([A-Za-z0-9_.+-]+)\s*\)", re.IGNORECASE)


def read_tree_facts(tree: Path) -> TreeFacts:
    """Read the server location, target name, protocol and CMake options of a tree."""
    server_dir = None
    for candidate in ("tools/rpc", "examples/rpc"):
        if (tree / candidate / "CMakeLists.txt").is_file():
            server_dir = candidate
            break
    if server_dir is None:
        raise SourceError(
            f"{tree} has no rpc-server (neither tools/rpc nor examples/rpc)",
            hint="is this a llama.cpp tree from 2024-05 or later?",
        )
    cm = (tree / server_dir / "CMakeLists.txt").read_text(errors="replace")
    m = _TARGET_RE.search(cm)
    target = m.group(1) if m else "rpc-server"
    header = tree / "ggml" / "include" / "ggml-rpc.h"
    protocol = parse_rpc_version(header.read_text(errors="replace")) if header.is_file() else None
    options: set[str] = set()
    for rel in ("CMakeLists.txt", "ggml/CMakeLists.txt"):
        p = tree / rel
        if p.is_file():
            options.update(OPTION_RE.findall(p.read_text(errors="replace")))
    paths = {rel for rel in ("tools/rpc", "examples/rpc", "ggml") if (tree / rel).exists()}
    return TreeFacts(server_dir, target, protocol, frozenset(options), frozenset(paths))


def exact_project_text(ggml_dir: Path, server_source: Path, target: str) -> str:
    """A CMake project building llama.cpp's server program against another ggml tree.

    Used by ``--exact``: the server then speaks exactly the protocol version (and op
    set) of the sd.cpp tree's own ggml, forks included.
    """
    g = ggml_dir.as_posix()
    src = server_source.as_posix()
    return (
        "# generated by sdrpc --exact\n"
        "cmake_minimum_required(VERSION 3.14)\n"
        "project(sdrpc_exact_server C CXX)\n"
        'set(CMAKE_RUNTIME_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/bin")\n'
        f'add_subdirectory("{g}" ggml)\n'
        f'add_executable({target} "{src}")\n'
        f"target_link_libraries({target} PRIVATE ggml)\n"
        f"target_compile_features({target} PRIVATE cxx_std_17)\n"
    )
