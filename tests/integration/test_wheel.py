"""A server wheel from a real store entry: build, install into a fresh venv, launch, check."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from sdrpc_build.build.scratch import TAG, owner_of, scratch_path
from sdrpc_build.build.store import MANIFEST, Manifest, install_entry
from sdrpc_build.build.wheel import build_wheel, installed_servers, script_name, wheel_version
from sdrpc_build.protocol.probe import probe

pytestmark = pytest.mark.integration

COMMIT = "4df29be4f4c3673f428170fda944a5b19f743bb8"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(binary: Path, tmp: Path) -> Manifest:
    """The store entry the fixture binary lives in, or a new one made from it."""
    entry_dir = binary.parent.parent
    if (entry_dir / MANIFEST).is_file():
        m = Manifest.load(entry_dir)
        if m.commit == COMMIT and m.max_name == 64:
            return m
    manifest = Manifest(
        sdrpc_version="0.1.0",
        backend="cpu",
        commit=COMMIT,
        max_name=64,
        target=binary.name,
        protocol="5.0.0",
        created="2026-11-23T00:00:00Z",
        platform="linux-x86_64",
        verify={"ok": True},
    )
    return install_entry(tmp / "store", "cpu-test-n64", binary, manifest)


@pytest.fixture(scope="module")
def venv(
    server_binary: Callable[[str, int], Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Manifest]:
    tmp = tmp_path_factory.mktemp("wheel")
    entry = _entry(server_binary("0.3.35", 64), tmp)
    wheel = build_wheel(entry, tmp / "out")
    env_dir = tmp / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True
    )
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    subprocess.run(
        [
            str(bindir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
    )
    return wheel, bindir, entry


def test_wheel_name_and_contents(venv: tuple[Path, Path, Manifest]) -> None:
    wheel, _bindir, entry = venv
    assert wheel_version(entry) == "0.1.0+4df29be.n64"
    assert wheel.name.startswith("sdrpc_server_cpu-0.1.0+4df29be.n64-py3-none-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        server = z.getinfo(f"sdrpc_server_cpu/bin/{entry.binary.name}")
        assert (server.external_attr >> 16) & 0o111  # executable
        doc = json.loads(z.read("sdrpc_server_cpu/manifest.json"))
    assert "sdrpc_server_cpu/__init__.py" in names
    assert doc["commit"] == COMMIT and doc["max_name"] == 64
    assert doc["binary"] == f"bin/{entry.binary.name}"


def test_installed_wheel_is_found_by_sdrpc(venv: tuple[Path, Path, Manifest]) -> None:
    _wheel, bindir, _entry = venv
    code = (
        "import json; from sdrpc_build.build.wheel import installed_servers as f; "
        "import sdrpc_server_cpu as s; "
        "print(json.dumps([[m.backend, m.commit, m.max_name, str(m.binary)] for m in f()]"
        " + [s.manifest()['max_name']]))"
    )
    out = subprocess.run(
        [str(bindir / "python"), "-c", code], check=True, capture_output=True, text=True
    ).stdout
    *servers, from_module = json.loads(out)
    assert from_module == 64
    assert [s[:3] for s in servers] == [["cpu", COMMIT, 64]]
    assert Path(servers[0][3]).is_file()
    assert str(bindir.parent) in servers[0][3]  # the copy inside the venv
    # this interpreter's environment does not have the wheel installed
    assert all("sdrpc_server_cpu" not in str(m.binary) for m in installed_servers())


def test_console_script_serves_and_passes_the_check(venv: tuple[Path, Path, Manifest]) -> None:
    _wheel, bindir, _entry = venv
    port = _free_port()
    proc = subprocess.Popen(
        [str(bindir / script_name("cpu")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        result = probe("127.0.0.1", port, timeout=3.0, expect_max_name=64)
        while result.status == "unreachable" and time.monotonic() < deadline:
            assert proc.poll() is None, f"server exited with {proc.returncode}"
            time.sleep(0.1)
            result = probe("127.0.0.1", port, timeout=3.0, expect_max_name=64)
        assert result.status == "ok", result.problems
        assert result.max_name == 64
        assert result.protocol is not None and tuple(result.protocol)[:2] == (5, 0)
        assert proc.poll() is None  # still serving after the check
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_wheel_work_dirs_live_in_the_cache_and_leftovers_are_removed(
    venv: tuple[Path, Path, Manifest], tmp_path: Path
) -> None:
    _wheel, _bindir, entry = venv
    scratch, out = tmp_path / "cache" / "tmp", tmp_path / "dist"
    owner = owner_of(scratch_path(scratch, "x"))
    assert owner is not None
    dead = f"{TAG}{owner.host}-{2**22 + 12345}-1"  # a build killed with SIGKILL
    (scratch / f"wheel-sdrpc_server_cpu{dead}" / "project").mkdir(parents=True)
    out.mkdir()
    (out / f".sdrpc_server_cpu-0.1.0.whl{dead}").write_bytes(b"half a wheel")
    seen: list[list[Path]] = []

    class _Spy(Mapping[str, str]):  # pip's environment: look into the cache while it runs
        def __getitem__(self, k: str) -> str:
            return os.environ[k]

        def __iter__(self) -> Iterator[str]:
            seen.append(list(scratch.iterdir()))
            return iter(os.environ)

        def __len__(self) -> int:
            return len(os.environ)

    wheel = build_wheel(entry, out, env=_Spy(), scratch_root=scratch)
    assert [p.name for p in out.iterdir()] == [wheel.name]
    assert list(scratch.iterdir()) == []  # the work dir is gone too
    # while building: only this process's own work dir, the dead build's was removed first
    assert seen and len(seen[0]) == 1
    mine = owner_of(seen[0][0])
    assert mine is not None and mine.pid == os.getpid()
