"""Checks for the values of a recipe file: known keys (with "did you mean"), types,
string lists, CMake defines, versions and per-platform install lines.

Each raises :class:`RecipeError` (exit 4) naming where in the file the value is.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Optional

from sdrpc_build.errors import RecipeError

__all__ = [
    "PLATFORMS",
    "check_keys",
    "defines_table",
    "install_table",
    "str_list",
    "suggest",
    "version",
]

PLATFORMS = ("linux", "macos", "windows")


def suggest(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """``" (did you mean 'x'?)"`` or ``""``."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(table: Mapping[str, Any], allowed: Mapping[str, type], where: str) -> None:
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


def defines_table(table: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
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


def str_list(value: list[Any], where: str, allowed: Optional[set[str]] = None) -> tuple[str, ...]:
    for item in value:
        if not isinstance(item, str):
            raise RecipeError(f"{where}: every entry must be a string", hint='e.g. ["linux"]')
        if allowed is not None and item not in allowed:
            raise RecipeError(
                f"{where}: unknown value {item!r}{suggest(item, allowed)}",
                hint=f"allowed: {', '.join(sorted(allowed))}",
            )
    return tuple(value)


def install_table(table: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    for plat, how in table.items():
        if plat not in PLATFORMS:
            raise RecipeError(
                f"{where}: unknown platform {plat!r}{suggest(plat, PLATFORMS)}",
                hint=f"platforms: {', '.join(PLATFORMS)}",
            )
        if not isinstance(how, str):
            raise RecipeError(
                f"{where}: install.{plat} must be a string",
                hint='e.g. install.linux = "apt-get ..."',
            )
    return tuple(sorted(table.items()))


def version(text: str, where: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        raise RecipeError(
            f"{where}: {text!r} is not a version", hint='write it like "1.3.272"'
        ) from None
