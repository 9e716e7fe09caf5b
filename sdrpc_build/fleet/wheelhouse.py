"""A wheelhouse of sdrpc itself and its dependencies, built on the client for offline hosts.

One file per source digest under ``<cache>/fleet/``, ``wheelhouse-DIGEST.pyz``: a zip (Python
runs it) of the wheels, stored as they are, and of ``__main__.py``, the host side that installs
them into sdrpc's venv (ansible/roles/sdrpc_server/files/sdrpc_venv.py): Ansible's ``script``
copies and runs it in one task. The same sources give the same bytes (sorted members, fixed
times and modes).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import sdrpc_build
from sdrpc_build.fleet.errors import FleetWheelhouseError
from sdrpc_build.fleet.runner import PLAYBOOK_DIR

__all__ = ["INSTALLER", "build_wheelhouse", "project_root", "source_digest", "write_zipapp"]

INSTALLER = PLAYBOOK_DIR / "roles" / "sdrpc_server" / "files" / "sdrpc_venv.py"

PIP_TIMEOUT = 900.0


def project_root() -> Path | None:
    """The source tree sdrpc runs from (a checkout or an editable install), else None."""
    root = Path(sdrpc_build.__file__).resolve().parent.parent
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "sdrpc"' in text else None


def source_digest(root: Path) -> str:
    """A hash of everything the wheel is built from."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml", root / "README.md"]
    for sub in ("sdrpc_build", "recipes"):
        files += sorted(
            p for p in (root / sub).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:16]


def write_zipapp(wheels: Path, dest: Path) -> None:
    """The wheels of ``wheels`` (a directory) and the installer as ``__main__.py``."""
    members = [("__main__.py", INSTALLER.read_bytes())]
    members += [(p.name, p.read_bytes()) for p in sorted(wheels.iterdir()) if p.suffix == ".whl"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # wheels are compressed already
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    dest.write_bytes(buf.getvalue())


def build_wheelhouse(cache_root: Path, env: Mapping[str, str]) -> Path:
    """The wheelhouse of this sdrpc (built once per source digest)."""
    root = project_root()
    what = str(root) if root else f"sdrpc=={sdrpc_build.__version__}"
    digest = source_digest(root) if root else sdrpc_build.__version__
    out_dir = cache_root / "fleet"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"wheelhouse-{digest}.pyz"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".wheelhouse-") as tmp:
        wheels = Path(tmp) / "wheels"
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), what]
        try:
            proc = subprocess.run(
                cmd,
                env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FleetWheelhouseError(
                f"pip wheel took more than {PIP_TIMEOUT:.0f} s",
                hint="check this machine's access to the package index",
            ) from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise FleetWheelhouseError(
                f"pip wheel of {what} failed (exit {proc.returncode})",
                hint="the client builds the wheels hosts install offline: it needs the "
                "package index (or PIP_FIND_LINKS)",
                details=tail,
            )
        part = Path(tmp) / "wheelhouse.pyz"
        write_zipapp(wheels, part)
        os.replace(part, target)
    return target
