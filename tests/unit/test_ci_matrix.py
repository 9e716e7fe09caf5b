"""The CI matrix comes from the recipes: rows, order, filters, JSON shape."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sdrpc_build.build.ci_matrix import RUNNERS, ci_backends, ci_matrix, main_ci_matrix, matrix_rows
from sdrpc_build.build.recipes import Recipe, list_recipes, parse_recipe
from sdrpc_build.errors import RecipeError

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


def _recipe(name: str, platforms: list[str], ci: str = "") -> Recipe:
    plats = ", ".join(f'"{p}"' for p in platforms)
    data = f'platforms = [{plats}]\n[defines]\nX = "ON"\n{ci}'.encode()
    return parse_recipe(name, data, f"<{name}>")


def test_builtin_matrix_is_the_issue_matrix() -> None:
    rows = [(r["backend"], r["os"], r["runner"]) for r in ci_matrix(list_recipes())["include"]]
    assert rows == [
        ("cpu", "linux", "ubuntu-24.04"),
        ("vulkan", "linux", "ubuntu-24.04"),
        ("cuda", "linux", "ubuntu-24.04"),
        ("metal", "macos", "macos-14"),
        ("cpu", "windows", "windows-2022"),
        ("vulkan", "windows", "windows-2022"),
        ("cuda", "windows", "windows-2022"),
    ]


def test_row_fields() -> None:
    recipes = list_recipes()
    sha = {r.name: r.sha256 for r in recipes}
    for row in ci_matrix(recipes)["include"]:
        assert set(row) == {
            "backend",
            "os",
            "runner",
            "arch",
            "toolchain",
            "run",
            "recipe_sha256",
            "recipe_hash",
            "name",
        }
        assert row["recipe_sha256"] == sha[str(row["backend"])]
        assert row["recipe_hash"] == sha[str(row["backend"])][:16]
        assert row["arch"] == RUNNERS[str(row["os"])].arch
        assert row["name"] == f"{row['backend']}-{row['os']}-{row['arch']}"


def test_toolchain_and_run_flags() -> None:
    rows = {(r.backend, r.os): r for r in matrix_rows(list_recipes())}
    assert rows["cuda", "linux"].toolchain == "cuda"
    assert rows["cuda", "linux"].run is False  # hosted runners have no NVIDIA driver
    assert rows["vulkan", "linux"].toolchain == "vulkan"
    assert rows["vulkan", "linux"].run is True  # lavapipe
    assert rows["vulkan", "windows"].run is False
    assert rows["metal", "macos"].toolchain == "xcode"
    assert rows["cpu", "windows"].toolchain == "none"
    assert rows["cpu", "windows"].run is True


def test_recipe_platforms_limit_the_table() -> None:
    # a cuda recipe without windows gets no windows row, although CI could build it there
    ci = '[ci]\nplatforms = ["linux", "windows"]\n'
    rows = matrix_rows([_recipe("cuda", ["linux"], ci), _recipe("cpu", ["linux", "windows"], ci)])
    assert [(r.backend, r.os) for r in rows] == [
        ("cpu", "linux"),
        ("cuda", "linux"),
        ("cpu", "windows"),
    ]


def test_backends_not_in_the_table_are_left_out() -> None:
    rows = matrix_rows([_recipe("sycl", ["linux", "windows"]), _recipe("vulkan", ["macos"])])
    assert rows == []  # sycl: no CI toolchain; vulkan on macOS: not in the table


def test_backend_filter() -> None:
    rows = ci_matrix(list_recipes(), backends=["cuda"])["include"]
    assert [(r["backend"], r["os"]) for r in rows] == [("cuda", "linux"), ("cuda", "windows")]
    assert ci_matrix(list_recipes(), backends=[])["include"] == []


def test_custom_table() -> None:
    rows = matrix_rows([_recipe("hip", ["linux"])], table={"linux": ("hip",)})
    assert [(r.backend, r.os, r.toolchain, r.run) for r in rows] == [
        ("hip", "linux", "none", False)
    ]


def test_every_table_backend_has_a_recipe() -> None:
    names = {r.name for r in list_recipes()}
    table = ci_backends(list_recipes())
    for platform, backends in table.items():
        assert platform in RUNNERS
        assert set(backends) <= names
    # what the recipes' [ci] tables say: the table that used to be written in Python
    assert table == {
        "linux": ("cpu", "vulkan", "cuda"),
        "macos": ("metal",),
        "windows": ("cpu", "vulkan", "cuda"),
    }


def test_a_new_backend_is_one_recipe_file() -> None:
    """Its [ci] table alone gives it rows, a toolchain step and the run flag."""
    sycl = _recipe(
        "sycl",
        ["linux", "windows"],
        '[ci]\nplatforms = ["linux"]\nrun = ["linux"]\ntoolchain = "oneapi"\norder = -1\n',
    )
    rows = matrix_rows([*list_recipes(), sycl], backends=["sycl", "cpu"])
    assert [(r.backend, r.os, r.toolchain, r.run) for r in rows] == [
        ("sycl", "linux", "oneapi", True),
        ("cpu", "linux", "none", True),
        ("cpu", "windows", "none", True),
    ]


@pytest.mark.parametrize(
    ("ci", "text"),
    [
        ('[ci]\nrun = ["linux"]\n', "missing 'platforms'"),
        ('[ci]\nplatforms = ["linx"]\n', "did you mean 'linux'"),
        ('[ci]\nplatforms = ["linux"]\nrun = ["windows"]\n', "unknown value 'windows'"),
        ('[ci]\nplatforms = ["linux"]\nrunners = 2\n', "did you mean 'run'"),
        ('[ci]\nplatforms = ["linux"]\norder = "first"\n', "'order' must be a int"),
    ],
)
def test_bad_ci_tables(ci: str, text: str) -> None:
    with pytest.raises(RecipeError, match=text):
        _recipe("x", ["linux"], ci)


def test_main_prints_one_json_line() -> None:
    buf = io.StringIO()
    assert main_ci_matrix(out=buf) == 0
    text = buf.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text) == json.loads(json.dumps(ci_matrix(list_recipes()), sort_keys=True))


@pytest.mark.parametrize("name", ["ci.yml", "rpc-server.yml", "build-servers.yml"])
def test_workflows_use_the_generated_matrix(name: str) -> None:
    """The workflows exist and no server workflow spells out the backend x OS matrix."""
    text = (WORKFLOWS / name).read_text()
    assert "\t" not in text
    if name == "build-servers.yml":
        assert "workflow_call:" in text
        assert "sdrpc-build --ci-matrix" in text
        assert "matrix: ${{ fromJSON(needs.setup.outputs.matrix) }}" in text
        assert "runs-on: ${{ matrix.runner }}" in text
    if name == "rpc-server.yml":
        assert "uses: ./.github/workflows/build-servers.yml" in text
        assert "runs-on" not in text
