"""``sdrpc doctor``: which backends can this machine build, and what is missing.

Every look at the machine goes through :class:`Probes` (``which``, ``run``,
``read_text``, ``is_file``, ``disk_free``), so :func:`diagnose` is tested with
fakes and never starts a process in unit tests. :func:`system_probes` gives the
real ones. Each missing tool comes with the install command for the platform.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from sdrpc_build.recipes import Recipe

__all__ = [
    "MIN_DISK_BYTES",
    "MIN_VULKAN_HEADER",
    "BackendReport",
    "Check",
    "DoctorReport",
    "Probes",
    "diagnose",
    "parse_vulkan_header_version",
    "system_probes",
]

Status = Literal["ok", "missing", "too-old", "warning"]

#: Vulkan headers older than this lack ``vk::LayerSettingEXT`` (public since 1.3.272);
#: 2026 llama.cpp trees fail to compile ggml-vulkan.cpp with them (Debian 12 ships 1.3.239).
MIN_VULKAN_HEADER = (1, 3, 272)
#: a source tree plus one build directory; GPU builds need more
MIN_DISK_BYTES = 2 * 1024**3
_GOOD_DISK_BYTES = 10 * 1024**3
_MIN_CMAKE = (3, 15)

_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_VK_HEADER_RE = re.compile(r"^#define\s+VK_HEADER_VERSION\s+(\d+)\s*$", re.M)
_VK_COMPLETE_RE = re.compile(
    r"^#define\s+VK_HEADER_VERSION_COMPLETE\s+VK_MAKE_(?:API_)?VERSION\(\s*(?:\d+\s*,\s*)?"
    r"(\d+)\s*,\s*(\d+)\s*,\s*VK_HEADER_VERSION\s*\)",
    re.M,
)

_INSTALL: Mapping[str, Mapping[str, str]] = {
    "cmake": {"*": "python -m pip install 'cmake>=3.21' (a dependency of sdrpc)"},
    "ninja": {"*": "python -m pip install ninja (a dependency of sdrpc)"},
    "c-compiler": {
        "linux": "apt-get install build-essential (Fedora: dnf install gcc gcc-c++)",
        "macos": "xcode-select --install",
        "windows": "install Visual Studio 2022 Build Tools (C++ workload) and run sdrpc from "
        "a Developer PowerShell",
    },
    "git": {
        "linux": "apt-get install git",
        "macos": "xcode-select --install",
        "windows": "winget install Git.Git",
    },
    "ccache": {
        "linux": "apt-get install ccache",
        "macos": "brew install ccache",
        "windows": "winget install Ccache.Ccache",
    },
    "vulkan-headers": {
        "linux": "install the LunarG Vulkan SDK and source its setup-env.sh "
        "(Ubuntu 24.04+/Debian 13+: apt-get install libvulkan-dev glslc spirv-headers; "
        "Debian 12's 1.3.239 is too old)",
        "windows": "install the LunarG Vulkan SDK (it sets VULKAN_SDK)",
        "macos": "install the LunarG Vulkan SDK and source its setup-env.sh",
    },
    "spirv-headers": {"linux": "apt-get install spirv-headers (or use the LunarG Vulkan SDK)"},
    "nvidia-driver": {
        "linux": "install the NVIDIA driver (Debian/Ubuntu: apt-get install "
        "nvidia-driver); only needed to run the server here",
        "windows": "install the NVIDIA driver; only needed to run the server here",
    },
    "vulkan-driver": {
        "linux": "apt-get install vulkan-tools mesa-vulkan-drivers (lavapipe: a "
        "CPU device for tests); only needed to run the server here",
        "windows": "install your GPU driver (it ships the Vulkan runtime) and "
        "the Vulkan SDK for vulkaninfo",
        "macos": "install the LunarG Vulkan SDK (MoltenVK)",
    },
    "rocm-driver": {
        "linux": "install the amdgpu driver and ROCm (rocminfo); only needed to run "
        "the server here",
        "windows": "install the AMD Adrenalin driver",
    },
}


def _install(name: str, platform: str) -> str:
    hints = _INSTALL.get(name, {})
    return hints.get(platform) or hints.get("*") or f"install {name} and put it on PATH"


@dataclass(frozen=True)
class Probes:
    """How doctor looks at the machine. ``run`` returns the output of a zero exit, else None."""

    platform: str  # linux | macos | windows
    env: Mapping[str, str]
    which: Callable[[str], Optional[str]]
    run: Callable[[Sequence[str]], Optional[str]]
    read_text: Callable[[Path], Optional[str]]
    is_file: Callable[[Path], bool]
    disk_free: Callable[[Path], Optional[int]]
    pypi_tool: Callable[[str], Optional[str]] = field(default=lambda _name: None)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str  # version, path, or what is wrong
    hint: str = ""  # what to run when status is not ok

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "warning")

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class BackendReport:
    backend: str
    supported: bool  # the recipe builds on this platform
    buildable: bool
    missing: tuple[str, ...]  # required checks that failed
    notes: tuple[str, ...]  # optional checks that failed (e.g. no GPU driver)

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "supported": self.supported,
            "buildable": self.buildable,
            "missing": list(self.missing),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class DoctorReport:
    platform: str
    checks: tuple[Check, ...]
    backends: tuple[BackendReport, ...]

    @property
    def buildable(self) -> list[str]:
        return [b.backend for b in self.backends if b.buildable]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def as_dict(self) -> dict[str, object]:
        return {
            "platform": self.platform,
            "buildable": self.buildable,
            "checks": [c.as_dict() for c in self.checks],
            "backends": [b.as_dict() for b in self.backends],
        }


def parse_vulkan_header_version(text: str) -> Optional[tuple[int, int, int]]:
    """(major, minor, VK_HEADER_VERSION) from ``vulkan_core.h``, or None."""
    m = _VK_HEADER_RE.search(text)
    if not m:
        return None
    patch = int(m.group(1))
    c = _VK_COMPLETE_RE.search(text)
    major, minor = (int(c.group(1)), int(c.group(2))) if c else (1, 0)
    return major, minor, patch


def _version(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if not text:
        return None
    m = _VERSION_RE.search(text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def _vstr(v: Iterable[int]) -> str:
    return ".".join(str(n) for n in v)


def _first_line(text: Optional[str]) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[0] if lines else ""


class _Doctor:
    def __init__(self, probes: Probes, cache_root: Path) -> None:
        self.p = probes
        self.cache_root = cache_root
        self.plat = probes.platform
        self.cache: dict[str, Check] = {}
        self.cmake_version: Optional[tuple[int, ...]] = None

    def get(self, name: str) -> Check:
        if name not in self.cache:
            self.cache[name] = getattr(self, "_" + name.replace("-", "_"))()
        return self.cache[name]

    def _find(self, names: Sequence[str], extra_dirs: Sequence[Path] = ()) -> Optional[str]:
        exe = ".exe" if self.plat == "windows" else ""
        for n in names:
            found = self.p.which(n)
            if found:
                return found
        for d in extra_dirs:
            for n in names:
                cand = d / (n + exe)
                if self.p.is_file(cand):
                    return str(cand)
        return None

    def _tool(
        self,
        name: str,
        names: Sequence[str],
        extra: Sequence[Path] = (),
        hint: Optional[str] = None,
        version_args: Sequence[str] = ("--version",),
    ) -> Check:
        path = self._find(names, extra)
        if path is None:
            return Check(
                name, "missing", "not found", _install(name, self.plat) if hint is None else hint
            )
        out = self.p.run([path, *version_args]) if version_args else None
        v = _version(out)
        return Check(name, "ok", f"{_vstr(v)} ({path})" if v else path)

    def _cmake(self) -> Check:
        for path in (self.p.which("cmake"), self.p.pypi_tool("cmake")):
            if path:
                v = _version(self.p.run([path, "--version"]))
                if v and v >= _MIN_CMAKE:
                    self.cmake_version = v
                    return Check("cmake", "ok", f"{_vstr(v)} ({path})")
                if v:
                    self.cmake_version = v
                    return Check(
                        "cmake",
                        "too-old",
                        f"{_vstr(v)} < {_vstr(_MIN_CMAKE)} ({path})",
                        _install("cmake", self.plat),
                    )
        return Check("cmake", "missing", "not found", _install("cmake", self.plat))

    def _ninja(self) -> Check:
        path = self.p.which("ninja") or self.p.pypi_tool("ninja")
        if path is None:
            return Check(
                "ninja",
                "warning",
                "not found: CMake's default generator is used",
                _install("ninja", self.plat),
            )
        v = _version(self.p.run([path, "--version"]))
        return Check("ninja", "ok", f"{_vstr(v)} ({path})" if v else path)

    def _c_compiler(self) -> Check:
        names = (
            ("cl", "clang-cl", "gcc", "clang") if self.plat == "windows" else ("cc", "gcc", "clang")
        )
        path = self._find(names)
        if path is None:
            return Check("c-compiler", "missing", "not found", _install("c-compiler", self.plat))
        if Path(path).stem.lower() == "cl":  # MSVC has no --version
            return Check("c-compiler", "ok", f"MSVC ({path})")
        first = _first_line(self.p.run([path, "--version"]))
        return Check("c-compiler", "ok", f"{first} ({path})" if first else path)

    def _cxx_compiler(self) -> Check:
        names = (
            ("cl", "clang-cl", "g++", "clang++")
            if self.plat == "windows"
            else ("c++", "g++", "clang++")
        )
        path = self._find(names)
        if path is None:
            return Check("cxx-compiler", "missing", "not found", _install("c-compiler", self.plat))
        return Check("cxx-compiler", "ok", path)

    def _git(self) -> Check:
        return self._tool("git", ("git",))

    def _ccache(self) -> Check:
        c = self._tool("ccache", ("ccache", "sccache"))
        if c.status == "missing":
            return Check("ccache", "warning", "not found: rebuilds start from scratch", c.hint)
        return c

    def _disk(self) -> Check:
        root = self.cache_root
        free = self.p.disk_free(root)
        if free is None:
            return Check("disk", "warning", f"cannot read free space of {root}")
        gib = f"{free / 1024**3:.1f} GiB free in {root}"
        if free < MIN_DISK_BYTES:
            return Check(
                "disk",
                "missing",
                gib,
                f"free at least {MIN_DISK_BYTES // 1024**3} GiB, or point "
                "SDRPC_CACHE_DIR / --cache-dir at a larger disk",
            )
        if free < _GOOD_DISK_BYTES:
            return Check("disk", "warning", gib + " (GPU builds want 10 GiB)")
        return Check("disk", "ok", gib)

    def _cuda_dirs(self) -> list[Path]:
        dirs = [
            Path(self.p.env[k]) / "bin"
            for k in ("CUDA_PATH", "CUDA_HOME", "CUDA_ROOT")
            if self.p.env.get(k)
        ]
        if self.plat == "linux":
            dirs.append(Path("/usr/local/cuda/bin"))
        return dirs

    def _nvcc(self) -> Check:
        path = self._find(("nvcc",), self._cuda_dirs())
        if path is None:
            return Check("nvcc", "missing", "not found", "")
        out = self.p.run([path, "--version"]) or ""
        m = re.search(r"release (\d+\.\d+)", out)
        return Check("nvcc", "ok", f"CUDA {m.group(1)} ({path})" if m else path)

    def _cublas(self) -> Check:
        """ggml-cuda links cuBLAS: an nvcc without it configures but cannot generate."""
        roots = [
            Path(self.p.env[k])
            for k in ("CUDA_PATH", "CUDA_HOME", "CUDA_ROOT")
            if self.p.env.get(k)
        ]
        nvcc = self.get("nvcc")
        if nvcc.status != "ok":
            return Check("cublas", "warning", "not checked (no nvcc)")
        if "(" in nvcc.detail:
            roots.append(Path(nvcc.detail.rsplit("(", 1)[1].rstrip(")")).resolve().parent.parent)
        if self.plat == "linux":
            roots.append(Path("/usr/local/cuda"))
        names = ("libcublas.so", "libcublas_static.a", "cublas.lib")
        libdirs = ("lib64", "lib", "lib/x64", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
        for root in roots:
            for sub in libdirs:
                for n in names:
                    if self.p.is_file(root / sub / n):
                        return Check("cublas", "ok", str(root / sub / n))
        for n in names:
            if self.p.is_file(Path("/usr/lib/x86_64-linux-gnu") / n):
                return Check("cublas", "ok", f"/usr/lib/x86_64-linux-gnu/{n}")
        return Check(
            "cublas",
            "missing",
            "cuBLAS not found next to nvcc (ggml-cuda links it)",
            "install the CUDA toolkit's cuBLAS (Debian/Ubuntu: apt-get install libcublas-dev "
            "or NVIDIA's cuda-libraries-dev package)",
        )

    def _nvidia_driver(self) -> Check:
        smi = self._find(("nvidia-smi",))
        if smi is None:
            return Check(
                "nvidia-driver",
                "warning",
                "nvidia-smi not found",
                _install("nvidia-driver", self.plat),
            )
        out = self.p.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"])
        if not out or not out.strip():
            return Check(
                "nvidia-driver",
                "warning",
                "nvidia-smi found no GPU",
                _install("nvidia-driver", self.plat),
            )
        gpus = [ln.strip() for ln in out.splitlines() if ln.strip()]
        return Check("nvidia-driver", "ok", "; ".join(gpus))

    def _vulkan_include_dirs(self) -> list[Path]:
        dirs = []
        sdk = self.p.env.get("VULKAN_SDK")
        if sdk:
            dirs += [Path(sdk) / "include", Path(sdk) / "Include"]
        if self.plat == "linux":
            dirs += [Path("/usr/include"), Path("/usr/local/include")]
        elif self.plat == "macos":
            dirs += [Path("/opt/homebrew/include"), Path("/usr/local/include")]
        return dirs

    def _vulkan_headers(self) -> Check:
        for d in self._vulkan_include_dirs():
            header = d / "vulkan" / "vulkan_core.h"
            text = self.p.read_text(header)
            if text is None:
                continue
            v = parse_vulkan_header_version(text)
            if v is None:
                return Check("vulkan-headers", "warning", f"no VK_HEADER_VERSION in {header}")
            if v < MIN_VULKAN_HEADER:
                return Check(
                    "vulkan-headers",
                    "too-old",
                    f"{_vstr(v)} < {_vstr(MIN_VULKAN_HEADER)} ({header})",
                    _install("vulkan-headers", self.plat),
                )
            return Check("vulkan-headers", "ok", f"{_vstr(v)} ({header})")
        return Check(
            "vulkan-headers",
            "missing",
            "vulkan/vulkan_core.h not found",
            _install("vulkan-headers", self.plat),
        )

    def _spirv_headers(self) -> Check:
        for d in self._vulkan_include_dirs():
            header = d / "spirv" / "unified1" / "spirv.hpp"
            if self.p.is_file(header):
                return Check("spirv-headers", "ok", str(header))
        return Check(
            "spirv-headers",
            "missing",
            "spirv/unified1/spirv.hpp not found",
            _install("spirv-headers", self.plat),
        )

    def _glslc(self) -> Check:
        sdk = self.p.env.get("VULKAN_SDK")
        extra = [Path(sdk) / "bin", Path(sdk) / "Bin"] if sdk else []
        return self._tool("glslc", ("glslc",), extra, hint="")

    def _vulkan_driver(self) -> Check:
        exe = self._find(("vulkaninfo",))
        if exe is None:
            return Check(
                "vulkan-driver",
                "warning",
                "vulkaninfo not found",
                _install("vulkan-driver", self.plat),
            )
        out = self.p.run([exe, "--summary"])
        names = re.findall(r"deviceName\s*=\s*(.+)", out or "")
        if not names:
            return Check(
                "vulkan-driver",
                "warning",
                "vulkaninfo found no device",
                _install("vulkan-driver", self.plat),
            )
        return Check("vulkan-driver", "ok", "; ".join(n.strip() for n in names))

    def _hipcc(self) -> Check:
        rocm = Path(self.p.env.get("ROCM_PATH") or "/opt/rocm") / "bin"
        hip = [Path(self.p.env["HIP_PATH"]) / "bin"] if self.p.env.get("HIP_PATH") else []
        path = self._find(("hipcc",), [rocm, *hip])
        if path is None:
            return Check("hipcc", "missing", "not found", "")
        m = re.search(r"HIP version: (\S+)", self.p.run([path, "--version"]) or "")
        return Check("hipcc", "ok", f"HIP {m.group(1)} ({path})" if m else path)

    def _rocm_driver(self) -> Check:
        rocm = Path(self.p.env.get("ROCM_PATH") or "/opt/rocm") / "bin"
        exe = self._find(("rocminfo",), [rocm])
        out = self.p.run([exe]) if exe else None
        if not out or "gfx" not in out:
            return Check(
                "rocm-driver",
                "warning",
                "rocminfo found no AMD GPU",
                _install("rocm-driver", self.plat),
            )
        return Check("rocm-driver", "ok", ", ".join(sorted(set(re.findall(r"gfx\w+", out)))))

    def recipe_tool(self, recipe: Recipe, name: str) -> Check:
        special = {"nvcc", "glslc", "hipcc"}
        if name in special:
            c = self.get(name)
        else:
            c = self.cache.get(name) or self._tool(name, (name,), hint="", version_args=())
            self.cache[name] = c
        if c.status == "missing" and not c.hint:
            hint = next((t.install_hint(self.plat) for t in recipe.tools if t.name == name), "")
            c = Check(c.name, c.status, c.detail, hint or _install(name, self.plat))
            self.cache[name] = c
        return c


#: checks every backend needs; "warning" results never block a build
_BASE = ("cmake", "ninja", "c-compiler", "cxx-compiler", "git", "ccache", "disk")
#: more checks per backend, beyond the tools its recipe names: (required, optional)
_EXTRA: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cuda": (("cublas",), ("nvidia-driver",)),
    "vulkan": (("vulkan-headers",), ("vulkan-driver",)),
    "hip": ((), ("rocm-driver",)),
}


def diagnose(
    recipes: Iterable[Recipe],
    probes: Probes,
    cache_root: Path,
    backends: Optional[Sequence[str]] = None,
) -> DoctorReport:
    """Check the machine for every recipe (or only ``backends``); free disk at ``cache_root``."""
    doc = _Doctor(probes, cache_root)
    reports = []
    for base in _BASE:
        doc.get(base)
    for recipe in recipes:
        if backends is not None and recipe.name not in backends:
            continue
        if probes.platform not in recipe.platforms:
            reports.append(
                BackendReport(
                    recipe.name, False, False, (), (f"does not build on {probes.platform}",)
                )
            )
            continue
        required, optional = _EXTRA.get(recipe.name, ((), ()))
        if recipe.name == "vulkan" and probes.platform == "linux":
            required = (*required, "spirv-headers")
        missing: list[str] = []
        notes: list[str] = []
        for name in (*_BASE, *required):
            c = doc.get(name)
            if not c.ok:
                missing.append(name)
        for tool in recipe.tools:
            if not doc.recipe_tool(recipe, tool.name).ok:
                missing.append(tool.name)
        for name in optional:
            c = doc.get(name)
            if c.status != "ok":
                notes.append(f"{name}: {c.detail} (builds, but cannot run here)")
        if doc.cmake_version and doc.cmake_version < recipe.min_cmake:
            missing.append(f"cmake>={_vstr(recipe.min_cmake)}")
        reports.append(BackendReport(recipe.name, True, not missing, tuple(missing), tuple(notes)))
    return DoctorReport(probes.platform, tuple(doc.cache.values()), tuple(reports))


def _run(argv: Sequence[str]) -> Optional[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, errors="replace", timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout + proc.stderr if proc.returncode == 0 else None


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _disk_free(path: Path) -> Optional[int]:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _pypi_tool(name: str) -> Optional[str]:
    attr = {"cmake": "CMAKE_BIN_DIR", "ninja": "BIN_DIR"}[name]
    try:
        mod = __import__(name)
        exe = name + (".exe" if os.name == "nt" else "")
        path = Path(getattr(mod, attr)) / exe
    except (ImportError, AttributeError):
        return None
    return str(path) if path.is_file() else None


def system_probes(env: Mapping[str, str], platform: str) -> Probes:
    """The real probes: PATH lookups, short subprocesses with timeouts, file reads."""
    path = env.get("PATH")
    return Probes(
        platform=platform,
        env=env,
        which=lambda name: shutil.which(name, path=path),
        run=_run,
        read_text=_read_text,
        is_file=lambda p: p.is_file(),
        disk_free=_disk_free,
        pypi_tool=_pypi_tool,
    )
