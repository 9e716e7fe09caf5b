"""Toolchain discovery and the one command runner used for configure and build.

cmake and ninja come from the system when new enough, else from the PyPI
packages sdrpc depends on. The runner logs ``+ cmd``, streams output to a log
file and a line callback, and raises :class:`BuildError` with the relevant tail
of the output on failure. The command runs in its own process group (session):
on Ctrl-C, SIGTERM or any other exception the whole group (cmake, ninja, every
compiler job) gets SIGTERM, then SIGKILL, and the runner returns only once no
process of that group is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

from sdrpc_build.build.recipes import Recipe
from sdrpc_build.errors import BuildError, Interrupted, ToolError

__all__ = [
    "Toolchain",
    "ccache_env",
    "current_platform",
    "discover_toolchain",
    "failure_tail",
    "parse_ninja_progress",
    "parse_ninja_step",
    "run_logged",
    "stop_group",
]

_VERSION_RE = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})(?:\.([0-9]{1,6}))?")
_NINJA_RE = re.compile(r"^\[([0-9]{1,9})/([0-9]{1,9})\]\s*(.*)$")
#: seconds between SIGTERM to a command's group and SIGKILL
STOP_GRACE = 10.0
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
            start_new_session=os.name != "nt",  # its own group: stopped as a whole
        )
    except OSError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}", hint=hint) from None
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if len(lines) > 5000:
                del lines[:1000]
            log.write(line + "\n")
            on_line(line)
        rc = proc.wait()
    except BaseException as exc:  # Ctrl-C, SIGTERM (raised by the CLI), a failing callback
        stop_group(proc)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"{what} interrupted", hint="run the same command again") from None
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdout.close()
    log.flush()
    if rc != 0:
        raise BuildError(f"{what} failed (exit {rc})", hint=hint, details=failure_tail(lines))
    return lines


def _group_alive(pgid: int) -> bool:
    """Some process of group ``pgid`` is still running (zombies do not count on Linux)."""
    proc_root = Path("/proc")
    if sys.platform.startswith("linux") and proc_root.is_dir():
        for d in proc_root.iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[str], grace: float = STOP_GRACE) -> None:
    """Stop ``proc`` and every process of its group: SIGTERM, wait, SIGKILL; bounded.

    Returns once no member of the group runs (or after ``grace`` + 5 s at most).
    """
    with _no_interrupts():
        _stop_group(proc, grace)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM while a stop is under way (a second Ctrl-C must not cut it)."""
    saved: list[tuple[signal.Signals, Any]] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved.append((sig, signal.signal(sig, signal.SIG_IGN)))
    except ValueError:  # not the main thread: signals go to the main thread anyway
        pass
    try:
        yield
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)


def _stop_group(proc: subprocess.Popen[str], grace: float) -> None:
    if os.name == "nt":
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        return
    pgid = proc.pid  # a session leader: its PID is the group's ID
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid) or proc.poll() is None:
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        end = time.monotonic() + 5
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.05)


def ccache_env(env: Mapping[str, str], source_dir: Path) -> dict[str, str]:
    """Environment for the build: ccache hits regardless of where the source lives."""
    out = dict(env)
    out.setdefault("CCACHE_BASEDIR", str(source_dir))
    out.setdefault("CCACHE_NOHASHDIR", "1")
    return out
