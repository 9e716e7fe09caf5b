"""The GitHub Actions build matrix, derived from the recipes (never written twice).

``sdrpc-build --ci-matrix`` prints ``{"include": [...]}`` for ``fromJSON`` in
``.github/workflows/rpc-server.yml``. A row exists for every platform of a
recipe's ``[ci]`` table that the recipe builds on; the table also says where the
server runs on the hosted runner and which toolchain step it needs, so a new
backend is one recipe file. Only the runners (one per platform) are written here.
Pure: recipes in, a JSON-ready dict out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, TextIO

from sdrpc_build.build.recipe_checks import PLATFORMS
from sdrpc_build.build.recipes import Recipe, list_recipes

__all__ = [
    "RUNNERS",
    "MatrixRow",
    "Runner",
    "ci_backends",
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


def ci_backends(recipes: Iterable[Recipe]) -> dict[str, tuple[str, ...]]:
    """Platform -> the backends CI builds there, in matrix order (the recipes' ``[ci]``)."""
    ranked = sorted((r.ci.order, r.name, r) for r in recipes if r.ci is not None)
    return {
        platform: tuple(
            name
            for _order, name, r in ranked
            if r.ci is not None and platform in r.ci.platforms and platform in r.platforms
        )
        for platform in PLATFORMS
    }


def matrix_rows(
    recipes: Iterable[Recipe],
    backends: Optional[Sequence[str]] = None,
    table: Optional[Mapping[str, Sequence[str]]] = None,
) -> list[MatrixRow]:
    """One row per (recipe, platform) that the recipe's ``[ci]`` (or ``table``) names.

    Rows are ordered by platform (linux, macos, windows), then by the table's order.
    ``backends`` (if given) keeps only those backends.
    """
    recipes = list(recipes)
    by_name = {r.name: r for r in recipes}
    rows = []
    chosen = table if table is not None else ci_backends(recipes)
    for platform in PLATFORMS:
        runner = RUNNERS[platform]
        for name in chosen.get(platform, ()):
            recipe = by_name.get(name)
            if recipe is None or platform not in recipe.platforms:
                continue
            if backends is not None and name not in backends:
                continue
            ci = recipe.ci
            rows.append(
                MatrixRow(
                    backend=name,
                    os=platform,
                    runner=runner.label,
                    arch=runner.arch,
                    toolchain=ci.toolchain if ci else "none",
                    run=ci is not None and platform in ci.run,
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
    stream = out or sys.stdout
    stream.write(json.dumps(ci_matrix(list_recipes(), backends), sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":  # python -m sdrpc_build.build.ci_matrix
    sys.exit(main_ci_matrix())
