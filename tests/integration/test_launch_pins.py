"""sdrpc-launch with the client's pins: the matching real build is started, built if missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import servers
from integration.test_launch import Launch

pytestmark = pytest.mark.integration

COMMIT_35 = servers.LLAMA_SDISTS["0.3.35"][0]


@pytest.fixture(scope="module")
def two_builds(server_binary: Callable[[str, int], Path]) -> dict[int, Path]:
    """Two real builds of one llama.cpp commit, GGML_MAX_NAME 160 and 64, in the test store."""
    return {n: server_binary("0.3.35", n) for n in (160, 64)}


@pytest.fixture
def store_root(tmp_path: Path, two_builds: dict[int, Path]) -> Path:
    """A cache root of our own whose artifact store is the shared test store."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "artifacts").symlink_to(servers.sdrpc_cache() / "artifacts")
    return root


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launch]]:
    started: list[Launch] = []

    def start(*args: str) -> Launch:
        started.append(Launch(list(args), tmp_path))
        return started[-1]

    yield start
    for lc in started:
        lc.kill()


def _run(*args: str, tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdrpc_build.cli.launch", "--log-dir", str(tmp / "logs"), *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
        env={**os.environ, "SDRPC_CACHE_DIR": str(tmp / "unused-cache")},
    )


@pytest.mark.parametrize("max_name", [160, 64])
def test_the_pins_pick_the_build_made_for_them(
    launch: Callable[..., Launch], store_root: Path, two_builds: dict[int, Path], max_name: int
) -> None:
    lc = launch(
        "--cache-dir",
        str(store_root),
        "--llama-commit",
        COMMIT_35,
        "--max-name",
        str(max_name),
        "-p",
        "0",
        "-t",
        "1",
        "--no-build",  # both are in the store: nothing may be built
    )
    ready = lc.wait_for(lambda e: e["event"] == "ready")
    assert ready["max_name"] == max_name  # probed: the server really has that name length
    lc.all_ready()
    assert lc.proc.poll() is None


def test_no_build_for_the_pins_and_no_build_allowed_is_exit_25(
    store_root: Path, tmp_path: Path
) -> None:
    res = _run(
        "--cache-dir", str(store_root), "--llama-commit", "c" * 40, "--max-name", "160",
        "--no-build", "-p", "0", tmp=tmp_path,
    )  # fmt: skip
    assert res.returncode == 25, res.stderr
    lines = res.stderr.splitlines()
    assert lines[0].startswith("sdrpc-launch: error: no build for ")
    assert "matches the client's pins (llama.cpp cccccccccc, GGML_MAX_NAME 160)" in lines[0]
    assert any(ln.startswith("sdrpc-launch: hint: ") for ln in lines)
    assert "Traceback" not in res.stderr


def test_a_build_for_other_pins_is_refused(
    store_root: Path, tmp_path: Path, two_builds: dict[int, Path]
) -> None:
    key = two_builds[64].parent.parent.name
    res = _run(
        "--cache-dir", str(store_root), "--build", key, "--llama-commit", COMMIT_35,
        "--max-name", "160", "-p", "0", tmp=tmp_path,
    )  # fmt: skip
    assert res.returncode == 25, res.stderr
    assert "GGML_MAX_NAME 64, the client needs 160" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_missing_build_is_built_then_started(
    launch: Callable[..., Launch], tmp_path: Path
) -> None:
    """An empty store: the matching server is built (the real pipeline, from the cached
    sdist: no network), its progress on stderr, then started and ready."""
    root = tmp_path / "fresh"
    (root / "downloads").mkdir(parents=True)
    archive = "llama_cpp_python-0.3.35.tar.gz"
    shutil.copy2(servers.sdist_path("llama-cpp-python", "0.3.35"), root / "downloads" / archive)
    lc = launch(
        "--cache-dir", str(root), "--llama-commit", COMMIT_35, "--max-name", "96",
        "--llama-sdist", "llama-cpp-python==0.3.35", "-p", "0", "-t", "1",
    )  # fmt: skip
    ready = lc.wait_for(lambda e: e["event"] == "ready", timeout=900)
    assert ready["max_name"] == 96
    built = list((root / "artifacts").glob("cpu-*-n96-*"))
    assert len(built) == 1
    lc.proc.terminate()
    rc, err = lc.finish()
    assert rc == 0
    assert "no cpu build matches the client's pins" in err
    assert "building it" in err
