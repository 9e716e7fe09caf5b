"""sdrpc cache --prune against real processes: what runs is never removed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdrpc_build.build.diskuse import busy_paths, plan_prune, survey
from sdrpc_build.build.store import Manifest, install_entry, list_manifests


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "cache"
    binary = tmp_path / "ggml-rpc-server"
    shutil.copy2("/bin/sleep", binary)
    for i in range(2):
        manifest = Manifest(
            backend="cpu",
            commit=str(i) * 40,
            max_name=160,
            target="ggml-rpc-server",
            created=f"2026-11-2{i}T00:00:00Z",
        )
        install_entry(r / "artifacts", f"cpu-k{i}", binary, manifest)
        (r / "sources" / (str(i) * 40)).mkdir(parents=True)
    return r


@pytest.fixture
def running(root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The oldest artifact's binary (a copy of sleep), running: it is in use."""
    proc = subprocess.Popen([str(root / "artifacts" / "cpu-k0" / "bin" / "ggml-rpc-server"), "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_prune_never_touches_a_running_artifact(
    root: Path, running: subprocess.Popen[bytes]
) -> None:
    busy = busy_paths(root)
    assert root / "artifacts" / "cpu-k0" / "bin" / "ggml-rpc-server" in busy
    doomed = plan_prune(survey(root), list_manifests(root / "artifacts"), keep=0, busy=busy)
    assert "cpu-k0" not in {e.path.name for e in doomed if e.category == "artifacts"}
    assert "0" * 40 not in {e.path.name for e in doomed if e.category == "sources"}
    # and the artifact that nothing runs goes
    assert "cpu-k1" in {e.path.name for e in doomed if e.category == "artifacts"}
