"""Backend recipes: validated data describing how to build a server for one backend.

A recipe is a TOML file (``recipes/<backend>.toml``, shipped inside the package as
``sdrpc_build/recipes``). Unknown keys and wrong types are refused with a
"did you mean" hint. Recipes are pure data; :mod:`sdrpc_build.build.plan` turns them
into CMake arguments, and :mod:`sdrpc_build.build.doctor` checks the machine for what
their ``[[requires]]`` entries name (the one preflight of doctor and sdrpc-build).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sdrpc_build.build.recipe_checks import (
    PLATFORMS,
    check_keys,
    defines_table,
    install_table,
    str_list,
    suggest,
    version,
)
from sdrpc_build.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11
    import tomli as tomllib

__all__ = [
    "REQUIREMENT_KINDS",
    "RUNTIME_CHECKS",
    "VERSION_READERS",
    "CiFacts",
    "Recipe",
    "Requirement",
    "Tool",
    "Variant",
    "builtin_recipe_dir",
    "list_recipes",
    "load_recipe",
    "load_recipe_file",
    "parse_recipe",
]

_TOP_KEYS = {
    "description": str,
    "platforms": list,
    "min_cmake": str,
    "device_prefix": str,
    "visible_devices_env": str,
    "languages": list,
    "defines": dict,
    "tools": list,
    "requires": list,
    "runtime_checks": list,
    "variants": list,
    "ci": dict,
}
_CI_KEYS = {"platforms": list, "run": list, "toolchain": str, "order": int}
_TOOL_KEYS = {"name": str, "why": str, "install": dict}
_REQUIRE_KEYS = {
    "name": str,
    "kind": str,
    "files": list,
    "dirs": list,
    "default_dirs": bool,
    "define": str,
    "skip_if_defined": list,
    "min_version": str,
    "version_from": str,
    "platforms": list,
    "why": str,
    "install": dict,
    "needed_by": dict,
    "fetch": str,
}
_NEEDED_BY_KEYS = {"file": str, "contains": str}
#: what a requirement is looked up as (see :class:`Requirement`)
REQUIREMENT_KINDS = ("tool", "header", "library", "file")
#: how a version is read from a found file (the readers live in sdrpc_build.build.doctor)
VERSION_READERS = ("vulkan-header",)
#: sdrpc doctor's checks that a server can run here (a device driver), by name
RUNTIME_CHECKS = ("nvidia-driver", "vulkan-driver", "rocm-driver")
_VARIANT_KEYS = {
    "when_option_missing": str,
    "when_option_present": str,
    "when_path_exists": str,
    "rename": dict,
    "defines": dict,
    "note": str,
}
_LANGUAGES = {"C", "CXX", "CUDA", "HIP", "OBJC", "OBJCXX"}


@dataclass(frozen=True)
class Requirement:
    """One thing a backend's CMake needs on the machine, looked up before configure.

    ``kind`` says how ``files`` are found:

    - ``tool``: executables, on PATH, then in ``dirs``;
    - ``header``: paths relative to an include directory (the platform's, then ``dirs``);
    - ``library``: base names (``cublas`` -> ``libcublas.so``/``.a``, ``cublas.lib``, ...)
      in the platform's library directories, then ``dirs``;
    - ``file``: paths relative to a prefix (``/usr``, ``/usr/local``, then ``dirs``),
      e.g. a CMake package's config file.

    ``dirs`` entries may use ``$ENV{NAME}`` (an environment variable), ``${NAME}``
    (a ``-D NAME=VALUE`` given to the build), ``$TOOL{name}`` (the install root
    of a tool found by an earlier requirement of the recipe: ``.../bin/nvcc`` ->
    ``...``) and ``{multiarch}`` (``x86_64-linux-gnu``, also in ``files``); an
    entry whose variable is unset is dropped.
    ``define`` names the CMake variable that, given with ``-D``, points CMake at
    the thing itself (a tool or library file; an include directory; the directory
    holding a ``file``): then only that place counts, as in CMake.
    ``skip_if_defined``: a ``-D`` of any of these makes the requirement moot
    (e.g. another BLAS vendor). ``min_version`` is read with ``version_from``.
    ``needed_by`` (``file``, ``contains``): the minimum holds for trees whose ``file``
    contains ``contains`` (the symbol that needs it); once the tree is at hand, a tree
    without it takes any version. ``fetch``: the sdrpc-build option that fetches the
    requirement instead (e.g. ``--vulkan-headers auto``); doctor names it.
    """

    name: str
    kind: str = "tool"
    files: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()
    default_dirs: bool = True
    define: Optional[str] = None
    skip_if_defined: tuple[str, ...] = ()
    min_version: Optional[tuple[int, ...]] = None
    version_from: Optional[str] = None
    platforms: tuple[str, ...] = PLATFORMS
    why: str = field(default="", compare=False)
    install: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    needed_by: Optional[tuple[str, str]] = None
    fetch: Optional[str] = None

    def install_hint(self, platform: str) -> str:
        """How to get it on ``platform``; ``{min_version}`` in the text is filled in.

        A requirement sdrpc-build can fetch names that option first."""
        how = self._install_hint(platform)
        return (
            f"pass {self.fetch} to sdrpc-build (it fetches them), or {how}" if self.fetch else how
        )

    def _install_hint(self, platform: str) -> str:
        for plat, how in self.install:
            if plat == platform:
                return how.replace("{min_version}", ".".join(map(str, self.min_version or ())))
        if self.kind == "tool":
            return f"install {self.name} and put it on PATH"
        return f"install the package that provides {self.name}"


#: the ``[[tools]]`` of older recipe files are requirements of kind ``tool``
Tool = Requirement


@dataclass(frozen=True)
class Variant:
    """A change applied on trees that match its conditions (older layouts)."""

    when_option_missing: Optional[str]
    when_option_present: Optional[str]
    when_path_exists: Optional[str]
    rename: tuple[tuple[str, str], ...]
    defines: tuple[tuple[str, str], ...]
    note: str

    def matches(self, options: frozenset[str], paths: frozenset[str]) -> bool:
        if self.when_option_missing and self.when_option_missing in options:
            return False
        if self.when_option_present and self.when_option_present not in options:
            return False
        return not (self.when_path_exists and self.when_path_exists not in paths)


@dataclass(frozen=True)
class CiFacts:
    """The recipe's ``[ci]`` table: how the CI matrix (``sdrpc-build --ci-matrix``) builds it.

    ``platforms``: where a hosted runner builds it (one matrix row each, if the recipe
    builds there); ``run``: where the server also runs on the runner, so CI launches and
    checks it; ``toolchain``: the workflow step that installs the backend's toolchain;
    ``order``: rows of one platform are listed by it, then by name.
    """

    platforms: tuple[str, ...]
    run: tuple[str, ...] = ()
    toolchain: str = "none"
    order: int = 0


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    platforms: tuple[str, ...]
    min_cmake: tuple[int, ...]
    device_prefix: str
    visible_devices_env: Optional[str]
    languages: tuple[str, ...]
    defines: tuple[tuple[str, str], ...]
    requires: tuple[Requirement, ...]  # checked before configure (sdrpc doctor, sdrpc-build)
    variants: tuple[Variant, ...]
    source: str  # where it was loaded from
    sha256: str  # hash of the file's bytes (part of the cache key)
    #: sdrpc doctor: what shows whether a server can run here (not needed to build)
    runtime_checks: tuple[str, ...] = ()
    ci: Optional[CiFacts] = None  # None: CI does not build it

    @property
    def tools(self) -> tuple[Requirement, ...]:
        """Everything the recipe needs (the name of older callers)."""
        return self.requires


def _tool(t: Any, where: str) -> Requirement:
    """An older ``[[tools]]`` entry: an executable on PATH."""
    if not isinstance(t, dict):
        raise RecipeError(f"{where} must be a table", hint="use [[tools]]")
    check_keys(t, _TOOL_KEYS, where)
    if "name" not in t:
        raise RecipeError(f"{where}: missing 'name'", hint="name the executable, e.g. nvcc")
    return Requirement(
        t["name"],
        files=(t["name"],),
        why=t.get("why", ""),
        install=install_table(t.get("install", {}), where),
    )


def _requirement(r: Any, where: str) -> Requirement:
    if not isinstance(r, dict):
        raise RecipeError(f"{where} must be a table", hint="use [[requires]]")
    check_keys(r, _REQUIRE_KEYS, where)
    if "name" not in r:
        raise RecipeError(f"{where}: missing 'name'", hint='e.g. name = "cublas"')
    kind = r.get("kind", "tool")
    if kind not in REQUIREMENT_KINDS:
        raise RecipeError(
            f"{where}: unknown kind {kind!r}{suggest(kind, REQUIREMENT_KINDS)}",
            hint=f"kinds: {', '.join(REQUIREMENT_KINDS)}",
        )
    version_from = r.get("version_from")
    if version_from is not None and version_from not in VERSION_READERS:
        raise RecipeError(
            f"{where}: unknown version_from {version_from!r}"
            + suggest(version_from, VERSION_READERS),
            hint=f"known: {', '.join(VERSION_READERS)}",
        )
    if ("min_version" in r) != (version_from is not None):
        raise RecipeError(
            f"{where}: min_version and version_from go together",
            hint='e.g. min_version = "1.3.272" and version_from = "vulkan-header"',
        )
    needed_by: Optional[tuple[str, str]] = None
    if "needed_by" in r:
        nb = r["needed_by"]
        check_keys(nb, _NEEDED_BY_KEYS, f"{where} needed_by")
        if set(nb) != set(_NEEDED_BY_KEYS) or "min_version" not in r:
            raise RecipeError(
                f"{where}: needed_by needs 'file' and 'contains', and a min_version",
                hint='e.g. needed_by = { file = "ggml/src/x.cpp", contains = "Symbol" }',
            )
        needed_by = (nb["file"], nb["contains"])
    return Requirement(
        name=r["name"],
        kind=kind,
        files=str_list(r.get("files", [r["name"]]), f"{where} files"),
        dirs=str_list(r.get("dirs", []), f"{where} dirs"),
        default_dirs=r.get("default_dirs", True),
        define=r.get("define"),
        skip_if_defined=str_list(r.get("skip_if_defined", []), f"{where} skip_if_defined"),
        min_version=version(r["min_version"], where) if "min_version" in r else None,
        version_from=version_from,
        platforms=str_list(
            r.get("platforms", list(PLATFORMS)), f"{where} platforms", set(PLATFORMS)
        ),
        why=r.get("why", ""),
        install=install_table(r.get("install", {}), where),
        needed_by=needed_by,
        fetch=r.get("fetch"),
    )


def parse_recipe(name: str, data: bytes, source: str) -> Recipe:
    """Validate the bytes of a recipe file and return a :class:`Recipe`."""
    where = f"recipe {source}"
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(
            f"{where} is not valid TOML: {exc}", hint="fix the file's syntax"
        ) from None
    check_keys(doc, _TOP_KEYS, where)
    if "defines" not in doc:
        raise RecipeError(f"{where}: missing [defines] table", hint="see recipes/cpu.toml")
    requires = [_tool(t, f"{where} tools[{i}]") for i, t in enumerate(doc.get("tools", []))] + [
        _requirement(r, f"{where} requires[{i}]") for i, r in enumerate(doc.get("requires", []))
    ]
    variants = []
    for i, v in enumerate(doc.get("variants", [])):
        vw = f"{where} variants[{i}]"
        if not isinstance(v, dict):
            raise RecipeError(f"{vw} must be a table", hint="use [[variants]]")
        check_keys(v, _VARIANT_KEYS, vw)
        variants.append(
            Variant(
                when_option_missing=v.get("when_option_missing"),
                when_option_present=v.get("when_option_present"),
                when_path_exists=v.get("when_path_exists"),
                rename=tuple((str(a), str(b)) for a, b in v.get("rename", {}).items()),
                defines=defines_table(v.get("defines", {}), vw),
                note=v.get("note", ""),
            )
        )
    min_cmake = version(doc.get("min_cmake", "3.14"), f"{where}: min_cmake")
    runtime = doc.get("runtime_checks", [])
    return Recipe(
        name=name,
        description=doc.get("description", ""),
        platforms=str_list(
            doc.get("platforms", list(PLATFORMS)), f"{where} platforms", set(PLATFORMS)
        ),
        min_cmake=min_cmake,
        device_prefix=doc.get("device_prefix", name.upper()),
        visible_devices_env=doc.get("visible_devices_env"),
        languages=str_list(doc.get("languages", ["C", "CXX"]), f"{where} languages", _LANGUAGES),
        defines=defines_table(doc["defines"], where),
        requires=tuple(requires),
        variants=tuple(variants),
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        runtime_checks=str_list(runtime, f"{where} runtime_checks", set(RUNTIME_CHECKS)),
        ci=_ci(doc["ci"], f"{where} [ci]") if "ci" in doc else None,
    )


def _ci(table: Mapping[str, Any], where: str) -> CiFacts:
    check_keys(table, _CI_KEYS, where)
    if "platforms" not in table:
        raise RecipeError(f"{where}: missing 'platforms'", hint='e.g. platforms = ["linux"]')
    platforms = str_list(table["platforms"], f"{where} platforms", set(PLATFORMS))
    return CiFacts(
        platforms=platforms,
        run=str_list(table.get("run", []), f"{where} run", set(platforms)),
        toolchain=table.get("toolchain", "none"),
        order=table.get("order", 0),
    )


def builtin_recipe_dir() -> Path:
    """The recipes shipped with sdrpc (inside the wheel, or ``recipes/`` in a checkout)."""
    package = Path(__file__).resolve().parents[1]  # sdrpc_build/
    packaged = package / "recipes"
    if packaged.is_dir():
        return packaged
    return package.parent / "recipes"


def list_recipes(directory: Optional[Path] = None) -> list[Recipe]:
    d = directory or builtin_recipe_dir()
    return [load_recipe_file(p) for p in sorted(d.glob("*.toml"))]


def load_recipe_file(path: Path) -> Recipe:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(
            f"cannot read recipe {path}: {exc.strerror}", hint="check the path given to --recipe"
        ) from None
    return parse_recipe(path.stem, data, str(path))


def load_recipe(backend: str, directory: Optional[Path] = None) -> Recipe:
    """The built-in recipe for ``backend``; unknown names get the nearest suggestion."""
    d = directory or builtin_recipe_dir()
    path = d / f"{backend}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in d.glob("*.toml"))
        raise RecipeError(
            f"unknown backend {backend!r}{suggest(backend, names)}",
            hint=f"known backends: {', '.join(names)} (sdrpc-build --list-backends); "
            "or pass --recipe FILE",
        )
    return load_recipe_file(path)
