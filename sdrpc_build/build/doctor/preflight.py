"""The one preflight: can ``recipe`` be built on this machine, and if not, what to install.

``sdrpc doctor`` shows :func:`verdict` for every backend; ``sdrpc-build`` calls
:func:`require_buildable` before it fetches or configures anything. Both use the
same checks (cmake, compilers, git, free disk, and the ``[[requires]]`` of the
recipe, looked up as CMake looks them up), so doctor is never more optimistic
than the build, and a missing requirement stops the build with exit 6 and the
same message and install command doctor prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Optional

from sdrpc_build.build.doctor.checks import Doctor
from sdrpc_build.build.doctor.hints import install_hint
from sdrpc_build.build.doctor.probes import Probes, system_probes
from sdrpc_build.build.doctor.results import BackendReport, Check
from sdrpc_build.build.doctor.versions import vstr
from sdrpc_build.build.recipes import Recipe, Requirement
from sdrpc_build.build.toolchain import current_platform
from sdrpc_build.errors import ToolError

__all__ = [
    "ADVISORY",
    "REQUIRED",
    "blocked_error",
    "for_tree",
    "require_buildable",
    "verdict",
]

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
    provided: Sequence[str] = (),
) -> BackendReport:
    """Whether ``recipe`` builds here with the build's ``-D`` values ``defines``.

    ``provided``: requirements sdrpc-build fetches itself for this build (``--vulkan-headers
    auto``), not looked for. When only requirements it could fetch (``fetch`` in the recipe)
    block and git is there, the report names the option (``buildable_with``)."""
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
    fetchable: dict[str, str] = {}
    for req in recipe.requires:
        c = None if req.name in provided else doc.requirement(req, defines, tools)
        if c is None:
            continue
        if not c.ok:
            blockers.append(c)
            if req.fetch:
                fetchable[c.name] = req.fetch
        elif req.kind == "tool" and c.path:
            tools[req.name] = c.path
    with_option = ""
    if blockers and all(c.name in fetchable for c in blockers) and doc.get("git").ok:
        with_option = " ".join(dict.fromkeys(fetchable[c.name] for c in blockers))
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
        with_option,
    )


def for_tree(recipe: Recipe, read_text: Callable[[Path], Optional[str]], tree: Path) -> Recipe:
    """``recipe`` as ``tree`` needs it: a requirement whose minimum version is ``needed_by`` a
    symbol the tree does not use takes any version there (its file read with ``read_text``)."""

    def needed(req: Requirement) -> Requirement:
        if req.needed_by is None or req.min_version is None:
            return req
        text = read_text(tree / req.needed_by[0])
        if text is None or req.needed_by[1] in text:
            return req
        return replace(req, min_version=None, version_from=None)

    return replace(recipe, requires=tuple(needed(r) for r in recipe.requires))


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
    provided: Sequence[str] = (),
    tree: Optional[Path] = None,
) -> None:
    """Raise :func:`blocked_error` unless ``recipe`` builds here (sdrpc-build, before configure).

    ``defines`` are the build's ``-D`` values (e.g. ``Vulkan_INCLUDE_DIR``, given or from
    ``--vulkan-headers``); ``need_git`` is False when the source comes from an sdist;
    ``need_disk`` is False when the cache cannot be written anyway (only a cache hit can be
    served); ``provided`` names requirements the build fetches itself; ``tree``, once the
    llama.cpp tree is at hand, says which minimum versions it needs (:func:`for_tree`).
    """
    if probes is None:
        probes = system_probes(env, platform or current_platform())
    if tree is not None:
        recipe = for_tree(recipe, probes.read_text, tree)
    skip = {n for n, needed in (("git", need_git), ("disk", need_disk)) if not needed}
    required = tuple(n for n in REQUIRED if n not in skip)
    report = verdict(
        Doctor(probes, cache_root),
        recipe,
        dict(defines),
        required,
        runtime=False,
        provided=provided,
    )
    if not report.buildable:
        raise blocked_error(report)
