"""Toolchain discovery and the one command runner used for configure and build.

cmake and ninja come from the system when new enough, else from the PyPI
packages sdrpc depends on. The runner logs ``+ cmd``, streams output to a log
file and a line callback, and raises :class:`BuildError` with the relevant tail
of the output on failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from sdrpc_build.errors import BuildError, Interrupted, ToolError
from sdrpc_build.recipes import Recipe

__all__ = [
    "Toolchain",
    "ccache_env",
    "current_platform",
    "discover_toolchain",
    "failure_tail",
    "parse_ninja_progress",
    "run_logged",
]

_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_NINJA_RE = re.compile(r"^\[(\d+)/(\d+)\]")
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
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
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
    checked by :func:`sdrpc_build.doctor.require_buildable`, the preflight
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
    m = _NINJA_RE.match(line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def failure_tail(lines: Sequence[str], n: int = 25) -> str:
    """The lines that explain a failure: CMake/compiler errors first, else the last ``n``."""
    picked: list[str] = []
    for i, line in enumerate(lines):
        if "CMake Error" in line or "error:" in line or "FAILED:" in line:
            picked.extend(lines[i : i + 8])
            if len(picked) >= n:
                break
    if not picked:
        picked = list(lines[-n:])
    return "\n".join("  | " + ln for ln in picked[:n])


def run_logged(
    argv: Sequence[str],
    *,
    log: IO[str],
    env: Mapping[str, str],
    cwd: Optional[Path] = None,
    on_line: Callable[[str], None] = lambda _l: None,
    what: str = "command",
    hint: str = "see the log for details",
) -> list[str]:
    """Run ``argv``, tee output to ``log`` and ``on_line``; raise BuildError on failure."""
    log.write("+ " + " ".join(argv) + "\n")
    log.flush()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}", hint=hint) from None
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if len(lines) > 5000:
                del lines[:1000]
            log.write(line + "\n")
            on_line(line)
        rc = proc.wait()
        proc.stdout.close()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise Interrupted(f"{what} interrupted", hint="run the same command again") from None
    log.flush()
    if rc != 0:
        raise BuildError(f"{what} failed (exit {rc})", hint=hint, details=failure_tail(lines))
    return lines


def ccache_env(env: Mapping[str, str], source_dir: Path) -> dict[str, str]:
    """Environment for the build: ccache hits regardless of where the source lives."""
    out = dict(env)
    out.setdefault("CCACHE_BASEDIR", str(source_dir))
    out.setdefault("CCACHE_NOHASHDIR", "1")
    return out
