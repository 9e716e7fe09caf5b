"""The GitHub Actions build matrix, derived from the recipes (never written twice).

``sdrpc-build --ci-matrix`` prints ``{"include": [...]}`` for ``fromJSON`` in
``.github/workflows/rpc-server.yml``. A row exists for every recipe platform
that a hosted runner can build (:data:`CI_BACKENDS`); the recipe's own
``platforms`` decide the rest, so a new recipe only needs a line here when CI
should build it. Pure: recipes in, a JSON-ready dict out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, TextIO

from sdrpc_build.build.recipes import PLATFORMS, Recipe

__all__ = [
    "CI_BACKENDS",
    "RUNNABLE",
    "RUNNERS",
    "MatrixRow",
    "ci_matrix",
    "main_ci_matrix",
    "matrix_rows",
]


@dataclass(frozen=True)
class Runner:
    label: str  # runs-on
    arch: str  # x64 | arm64: part of the artifact name


#: the hosted runner per platform (pinned images: a moving ``-latest`` changes the compilers)
RUNNERS: Mapping[str, Runner] = {
    "linux": Runner("ubuntu-24.04", "x64"),
    "macos": Runner("macos-14", "arm64"),
    "windows": Runner("windows-2022", "x64"),
}

#: which backends CI can build on each platform (toolchains installable on a hosted runner)
CI_BACKENDS: Mapping[str, tuple[str, ...]] = {
    "linux": ("cpu", "vulkan", "cuda"),
    "macos": ("metal",),
    "windows": ("cpu", "vulkan", "cuda"),
}

#: (backend, platform) pairs whose server can run on the hosted runner, so CI launches and
#: checks it. Hosted runners have no NVIDIA driver; Linux gets a CPU Vulkan device from Mesa's
#: lavapipe; Apple Silicon runners expose a Metal device; Windows has no Vulkan driver.
RUNNABLE: frozenset[tuple[str, str]] = frozenset(
    {
        ("cpu", "linux"),
        ("vulkan", "linux"),
        ("metal", "macos"),
        ("cpu", "windows"),
    }
)

#: the toolchain step a row needs (the workflow switches on this, not on backend names)
_TOOLCHAIN = {"cuda": "cuda", "vulkan": "vulkan", "metal": "xcode"}


@dataclass(frozen=True)
class MatrixRow:
    backend: str
    os: str
    runner: str
    arch: str
    toolchain: str
    run: bool
    recipe_sha256: str

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "os": self.os,
            "runner": self.runner,
            "arch": self.arch,
            "toolchain": self.toolchain,
            "run": self.run,
            "recipe_sha256": self.recipe_sha256,
            # a short hash for cache keys and a display name for the job list
            "recipe_hash": self.recipe_sha256[:16],
            "name": f"{self.backend}-{self.os}-{self.arch}",
        }


def matrix_rows(
    recipes: Iterable[Recipe],
    backends: Optional[Sequence[str]] = None,
    table: Mapping[str, Sequence[str]] = CI_BACKENDS,
) -> list[MatrixRow]:
    """One row per (recipe, platform) that both the recipe and ``table`` allow.

    Rows are ordered by platform (linux, macos, windows), then by the table's order.
    ``backends`` (if given) keeps only those backends.
    """
    by_name = {r.name: r for r in recipes}
    rows = []
    for platform in PLATFORMS:
        runner = RUNNERS[platform]
        for name in table.get(platform, ()):
            recipe = by_name.get(name)
            if recipe is None or platform not in recipe.platforms:
                continue
            if backends is not None and name not in backends:
                continue
            rows.append(
                MatrixRow(
                    backend=name,
                    os=platform,
                    runner=runner.label,
                    arch=runner.arch,
                    toolchain=_TOOLCHAIN.get(name, "none"),
                    run=(name, platform) in RUNNABLE,
                    recipe_sha256=recipe.sha256,
                )
            )
    return rows


def ci_matrix(
    recipes: Iterable[Recipe], backends: Optional[Sequence[str]] = None
) -> dict[str, list[dict[str, object]]]:
    """``{"include": [{"backend", "os", "runner", "arch", ...}, ...]}`` for ``fromJSON``."""
    return {"include": [row.as_dict() for row in matrix_rows(recipes, backends)]}


def main_ci_matrix(backends: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """Print the matrix of the built-in recipes as one line of JSON; return 0."""
    from sdrpc_build.build.recipes import list_recipes

    stream = out or sys.stdout
    stream.write(json.dumps(ci_matrix(list_recipes(), backends), sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":  # python -m sdrpc_build.build.ci_matrix
    sys.exit(main_ci_matrix())
