"""Version numbers from tool output and from ``vulkan_core.h``.

The minimum Vulkan header version is data: ``min_version`` in ``recipes/vulkan.toml``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Optional

__all__ = [
    "first_line",
    "parse_version",
    "parse_vulkan_header_version",
    "vstr",
]

_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_VK_HEADER_RE = re.compile(r"^#define\s+VK_HEADER_VERSION\s+(\d+)\s*$", re.M)
_VK_COMPLETE_RE = re.compile(
    r"^#define\s+VK_HEADER_VERSION_COMPLETE\s+VK_MAKE_(?:API_)?VERSION\(\s*(?:\d+\s*,\s*)?"
    r"(\d+)\s*,\s*(\d+)\s*,\s*VK_HEADER_VERSION\s*\)",
    re.M,
)


def parse_vulkan_header_version(text: str) -> Optional[tuple[int, int, int]]:
    """(major, minor, VK_HEADER_VERSION) from ``vulkan_core.h``, or None."""
    m = _VK_HEADER_RE.search(text)
    if not m:
        return None
    patch = int(m.group(1))
    c = _VK_COMPLETE_RE.search(text)
    major, minor = (int(c.group(1)), int(c.group(2))) if c else (1, 0)
    return major, minor, patch


def parse_version(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """The first ``X.Y[.Z]`` in ``text``, or None."""
    if not text:
        return None
    m = _VERSION_RE.search(text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def vstr(v: Iterable[int]) -> str:
    """``(1, 3, 272)`` -> ``"1.3.272"``."""
    return ".".join(str(n) for n in v)


def first_line(text: Optional[str]) -> str:
    """The first non-blank line of ``text``, stripped; "" if none."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[0] if lines else ""
