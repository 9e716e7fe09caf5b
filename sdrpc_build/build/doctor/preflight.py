"""The one preflight: can ``recipe`` be built on this machine, and if not, what to install.

``sdrpc doctor`` shows :func:`verdict` for every backend; ``sdrpc-build`` calls
:func:`require_buildable` before it fetches or configures anything. Both use the
same checks (cmake, compilers, git, free disk, and the ``[[requires]]`` of the
recipe, looked up as CMake looks them up), so doctor is never more optimistic
than the build, and a missing requirement stops the build with exit 6 and the
same message and install command doctor prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Optional

from sdrpc_build.build.doctor.checks import Doctor
from sdrpc_build.build.doctor.hints import install_hint
from sdrpc_build.build.doctor.probes import Probes, system_probes
from sdrpc_build.build.doctor.results import BackendReport, Check
from sdrpc_build.build.doctor.versions import vstr
from sdrpc_build.build.recipes import Recipe
from sdrpc_build.build.toolchain import current_platform
from sdrpc_build.errors import ToolError

__all__ = ["ADVISORY", "REQUIRED", "blocked_error", "require_buildable", "verdict"]

#: machine-wide checks every backend needs
REQUIRED = ("cmake", "c-compiler", "cxx-compiler", "git", "disk")
#: machine-wide checks that only warn (the build works without them, slower)
ADVISORY = ("ninja", "ccache")
_NONE: Mapping[str, str] = MappingProxyType({})


def verdict(
    doc: Doctor,
    recipe: Recipe,
    defines: Mapping[str, str] = _NONE,
    required: Sequence[str] = REQUIRED,
    runtime: bool = True,
) -> BackendReport:
    """Whether ``recipe`` builds here with the build's ``-D`` values ``defines``."""
    plat = doc.plat
    if plat not in recipe.platforms:
        where = ", ".join(recipe.platforms)
        blocker = Check(
            "platform",
            "missing",
            f"is {plat}; {recipe.name} builds on {where}",
            f"build it on {where}",
        )
        return BackendReport(
            recipe.name, False, False, ("platform",), (f"does not build on {plat}",), (blocker,)
        )
    blockers = [c for c in (doc.get(name) for name in required) if not c.ok]
    if "cmake" in required and doc.cmake_version and doc.cmake_version < recipe.min_cmake:
        need = f"cmake>={vstr(recipe.min_cmake)}"
        blockers.append(
            Check(
                need, "too-old", f"(found {vstr(doc.cmake_version)})", install_hint("cmake", plat)
            )
        )
    tools: dict[str, str] = {}
    for req in recipe.requires:
        c = doc.requirement(req, defines, tools)
        if c is None:
            continue
        if not c.ok:
            blockers.append(c)
        elif req.kind == "tool" and c.path:
            tools[req.name] = c.path
    notes = []
    # the recipe's runtime_checks: a build works without them, the server then finds no device
    for name in recipe.runtime_checks if runtime else ():
        c = doc.get(name)
        if c.status != "ok":
            notes.append(f"{name}: {c.detail} (builds, but cannot run here)")
    return BackendReport(
        recipe.name,
        True,
        not blockers,
        tuple(c.name for c in blockers),
        tuple(notes),
        tuple(blockers),
    )


def blocked_error(report: BackendReport) -> ToolError:
    """The error (exit 6) for a backend that cannot be built here, with what to install."""
    return ToolError(
        f"backend {report.backend!r} cannot be built here: {report.problem}",
        hint=report.hint or "run sdrpc doctor for the full list",
    )


def require_buildable(
    recipe: Recipe,
    env: Mapping[str, str],
    cache_root: Path,
    defines: Sequence[tuple[str, str]] = (),
    *,
    need_git: bool = True,
    need_disk: bool = True,
    platform: Optional[str] = None,
    probes: Optional[Probes] = None,
) -> None:
    """Raise :func:`blocked_error` unless ``recipe`` builds here (sdrpc-build, before configure).

    ``defines`` are the user's ``-D`` values (e.g. ``Vulkan_INCLUDE_DIR``);
    ``need_git`` is False when the source comes from an sdist; ``need_disk`` is
    False when the cache cannot be written anyway (only a cache hit can be served).
    """
    if probes is None:
        probes = system_probes(env, platform or current_platform())
    skip = {n for n, needed in (("git", need_git), ("disk", need_disk)) if not needed}
    required = tuple(n for n in REQUIRED if n not in skip)
    report = verdict(Doctor(probes, cache_root), recipe, dict(defines), required, runtime=False)
    if not report.buildable:
        raise blocked_error(report)
