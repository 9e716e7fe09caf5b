"""The machine-wide checks (cmake, compilers, git, disk, GPU drivers), and each recipe
requirement looked up once: is it there, which version, and what to install if not."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from sdrpc_build.build.doctor.hints import install_hint
from sdrpc_build.build.doctor.probes import Probes
from sdrpc_build.build.doctor.requires import check_requirement
from sdrpc_build.build.doctor.results import Check
from sdrpc_build.build.doctor.versions import first_line, parse_version, vstr
from sdrpc_build.build.recipes import Requirement
from sdrpc_build.units import GIB, format_size

__all__ = ["MIN_DISK_BYTES", "Doctor"]

#: a source tree plus one build directory; GPU builds need more
MIN_DISK_BYTES = 2 * GIB
_GOOD_DISK_BYTES = 10 * GIB
_MIN_CMAKE = (3, 15)


class Doctor:
    """The checks, each run once: machine-wide ones by name (``get``), recipe
    requirements by what they look for (``requirement``); ``cache`` lists them by name."""

    def __init__(self, probes: Probes, cache_root: Path) -> None:
        self.p = probes
        self.cache_root = cache_root
        self.plat = probes.platform
        self.cache: dict[str, Check] = {}
        self.cmake_version: Optional[tuple[int, ...]] = None
        self._requirements: dict[object, Optional[Check]] = {}

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
                name,
                "missing",
                "not found",
                install_hint(name, self.plat) if hint is None else hint,
            )
        out = self.p.run([path, *version_args]) if version_args else None
        v = parse_version(out)
        return Check(name, "ok", f"{vstr(v)} ({path})" if v else path)

    def _cmake(self) -> Check:
        for path in (self.p.which("cmake"), self.p.pypi_tool("cmake")):
            if path:
                v = parse_version(self.p.run([path, "--version"]))
                if v and v >= _MIN_CMAKE:
                    self.cmake_version = v
                    return Check("cmake", "ok", f"{vstr(v)} ({path})")
                if v:
                    self.cmake_version = v
                    return Check(
                        "cmake",
                        "too-old",
                        f"{vstr(v)} < {vstr(_MIN_CMAKE)} ({path})",
                        install_hint("cmake", self.plat),
                    )
        return Check("cmake", "missing", "not found", install_hint("cmake", self.plat))

    def _ninja(self) -> Check:
        path = self.p.which("ninja") or self.p.pypi_tool("ninja")
        if path is None:
            return Check(
                "ninja",
                "warning",
                "not found: CMake's default generator is used",
                install_hint("ninja", self.plat),
            )
        v = parse_version(self.p.run([path, "--version"]))
        return Check("ninja", "ok", f"{vstr(v)} ({path})" if v else path)

    def _c_compiler(self) -> Check:
        names = (
            ("cl", "clang-cl", "gcc", "clang") if self.plat == "windows" else ("cc", "gcc", "clang")
        )
        path = self._find(names)
        if path is None:
            return Check(
                "c-compiler", "missing", "not found", install_hint("c-compiler", self.plat)
            )
        if Path(path).stem.lower() == "cl":  # MSVC has no --version
            return Check("c-compiler", "ok", f"MSVC ({path})")
        first = first_line(self.p.run([path, "--version"]))
        return Check("c-compiler", "ok", f"{first} ({path})" if first else path)

    def _cxx_compiler(self) -> Check:
        names = (
            ("cl", "clang-cl", "g++", "clang++")
            if self.plat == "windows"
            else ("c++", "g++", "clang++")
        )
        path = self._find(names)
        if path is None:
            return Check(
                "cxx-compiler", "missing", "not found", install_hint("c-compiler", self.plat)
            )
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
        gib = f"{format_size(free)} free in {root}"
        if free < MIN_DISK_BYTES:
            return Check(
                "disk",
                "missing",
                gib,
                f"free at least {format_size(MIN_DISK_BYTES)}, or point "
                "SDRPC_CACHE_DIR / --cache-dir at a larger disk",
            )
        if free < _GOOD_DISK_BYTES:
            return Check(
                "disk", "warning", f"{gib} (GPU builds want {format_size(_GOOD_DISK_BYTES)})"
            )
        return Check("disk", "ok", gib)

    def _nvidia_driver(self) -> Check:
        smi = self._find(("nvidia-smi",))
        if smi is None:
            return Check(
                "nvidia-driver",
                "warning",
                "nvidia-smi not found",
                install_hint("nvidia-driver", self.plat),
            )
        out = self.p.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"])
        if not out or not out.strip():
            return Check(
                "nvidia-driver",
                "warning",
                "nvidia-smi found no GPU",
                install_hint("nvidia-driver", self.plat),
            )
        gpus = [ln.strip() for ln in out.splitlines() if ln.strip()]
        return Check("nvidia-driver", "ok", "; ".join(gpus))

    def _vulkan_driver(self) -> Check:
        exe = self._find(("vulkaninfo",))
        if exe is None:
            return Check(
                "vulkan-driver",
                "warning",
                "vulkaninfo not found",
                install_hint("vulkan-driver", self.plat),
            )
        out = self.p.run([exe, "--summary"])
        names = re.findall(r"deviceName\s*=\s*(.+)", out or "")
        if not names:
            return Check(
                "vulkan-driver",
                "warning",
                "vulkaninfo found no device",
                install_hint("vulkan-driver", self.plat),
            )
        return Check("vulkan-driver", "ok", "; ".join(n.strip() for n in names))

    def _rocm_driver(self) -> Check:
        rocm = Path(self.p.env.get("ROCM_PATH") or "/opt/rocm") / "bin"
        exe = self._find(("rocminfo",), [rocm])
        out = self.p.run([exe]) if exe else None
        if not out or "gfx" not in out:
            return Check(
                "rocm-driver",
                "warning",
                "rocminfo found no AMD GPU",
                install_hint("rocm-driver", self.plat),
            )
        return Check("rocm-driver", "ok", ", ".join(sorted(set(re.findall(r"gfx\w+", out)))))

    def requirement(
        self, req: Requirement, defines: Mapping[str, str], tools: Mapping[str, str]
    ) -> Optional[Check]:
        """One recipe requirement (see :func:`check_requirement`), cached; listed by name."""
        key = (req, tuple(sorted(defines.items())), tuple(sorted(tools.items())))
        if key not in self._requirements:
            c = check_requirement(req, self.p, defines, tools)
            self._requirements[key] = c
            if c is not None:
                self.cache.setdefault(c.name, c)
        return self._requirements[key]
