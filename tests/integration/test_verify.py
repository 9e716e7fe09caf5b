"""build's verify: a real rpc-server started through launch's trial run, judged by
protocol.compat's rules; scripts stand in for servers that never answer."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import alive

from sdrpc_build.build.verify import verify_binary
from sdrpc_build.errors import VerifyError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def v36(server_binary: Callable[[str, int], Path]) -> Path:
    return server_binary("0.3.36", 160)  # protocol 7.0.0


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rpc-server.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_a_good_server_passes(v36: Path) -> None:
    r = verify_binary(
        v36,
        max_name=160,
        tree_protocol=(7, 0, 0),
        client_protocol=(7, 0, 0),
        device_prefix="CPU",
        env=dict(os.environ),
    )
    assert r.ok, r.problems
    assert (r.protocol, r.max_name, r.devices) == ("7.0.0", 160, ("CPU",))
    assert r.endpoint.startswith("127.0.0.1:")


def test_the_client_rules_are_compats(v36: Path) -> None:
    """Major/minor and name length: protocol.compat's wording, i.e. its rules."""
    r = verify_binary(
        v36,
        max_name=64,
        tree_protocol=(7, 0, 0),
        client_protocol=(5, 0, 1),
        device_prefix="CPU",
        env=dict(os.environ),
    )
    assert not r.ok
    assert "protocol major differs: server 7.0.0, client 5.0.1" in r.problems
    assert any(p.startswith("name length 160 vs 64:") for p in r.problems), r.problems
    r = verify_binary(
        v36,
        max_name=160,
        tree_protocol=(5, 0, 0),
        client_protocol=(7, 1, 0),
        device_prefix="Vulkan",
        env=dict(os.environ),
    )
    assert r.problems == ("server reports protocol 7.0.0, the tree's ggml-rpc.h says 5.0.0",)
    assert any("no Vulkan device listed" in w for w in r.warnings)


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    """Was "exited with status -15": the status of our own stop, not the server's."""
    binary = script(tmp_path, 'echo "listening soon"\nexec sleep 60\n')
    t0 = time.monotonic()
    with pytest.raises(VerifyError) as info:
        verify_binary(
            binary,
            max_name=160,
            tree_protocol=None,
            client_protocol=None,
            device_prefix="CPU",
            env={},
            timeout=1.0,
        )
    assert info.value.message == "the built server did not answer within 1s"
    assert info.value.details is not None and "listening soon" in info.value.details
    assert time.monotonic() - t0 < 1.0 * 1.2 + 6.0  # the deadline, the probe's, the stop


def test_a_server_that_exits_gives_its_status(tmp_path: Path) -> None:
    binary = script(tmp_path, 'echo "error: bad flag"\nexit 3\n')
    with pytest.raises(VerifyError) as info:
        verify_binary(
            binary,
            max_name=160,
            tree_protocol=None,
            client_protocol=None,
            device_prefix="CPU",
            env={},
        )
    assert info.value.message == "the built server exited with status 3 before answering"
    assert info.value.details is not None and "error: bad flag" in info.value.details


def test_the_server_dies_with_a_killed_verify(tmp_path: Path) -> None:
    """The parent-death signal: kill -9 sdrpc-build while it verifies, no server is left."""
    pid_file = tmp_path / "server.pid"
    binary = script(tmp_path, f"echo $$ > {pid_file}\nexec sleep 120\n")
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from sdrpc_build.build.verify import verify_binary\n"
        "verify_binary(Path(sys.argv[1]), max_name=160, tree_protocol=None,"
        " client_protocol=None, device_prefix='CPU', env={}, timeout=120)\n"
    )
    builder = subprocess.Popen(
        [sys.executable, "-c", code, str(binary)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = None
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the server was not started"
            assert builder.poll() is None
            time.sleep(0.05)
        server = int(pid_file.read_text())
        assert alive(server)
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(server), "the server outlived the killed verify"
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait(timeout=10)
        if server is not None and alive(server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
