"""The recipes ship inside the package: a plain `pip install` (not a checkout) has them.

So does the PEP 561 marker ``py.typed``: type checkers read sdrpc_build's annotations.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_recipes_and_entry_points(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("sdrpc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("sdrpc_build/recipes/")}
    in_repo = {p.name for p in (ROOT / "recipes").glob("*.toml")}
    assert shipped == in_repo
    assert {"cpu.toml", "cuda.toml", "vulkan.toml"} <= shipped
    assert "sdrpc_build/py.typed" in names  # PEP 561: type checkers use the annotations
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sdrpc_build").rglob("*.py")}
    assert modules - names == set()  # every module ships (a .gitignore rule once hid a wing)
    # the fleet's Ansible playbooks and role are package data: sdrpc up runs them from the wheel
    playbooks = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "sdrpc_build/fleet/ansible").rglob("*.yml")
    }
    assert {"sdrpc_build/fleet/ansible/up.yml", "sdrpc_build/fleet/ansible/down.yml"} <= playbooks
    assert "sdrpc_build/fleet/ansible/roles/sdrpc_server/tasks/main.yml" in playbooks
    assert playbooks - names == set()
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    for script in ("sdrpc-build", "sdrpc-check", "sdrpc-launch", "sdrpc-bench", "sdrpc ="):
        assert script in text
