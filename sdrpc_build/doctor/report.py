""":func:`diagnose`: run the checks each backend needs and give a verdict per backend."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional

from sdrpc_build.doctor.checks import Doctor
from sdrpc_build.doctor.probes import Probes
from sdrpc_build.doctor.results import BackendReport, DoctorReport
from sdrpc_build.doctor.versions import vstr
from sdrpc_build.recipes import Recipe

__all__ = ["diagnose"]

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
    doc = Doctor(probes, cache_root)
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
            missing.append(f"cmake>={vstr(recipe.min_cmake)}")
        reports.append(BackendReport(recipe.name, True, not missing, tuple(missing), tuple(notes)))
    return DoctorReport(probes.platform, tuple(doc.cache.values()), tuple(reports))
