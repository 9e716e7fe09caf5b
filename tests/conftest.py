"""Shared fixtures: real llama.cpp trees, real rpc-server binaries, real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import servers
from procs import free_port, wait_accepting

__all__ = ["wait_accepting"]  # tests/golden/capture.py imports it from here


@pytest.fixture(scope="session")
def server_binary() -> Callable[[str, int], Path]:
    """Factory: ``server_binary("0.3.35", 160)`` -> path of a real CPU ggml-rpc-server."""
    return servers.build_server


@pytest.fixture
def rpc_server(
    server_binary: Callable[[str, int], Path],
) -> Iterator[Callable[..., tuple[int, subprocess.Popen[bytes]]]]:
    """Factory starting real servers on 127.0.0.1; all are killed (by PID) at teardown.

    ``port, proc = rpc_server("0.3.36", 64)``; ``env=`` adds environment variables and
    ``log=PATH`` keeps the server's output. Note: connecting to wait for readiness
    leaves the server idle again (it serves one client at a time).
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        version: str,
        max_name: int,
        *extra: str,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> tuple[int, subprocess.Popen[bytes]]:
        binary = server_binary(version, max_name)
        port = free_port()
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(log.open("wb")) if log else subprocess.DEVNULL
            proc = subprocess.Popen(
                [str(binary), "-H", "127.0.0.1", "-p", str(port), *extra],
                stdout=out,
                stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        procs.append(proc)
        wait_accepting(port, proc)
        return port, proc

    yield start
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


@pytest.fixture(scope="session")
def sd_cpp_tree() -> Path:
    """The real stable-diffusion.cpp tree vendored in stable-diffusion-cpp-python 0.4.7."""
    return servers.sd_cpp_tree()


@pytest.fixture(scope="session")
def llama_tree() -> Callable[[str], Path]:
    return servers.llama_tree


@pytest.fixture(scope="session")
def llama_bare_repo() -> Callable[[str], Path]:
    return servers.bare_repo
