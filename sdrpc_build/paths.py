"""Where sdrpc keeps its caches. Pure: the environment is passed in."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import platformdirs

__all__ = ["artifacts_dir", "cache_dir", "run_dir", "shown_path", "sources_dir"]


def cache_dir(env: Mapping[str, str], override: str | Path | None = None) -> Path:
    """The root cache directory: ``--cache-dir`` > ``$SDRPC_CACHE_DIR`` > user cache dir."""
    if override:
        return Path(override).expanduser().resolve()
    if env.get("SDRPC_CACHE_DIR"):
        return Path(env["SDRPC_CACHE_DIR"]).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("sdrpc", appauthor=False))


def sources_dir(root: Path) -> Path:
    """Fetched llama.cpp sources, one directory per commit."""
    return root / "sources"


def artifacts_dir(root: Path) -> Path:
    """Built servers, one directory per cache key, each with ``manifest.json``."""
    return root / "artifacts"


def run_dir(root: Path) -> Path:
    """State files of detached ``sdrpc-launch`` instances, one ``<name>.json`` each."""
    return root / "run"


def shown_path(path: str | Path, limit: int = 300) -> str:
    """A path for a one-line message: in full unless absurdly long (then head...tail)."""
    text = str(path)
    if len(text) <= limit:
        return text
    return f"{text[:120]}...{text[-120:]} ({len(text)} characters)"
