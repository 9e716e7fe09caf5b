"""Backend recipes: validated data describing how to build a server for one backend.

A recipe is a TOML file (``recipes/<backend>.toml``, shipped inside the package as
``sdrpc_build/recipes``). Unknown keys and wrong types are refused with a
"did you mean" hint. Recipes are pure data; :mod:`sdrpc_build.plan` turns them
into CMake arguments.
"""

from __future__ import annotations

import difflib
import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sdrpc_build.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11
    import tomli as tomllib

__all__ = [
    "PLATFORMS",
    "Recipe",
    "Tool",
    "Variant",
    "builtin_recipe_dir",
    "list_recipes",
    "load_recipe",
    "load_recipe_file",
    "parse_recipe",
    "suggest",
]

PLATFORMS = ("linux", "macos", "windows")

_TOP_KEYS = {
    "description": str,
    "platforms": list,
    "min_cmake": str,
    "device_prefix": str,
    "visible_devices_env": str,
    "languages": list,
    "defines": dict,
    "tools": list,
    "variants": list,
}
_TOOL_KEYS = {"name": str, "why": str, "install": dict}
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
class Tool:
    name: str
    why: str
    install: tuple[tuple[str, str], ...]  # (platform, how to install)

    def install_hint(self, platform: str) -> str:
        for plat, how in self.install:
            if plat == platform:
                return how
        return f"install {self.name} and put it on PATH"


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
class Recipe:
    name: str
    description: str
    platforms: tuple[str, ...]
    min_cmake: tuple[int, ...]
    device_prefix: str
    visible_devices_env: Optional[str]
    languages: tuple[str, ...]
    defines: tuple[tuple[str, str], ...]
    tools: tuple[Tool, ...]
    variants: tuple[Variant, ...]
    source: str  # where it was loaded from
    sha256: str  # hash of the file's bytes (part of the cache key)


def suggest(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """``" (did you mean 'x'?)"`` or ``""``."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(table: Mapping[str, Any], allowed: Mapping[str, type], where: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise RecipeError(
                f"{where}: unknown key {key!r}{suggest(key, set(allowed))}",
                hint=f"allowed keys: {', '.join(sorted(allowed))}",
            )
        want = allowed[key]
        if not isinstance(value, want):
            raise RecipeError(
                f"{where}: {key!r} must be a {want.__name__}, not {type(value).__name__}",
                hint="see recipes/cpu.toml for an example",
            )


def _defines(table: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    out = []
    for key, raw in table.items():
        value = ("ON" if raw else "OFF") if isinstance(raw, bool) else raw
        if not isinstance(value, (str, int)):
            raise RecipeError(
                f"{where}: define {key!r} must be a string, integer or boolean",
                hint='write it like GGML_CUDA = "ON"',
            )
        if key == "GGML_MAX_NAME":
            raise RecipeError(
                f"{where}: GGML_MAX_NAME cannot be set by a recipe",
                hint="it comes from the sd.cpp pins or --max-name",
            )
        out.append((str(key), str(value)))
    return tuple(out)


def _str_list(value: list[Any], where: str, allowed: Optional[set[str]] = None) -> tuple[str, ...]:
    for item in value:
        if not isinstance(item, str):
            raise RecipeError(f"{where}: every entry must be a string", hint='e.g. ["linux"]')
        if allowed is not None and item not in allowed:
            raise RecipeError(
                f"{where}: unknown value {item!r}{suggest(item, allowed)}",
                hint=f"allowed: {', '.join(sorted(allowed))}",
            )
    return tuple(value)


def parse_recipe(name: str, data: bytes, source: str) -> Recipe:
    """Validate the bytes of a recipe file and return a :class:`Recipe`."""
    where = f"recipe {source}"
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(
            f"{where} is not valid TOML: {exc}", hint="fix the file's syntax"
        ) from None
    _check_keys(doc, _TOP_KEYS, where)
    if "defines" not in doc:
        raise RecipeError(f"{where}: missing [defines] table", hint="see recipes/cpu.toml")
    tools = []
    for i, t in enumerate(doc.get("tools", [])):
        tw = f"{where} tools[{i}]"
        if not isinstance(t, dict):
            raise RecipeError(f"{tw} must be a table", hint="use [[tools]]")
        _check_keys(t, _TOOL_KEYS, tw)
        if "name" not in t:
            raise RecipeError(f"{tw}: missing 'name'", hint="name the executable, e.g. nvcc")
        install = t.get("install", {})
        for plat in install:
            if plat not in PLATFORMS:
                raise RecipeError(
                    f"{tw}: unknown platform {plat!r}{suggest(plat, PLATFORMS)}",
                    hint=f"platforms: {', '.join(PLATFORMS)}",
                )
        tools.append(Tool(t["name"], t.get("why", ""), tuple(sorted(install.items()))))
    variants = []
    for i, v in enumerate(doc.get("variants", [])):
        vw = f"{where} variants[{i}]"
        if not isinstance(v, dict):
            raise RecipeError(f"{vw} must be a table", hint="use [[variants]]")
        _check_keys(v, _VARIANT_KEYS, vw)
        variants.append(
            Variant(
                when_option_missing=v.get("when_option_missing"),
                when_option_present=v.get("when_option_present"),
                when_path_exists=v.get("when_path_exists"),
                rename=tuple((str(a), str(b)) for a, b in v.get("rename", {}).items()),
                defines=_defines(v.get("defines", {}), vw),
                note=v.get("note", ""),
            )
        )
    min_cmake_text = doc.get("min_cmake", "3.14")
    try:
        min_cmake = tuple(int(p) for p in min_cmake_text.split("."))
    except ValueError:
        raise RecipeError(
            f"{where}: min_cmake {min_cmake_text!r} is not a version", hint='write it like "3.18"'
        ) from None
    return Recipe(
        name=name,
        description=doc.get("description", ""),
        platforms=_str_list(
            doc.get("platforms", list(PLATFORMS)), f"{where} platforms", set(PLATFORMS)
        ),
        min_cmake=min_cmake,
        device_prefix=doc.get("device_prefix", name.upper()),
        visible_devices_env=doc.get("visible_devices_env"),
        languages=_str_list(doc.get("languages", ["C", "CXX"]), f"{where} languages", _LANGUAGES),
        defines=_defines(doc["defines"], where),
        tools=tuple(tools),
        variants=tuple(variants),
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def builtin_recipe_dir() -> Path:
    """The recipes shipped with sdrpc (inside the wheel, or ``recipes/`` in a checkout)."""
    here = Path(__file__).resolve().parent
    packaged = here / "recipes"
    if packaged.is_dir():
        return packaged
    return here.parent / "recipes"


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
