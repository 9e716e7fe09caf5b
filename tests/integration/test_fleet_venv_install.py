"""The host side's venv install (files/sdrpc_venv.py), run as Ansible runs it on a host: the
wheelhouse zip the client writes (fleet/wheelhouse.py), ``python3 WHEELHOUSE.pyz JSON``, here on
small wheelhouses built in the test: a venv of this machine's Python with working console
scripts, without ensurepip; pip where the fast way does not judge."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from sdrpc_build.fleet.wheelhouse import write_zipapp

pytestmark = pytest.mark.integration


def wheel(
    name: str,
    files: dict[str, bytes],
    *,
    requires: tuple[str, ...] = (),
    scripts: dict[str, str] | None = None,
    tag: str = "py3-none-any",
    requires_python: str = "",
    exec_files: tuple[str, ...] = (),
) -> tuple[str, bytes]:
    """A wheel file (name, bytes) as build backends write them."""
    info = f"{name}-1.0.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    if requires_python:
        meta += f"Requires-Python: {requires_python}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\nA description.\n"
    members = dict(files)
    members[f"{info}/METADATA"] = meta.encode()
    pure = "true" if tag.endswith("-any") else "false"
    members[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: {pure}\nTag: {tag}\n"
    ).encode()
    if scripts:
        text = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
        members[f"{info}/entry_points.txt"] = text.encode()
    members[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in members).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            zi = zipfile.ZipInfo(n)
            zi.external_attr = (0o755 if n in exec_files else 0o644) << 16
            z.writestr(zi, data)
    return f"{name}-1.0-{tag}.whl", buf.getvalue()


def wheelhouse(tmp: Path, wheels: list[tuple[str, bytes]]) -> Path:
    """The client's wheelhouse zip of these wheels."""
    d = tmp / "wheels"
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for name, data in wheels:
        (d / name).write_bytes(data)
    write_zipapp(d, tmp / "wheelhouse-d1g35t.pyz")
    return tmp / "wheelhouse-d1g35t.pyz"


def host_side(pyz: Path, root: Path, project: str = "demo") -> subprocess.CompletedProcess[str]:
    """As Ansible's script runs it: ``python3 WHEELHOUSE.pyz JSON``."""
    args = json.dumps({"root": str(root), "digest": "d1g35t", "project": project})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    return subprocess.run(
        [sys.executable, str(pyz), args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def run_host_side(pyz: Path, root: Path) -> dict[str, Any]:
    r = host_side(pyz, root)
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


DEMO = b"import helper\ndef main():\n    print('demo says', helper.WORD)\n    return 3\n"
TOOL = b"#!python\nimport sys\nprint('tool ran by', sys.executable)\n"


def demo_wheels(helper_marker: str = 'python_version >= "3"') -> list[tuple[str, bytes]]:
    return [
        wheel(
            "demo",
            {"demo/__init__.py": DEMO, "demo-1.0.data/scripts/demo-tool": TOOL},
            requires=(f"helper>=1 ; {helper_marker}", 'never-here ; python_version < "3"'),
            scripts={"demo": "demo:main"},
            requires_python=">=3.10",
        ),
        wheel("helper", {"helper.py": b"WORD = 'hello'\n"}),
        wheel("unused", {"unused.py": b""}),  # in the wheelhouse, needed by nothing
    ]


def test_fast_install_gives_working_console_scripts_and_a_record(tmp_path: Path) -> None:
    root = tmp_path / "opt" / "sdrpc"
    out = run_host_side(wheelhouse(tmp_path, demo_wheels()), root)
    assert out["installer"] == "sdrpc" and out["why"] is None
    assert out["wheels"] == ["demo-1.0-py3-none-any.whl", "helper-1.0-py3-none-any.whl"]
    venv = root / "venv"
    assert (venv / ".sdrpc-wheelhouse").read_text() == "d1g35t\n"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755  # created
    assert not (venv / "bin" / "pip").exists()  # no ensurepip
    # the console script: pip's shim, the venv's python, the entry point's exit status
    r = subprocess.run([venv / "bin" / "demo"], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout) == (3, "demo says hello\n")
    # a #!python script of .data/scripts: the venv's python
    r = subprocess.run([venv / "bin" / "demo-tool"], capture_output=True, text=True, check=True)
    assert r.stdout == f"tool ran by {venv / 'bin' / 'python'}\n"
    # what importlib.metadata (and pip) read: RECORD names every installed file
    q = "import importlib.metadata as m,json;print(json.dumps([str(f) for f in m.files('demo')]))"
    files = subprocess.run(
        [venv / "bin" / "python", "-c", q], capture_output=True, text=True, check=True
    )
    listed = json.loads(files.stdout)
    assert "../../../bin/demo" in listed and "../../../bin/demo-tool" in listed
    assert "demo/__init__.py" in listed and "demo-1.0.dist-info/INSTALLER" in listed
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert not (site / "unused.py").exists()
    assert (site / "demo-1.0.dist-info/INSTALLER").read_text() == "sdrpc\n"


def test_executable_bits_kept_and_a_second_install_replaces_the_venv(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    binary = b"#!/bin/sh\necho native\n"
    demo = wheel(
        "demo",
        {"demo/__init__.py": b"", "demo/data/bin/native": binary},
        tag="py3-none-linux_x86_64" if os.uname().machine == "x86_64" else "py3-none-any",
        exec_files=("demo/data/bin/native",),
    )
    pyz = wheelhouse(tmp_path, [demo])
    run_host_side(pyz, root)
    site = next((root / "venv/lib").glob("python3.*/site-packages"))
    native = site / "demo/data/bin/native"
    assert subprocess.run([native], capture_output=True, check=True).stdout == b"native\n"
    (root / "venv" / "stale").write_text("from an older venv")
    run_host_side(pyz, root)
    assert not (root / "venv" / "stale").exists()


def test_a_dependency_it_cannot_judge_is_installed_by_pip(tmp_path: Path) -> None:
    """An unknown marker: pip decides (ensurepip, pip install --no-index), as before."""
    root = tmp_path / "opt"
    out = run_host_side(wheelhouse(tmp_path, demo_wheels('platform_release < "abc"')), root)
    assert out["installer"] == "pip"
    assert "platform_release" in out["why"]
    venv = root / "venv"
    assert (venv / ".sdrpc-wheelhouse").read_text() == "d1g35t\n"
    r = subprocess.run([venv / "bin" / "demo"], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout) == (3, "demo says hello\n")


def test_a_missing_dependency_is_pips_error(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    r = host_side(wheelhouse(tmp_path, demo_wheels()[:1]), root)  # demo without helper
    assert r.returncode == 1
    assert "sdrpc_venv: pip install failed" in r.stderr and "helper" in r.stderr
    assert not (root / "venv" / ".sdrpc-wheelhouse").exists()  # the next up tries again


def test_unsafe_member_paths_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    r = host_side(wheelhouse(tmp_path, [wheel("demo", {"../../escape.py": b"x = 1\n"})]), root)
    assert r.returncode == 1 and "unsafe path '../../escape.py'" in r.stderr
    assert not (tmp_path / "escape.py").exists()
