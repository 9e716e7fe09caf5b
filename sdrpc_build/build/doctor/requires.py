"""Look up one recipe :class:`~sdrpc_build.build.recipes.Requirement` on the machine.

The search follows CMake's own ``find_program``/``find_path``/``find_library``/
``find_package(CONFIG)``, so that what is found here is what configure finds:
a ``-D`` of the requirement's ``define`` is the only place looked at; else the
recipe's ``dirs`` (hints), then the prefixes CMake searches by default
(``CMAKE_PREFIX_PATH``, the prefixes of PATH's ``bin`` folders, the system's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Optional

from sdrpc_build.build.doctor.probes import Probes
from sdrpc_build.build.doctor.results import Check
from sdrpc_build.build.doctor.versions import parse_vulkan_header_version, vstr
from sdrpc_build.build.recipes import Requirement

__all__ = ["VERSION_PARSERS", "check_requirement", "library_files", "search_dirs"]

#: how a version is read from a found file, by ``version_from``
VERSION_PARSERS: Mapping[str, Callable[[str], Optional[tuple[int, ...]]]] = {
    "vulkan-header": parse_vulkan_header_version,
}

_NONE: Mapping[str, str] = MappingProxyType({})
_VAR_RE = re.compile(r"\$ENV\{([^}]+)\}|\$TOOL\{([^}]+)\}|\$\{([^}]+)\}")
_SYSTEM_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "linux": ("/usr/local", "/usr", "/"),
    "macos": ("/opt/homebrew", "/usr/local", "/usr"),
    "windows": (),
}


def _is_set(defines: Mapping[str, str], name: str) -> bool:
    """A ``-D name=value`` CMake reads as true or as a path (not OFF/0/NO/FALSE/"")."""
    value = defines.get(name)
    if value is None:
        return False
    v = value.strip().upper()
    return v not in ("", "OFF", "0", "NO", "FALSE", "N", "IGNORE", "NOTFOUND") and not v.endswith(
        "-NOTFOUND"
    )


def library_files(name: str, platform: str) -> tuple[str, ...]:
    """The file names ``find_library(NAMES name)`` accepts on ``platform``."""
    if platform == "windows":
        return (f"{name}.lib", f"lib{name}.lib")
    if platform == "macos":
        return (f"lib{name}.dylib", f"lib{name}.tbd", f"lib{name}.a")
    return (f"lib{name}.so", f"lib{name}.a")


def _sep(platform: str) -> str:
    return ";" if platform == "windows" else ":"


def _env_list(probes: Probes, name: str) -> list[str]:
    return [p for p in probes.env.get(name, "").split(_sep(probes.platform)) if p]


def _prefixes(probes: Probes) -> list[str]:
    """CMake's default search prefixes: CMAKE_PREFIX_PATH, PATH's bin parents, the system's."""
    out = _env_list(probes, "CMAKE_PREFIX_PATH")
    for entry in _env_list(probes, "PATH"):
        p = PurePosixPath(entry.replace("\\", "/"))
        if p.name in ("bin", "sbin"):
            out.append(str(p.parent))
    out += _SYSTEM_PREFIXES.get(probes.platform, ())
    return out


def _default_dirs(kind: str, probes: Probes) -> list[str]:
    arch = probes.multiarch if probes.platform == "linux" else ""
    prefixes = _prefixes(probes)
    if kind == "header":
        subs = [f"include/{arch}", "include"] if arch else ["include"]
        return _env_list(probes, "CMAKE_INCLUDE_PATH") + [
            str(Path(p) / s) for p in prefixes for s in subs
        ]
    if kind == "library":
        subs = [f"lib/{arch}", "lib64", "lib"] if arch else ["lib"]
        return _env_list(probes, "CMAKE_LIBRARY_PATH") + [
            str(Path(p) / s) for p in prefixes for s in subs
        ]
    if kind == "file":
        return prefixes
    return []  # tools: PATH is searched first, by name


def _expand(
    entry: str, probes: Probes, defines: Mapping[str, str], tools: Mapping[str, str]
) -> Optional[str]:
    """Fill in ``$ENV{X}``, ``${X}``, ``$TOOL{x}`` and ``{multiarch}``; None if one is unset."""
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        env, tool, var = m.groups()
        value: Optional[str]
        if env is not None:
            value = probes.env.get(env)
        elif tool is not None:
            found = tools.get(tool)
            value = str(Path(probes.realpath(found)).parent.parent) if found else None
        else:
            value = defines.get(var)
        if not value:
            missing = True
            return ""
        return value

    out = _VAR_RE.sub(sub, entry).replace("{multiarch}", probes.multiarch)
    return None if missing else out


def search_dirs(
    req: Requirement,
    probes: Probes,
    defines: Mapping[str, str] = _NONE,
    tools: Mapping[str, str] = _NONE,
) -> list[str]:
    """Where ``req`` is looked for, in order (the recipe's hints, then CMake's defaults)."""
    dirs = [d for d in (_expand(e, probes, defines, tools) for e in req.dirs) if d]
    if req.default_dirs:
        dirs += _default_dirs(req.kind, probes)
    return list(dict.fromkeys(dirs))


def _names(req: Requirement, platform: str, arch: str) -> tuple[str, ...]:
    files = tuple(f.replace("{multiarch}", arch) for f in req.files or (req.name,))
    if req.kind == "library":
        return tuple(f for n in files for f in library_files(n, platform))
    if req.kind == "tool" and platform == "windows":
        return tuple(f for n in files for f in (n, f"{n}.exe"))
    return files


def _first(probes: Probes, dirs: Sequence[str], names: Sequence[str]) -> Optional[Path]:
    for d in dirs:
        for n in names:
            cand = Path(d) / n
            if probes.is_file(cand):
                return cand
    return None


def _not_found(req: Requirement, names: Sequence[str], probes: Probes, where: str = "") -> Check:
    if req.kind == "file":  # long relative paths: their file names say enough
        names = [PurePosixPath(n).name for n in names]
    shown = ", ".join(dict.fromkeys(names))
    detail = "not found" if shown == req.name else f"not found ({shown})"
    return Check(req.name, "missing", detail + where, req.install_hint(probes.platform))


def _with_version(req: Requirement, probes: Probes, found: Path) -> Check:
    if req.min_version is None or req.version_from is None:
        return Check(req.name, "ok", str(found), path=str(found))
    text = probes.read_text(found)
    v = VERSION_PARSERS[req.version_from](text) if text is not None else None
    hint = req.install_hint(probes.platform)
    if v is None:
        return Check(req.name, "too-old", f"no version in {found}", hint, str(found))
    if v < req.min_version:
        detail = f"{vstr(v)} < {vstr(req.min_version)} ({found})"
        return Check(req.name, "too-old", detail, hint, str(found))
    return Check(req.name, "ok", f"{vstr(v)} ({found})", path=str(found))


def check_requirement(
    req: Requirement,
    probes: Probes,
    defines: Mapping[str, str] = _NONE,
    tools: Mapping[str, str] = _NONE,
) -> Optional[Check]:
    """Look ``req`` up; None when it does not apply (other platform, or made moot by a -D).

    ``defines`` are the build's ``-D`` values; ``tools`` maps the names of tools
    already found to their paths (for ``$TOOL{name}``).
    """
    plat = probes.platform
    if plat not in req.platforms or any(_is_set(defines, d) for d in req.skip_if_defined):
        return None
    names = _names(req, plat, probes.multiarch)
    if req.define and _is_set(defines, req.define):
        given = defines[req.define]
        if req.kind == "tool" and not any(sep in given for sep in "/\\"):
            hit = probes.which(given)  # a bare name: CMake looks it up on PATH
            found = Path(hit) if hit else None
        elif req.kind in ("tool", "library"):
            cand = Path(given)
            found = cand if probes.is_file(cand) else None
        else:
            base = names if req.kind == "header" else tuple(PurePosixPath(n).name for n in names)
            found = _first(probes, [given], base)
        if found is None:
            return _not_found(req, names, probes, f" (in -D {req.define}={given})")
        return _with_version(req, probes, found)
    if req.kind == "tool":
        for n in req.files or (req.name,):
            hit = probes.which(n)
            if hit:
                return _with_version(req, probes, Path(hit))
    found = _first(probes, search_dirs(req, probes, defines, tools), names)
    if found is None:
        return _not_found(req, names, probes)
    return _with_version(req, probes, found)
