"""Toolchain discovery (cmake, ninja, the C compiler, ccache), ninja's progress lines, and
the CMake build directory: wiped when its inputs change (a stamp file), and where the
compiled server lands.

cmake and ninja come from the system when new enough, else from the PyPI
packages sdrpc depends on. Commands run through :mod:`sdrpc_build.run`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdrpc_build.build.plan import PROJECT_INCLUDE_NAME, BuildPlan, project_include_text
from sdrpc_build.build.recipes import Recipe
from sdrpc_build.build.source import Source
from sdrpc_build.errors import BuildError, ToolError
from sdrpc_build.run import run

__all__ = [
    "Toolchain",
    "ccache_env",
    "current_platform",
    "discover_toolchain",
    "find_binary",
    "parse_ninja_progress",
    "parse_ninja_step",
    "prepare_build_dir",
]

_VERSION_RE = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})(?:\.([0-9]{1,6}))?")
_NINJA_RE = re.compile(r"^\[([0-9]{1,9})/([0-9]{1,9})\]\s*(.*)$")
#: seconds a ``--version`` may take
VERSION_TIMEOUT = 30.0
#: CMAKE_PROJECT_INCLUDE needs 3.15
_MIN_CMAKE = (3, 15)


def current_platform() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("win"):
        return "windows"
    return sys.platform


@dataclass(frozen=True)
class Toolchain:
    cmake: str
    cmake_version: str
    ninja: Optional[str]
    ninja_version: Optional[str]
    compiler: str  # first line of `cc --version`
    ccache: Optional[str]

    def versions(self) -> tuple[tuple[str, str], ...]:
        """The tool versions that go into the cache key."""
        return (
            ("cmake", self.cmake_version),
            ("ninja", self.ninja_version or "none"),
            ("compiler", self.compiler),
        )


def _version_of(exe: str) -> Optional[tuple[str, tuple[int, ...]]]:
    out = run([exe, "--version"], timeout=VERSION_TIMEOUT).stdout
    first = out.strip().splitlines()[0] if out.strip() else ""
    m = _VERSION_RE.search(first)
    if not m:
        return None
    nums = tuple(int(g) for g in m.groups() if g is not None)
    return first, nums


def _pypi_bin(module: str, attr: str, exe: str) -> Optional[str]:
    try:
        mod = __import__(module)
        path = Path(getattr(mod, attr)) / exe
    except (ImportError, AttributeError):
        return None
    return str(path) if path.exists() else None


def discover_toolchain(
    recipe: Recipe, env: Mapping[str, str], platform: Optional[str] = None
) -> Toolchain:
    """Find cmake, ninja and the C compiler, or raise ToolError.

    What the recipe needs beyond them (nvcc, cuBLAS, Vulkan headers, ...) is
    checked by :func:`sdrpc_build.build.doctor.require_buildable`, the preflight
    sdrpc doctor shares.
    """
    platform = platform or current_platform()
    if recipe.platforms and platform not in recipe.platforms:
        raise ToolError(
            f"backend {recipe.name!r} does not build on {platform}",
            hint=f"it builds on: {', '.join(recipe.platforms)}",
        )
    need = max(recipe.min_cmake, _MIN_CMAKE)
    exe_suffix = ".exe" if platform == "windows" else ""
    cmake: Optional[tuple[str, str]] = None
    for cand in (
        shutil.which("cmake", path=env.get("PATH")),
        _pypi_bin("cmake", "CMAKE_BIN_DIR", "cmake" + exe_suffix),
    ):
        if cand:
            got = _version_of(cand)
            if got and got[1] >= need:
                cmake = (cand, ".".join(str(n) for n in got[1]))
                break
    if cmake is None:
        raise ToolError(
            f"no cmake >= {'.'.join(map(str, need))} found",
            hint="python -m pip install 'cmake>=3.21' (sdrpc depends on it; reinstall sdrpc)",
        )
    ninja = None
    for cand in (
        shutil.which("ninja", path=env.get("PATH")),
        _pypi_bin("ninja", "BIN_DIR", "ninja" + exe_suffix),
    ):
        if cand:
            got = _version_of(cand)
            if got:
                ninja = (cand, ".".join(str(n) for n in got[1]))
                break
    cc = (
        env.get("CC")
        or shutil.which("cc", path=env.get("PATH"))
        or shutil.which("gcc", path=env.get("PATH"))
        or shutil.which("clang", path=env.get("PATH"))
    )
    if platform != "windows":
        if not cc:
            raise ToolError(
                "no C/C++ compiler found",
                hint={
                    "linux": "apt-get install build-essential",
                    "macos": "xcode-select --install",
                }.get(platform, "install a C++ compiler"),
            )
        got = _version_of(cc)
        compiler = got[0] if got else cc
    else:
        compiler = "msvc-or-default"
    return Toolchain(
        cmake=cmake[0],
        cmake_version=cmake[1],
        ninja=ninja[0] if ninja else None,
        ninja_version=ninja[1] if ninja else None,
        compiler=compiler,
        ccache=shutil.which("ccache", path=env.get("PATH")),
    )


def parse_ninja_progress(line: str) -> Optional[tuple[int, int]]:
    """``[12/31] Building C object ...`` -> (12, 31)."""
    step = parse_ninja_step(line)
    return (step[0], step[1]) if step else None


def parse_ninja_step(line: str) -> Optional[tuple[int, int, str]]:
    """``[12/31] Building C object a/b/ggml.c.o`` -> (12, 31, "building ggml.c.o")."""
    m = _NINJA_RE.match(line)
    if not m:
        return None
    words = m.group(3).split()
    what = ""
    if words:
        what = words[0].lower()
        if len(words) > 1:
            what += " " + words[-1].replace("\\", "/").rsplit("/", 1)[-1]
    return int(m.group(1)), int(m.group(2)), what


def ccache_env(env: Mapping[str, str], source_dir: Path) -> dict[str, str]:
    """Environment for the build: ccache hits regardless of where the source lives."""
    out = dict(env)
    out.setdefault("CCACHE_BASEDIR", str(source_dir))
    out.setdefault("CCACHE_NOHASHDIR", "1")
    return out


def find_binary(build_dir: Path, target: str) -> Path:
    """The compiled ``target`` in ``build_dir`` (single- or multi-config generators)."""
    for cand in (
        build_dir / "bin" / target,
        build_dir / "bin" / f"{target}.exe",
        build_dir / "bin" / "Release" / f"{target}.exe",
    ):
        if cand.is_file():
            return cand
    raise BuildError(
        f"the build finished but {target} is not in {build_dir / 'bin'}",
        hint="see build.log; rebuild with --force",
    )


def prepare_build_dir(build_dir: Path, source: Source, plan: BuildPlan) -> None:
    """Wipe a stale build directory when its source or plan changed (stamp file)."""
    stamp = build_dir / ".sdrpc-stamp.json"
    want = {"source": str(source.tree), "defines": list(plan.defines)}
    try:
        have = json.loads(stamp.read_text())
    except (OSError, ValueError):
        have = None
    if have != want and build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(want))
    (build_dir / PROJECT_INCLUDE_NAME).write_text(project_include_text(plan.request.max_name))
