"""The host side's venv install (files/sdrpc_venv.py): what it judges itself and what it
leaves to pip (real installs: tests/integration/test_fleet_venv.py)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from sdrpc_build.fleet.runner import PLAYBOOK_DIR

SOURCE = PLAYBOOK_DIR / "roles/sdrpc_server/files/sdrpc_venv.py"


def venv_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sdrpc_venv", SOURCE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sdrpc_venv"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


V = venv_module()
ENV = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "6.1.0-18-amd64",
    "platform_system": "Linux",
    "platform_version": "#1 SMP",
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "extra": "",
}
CP311 = V.Interp("cp", 3, 11, "x86_64", (2, 36), ENV)


@pytest.mark.parametrize(
    ("tag", "fits"),
    [
        ("py3-none-any", True),
        ("py2.py3-none-any", True),
        ("py311-none-any", True),
        ("py312-none-any", False),
        ("py2-none-any", False),
        ("cp311-cp311-manylinux_2_28_x86_64", True),
        ("cp311-cp311-manylinux1_x86_64", True),
        ("cp311-cp311-linux_x86_64", True),
        ("cp310-cp310-manylinux2014_x86_64", False),
        ("cp39-abi3-manylinux2014_x86_64", True),
        ("cp312-abi3-manylinux2014_x86_64", False),
        ("py3-none-manylinux_2_39_x86_64", False),  # newer glibc than the host's
        ("py3-none-manylinux2014_aarch64", False),
        ("py3-none-musllinux_1_2_x86_64", False),
        ("pp310-pypy310_pp73-manylinux2014_x86_64", False),
        ("cp311-cp311d-manylinux2014_x86_64", False),
    ],
)
def test_tags_judged_for_a_cp311_x86_64_glibc_host(tag: str, fits: bool) -> None:
    _, tags = V.wheel_tags(f"demo-1.0-{tag}.whl")
    assert any(V.tag_fits(t, CP311) for t in tags) is fits


def test_a_host_without_glibc_takes_no_manylinux_wheel() -> None:
    musl = V.Interp("cp", 3, 11, "x86_64", None, ENV)
    assert not V.tag_fits(("py3", "none", "manylinux2014_x86_64"), musl)
    assert V.tag_fits(("py3", "none", "any"), musl)


@pytest.mark.parametrize(
    ("marker", "value"),
    [
        ('python_version < "3.11"', False),
        ("python_version >= '3.8'", True),
        ('python_version < "3.10"', False),  # versions, not strings: "3.11" < "3.10" as text
        ('python_full_version >= "3.11.1"', True),
        ('extra == "fleet"', False),
        ('sys_platform == "linux" and (python_version < "3.9" or os_name == "posix")', True),
        ('sys_platform == "win32" or platform_machine == "x86_64"', True),
        ('"linux" in sys_platform', True),
        ('platform_system not in "Windows Darwin"', True),
        ('implementation_name != "cpython"', False),
    ],
)
def test_markers(marker: str, value: bool) -> None:
    assert V.marker_true(marker, ENV) is value


@pytest.mark.parametrize(
    "marker",
    [
        'platform_release < "abc"',  # an order on words: pip knows, this reader does not
        'python_version < "3.11" and',
        'unknown_var == "x"',
        'python_version ~= "3.1"',
        "python_version < 3.11",
    ],
)
def test_markers_it_does_not_know_are_left_to_pip(marker: str) -> None:
    with pytest.raises(V.Unsure):
        V.marker_true(marker, ENV)


@pytest.mark.parametrize(
    ("spec", "fits"),
    [
        (">=3.10", True),
        (">=3.12", False),
        (">=2.7, !=3.0.*, !=3.1.*", True),
        ("!=3.11.*", False),
        ("==3.11.*", True),
        ("~=3.9", True),
        ("~=3.11.3", False),
        ("<4,>=3.8", True),
    ],
)
def test_requires_python(spec: str, fits: bool) -> None:
    assert V.python_fits(spec, "3.11.2") is fits


def test_requires_python_it_does_not_know_is_left_to_pip() -> None:
    with pytest.raises(V.Unsure):
        V.python_fits("===3.11.2", "3.11.2")
