"""The mission's command, for real: ``sdrpc-launch --host 0.0.0.0 -d Vulkan1,Vulkan2``.

It runs inside a network namespace the test creates (so 0.0.0.0 exposes nothing outside
it), serving the lab's real Vulkan server with three lavapipe devices (tests/vulkan.py), and
``sdrpc-check`` reaches it from a second namespace over a veth pair between the two: nothing
else is connected to them, and no packet leaves them. The loud warning about listening on a
non-loopback address is printed. Teardown (the launcher by PID, the veth pair, both
namespaces) runs whatever happens, and is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import vulkan

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NET = "10.232.0"  # private addresses that exist only inside the two namespaces


@dataclass(frozen=True)
class Pair:
    server_ns: str
    client_ns: str
    server_ip: str
    client_ip: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def _teardown(pair: Pair) -> list[str]:
    """Delete the veth pair and both namespaces; what could not be removed."""
    left = []
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("-n", pair.server_ns, "link", "del", "vk-srv")  # both ends go with it
    for ns in (pair.server_ns, pair.client_ns):
        if Path("/run/netns", ns).exists():
            try:
                _ip("netns", "delete", ns)
            except subprocess.CalledProcessError as exc:
                left.append(f"netns {ns}: {exc.stderr.strip()}")
    return left


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Two fresh namespaces joined by a veth pair (never in the root namespace)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"sdvk{os.getpid()}"
    p = Pair(f"{tag}-srv", f"{tag}-cli", f"{NET}.1", f"{NET}.2")
    try:
        for ns in (p.server_ns, p.client_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")  # launch probes its server on 127.0.0.1
        _ip("-n", p.server_ns, "link", "add", "vk-srv", "type", "veth", "peer", "name", "vk-cli")
        _ip("-n", p.server_ns, "link", "set", "vk-cli", "netns", p.client_ns)
        for ns, dev, ip in (
            (p.server_ns, "vk-srv", p.server_ip),
            (p.client_ns, "vk-cli", p.client_ip),
        ):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        yield p
    finally:
        left = _teardown(p)
        gone = [ns for ns in (p.server_ns, p.client_ns) if Path("/run/netns", ns).exists()]
        assert not left and not gone, (left, gone)


def _events(proc: subprocess.Popen[str]) -> queue.Queue[dict[str, Any]]:
    """launch's JSON events, read by a thread (bounded waits on the queue)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    q: queue.Queue[dict[str, Any]] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            with contextlib.suppress(ValueError):
                q.put(json.loads(line))

    threading.Thread(target=pump, daemon=True, name="launch-events").start()
    return q


def _wait(
    proc: subprocess.Popen[str], q: queue.Queue[dict[str, Any]], name: str, timeout: float
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            e = q.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None and q.empty():
                return None
            continue
        if e.get("event") == name:
            return e
    return None


def _stop(proc: subprocess.Popen[str]) -> int | None:
    """SIGTERM (launch stops its server), then SIGKILL to the group: by PID, bounded."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def _read(proc: subprocess.Popen[str]) -> str:
    """The rest of a stopped process's stderr; both pipes closed."""
    text = proc.stderr.read() if proc.stderr and not proc.stderr.closed else ""
    for t in threading.enumerate():  # the event reader ends at EOF: the process is gone
        if t.name == "launch-events":
            t.join(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return text


def test_launch_on_all_addresses_in_a_namespace_checked_from_another(
    pair: Pair, tmp_path: Path
) -> None:
    server = vulkan.vulkan_server()
    env = {**os.environ, **vulkan.lavapipe_env(3), "SDRPC_CACHE_DIR": str(tmp_path / "cache")}
    launch = subprocess.Popen(
        [
            *("ip", "netns", "exec", pair.server_ns),  # execs the command: its PID is launch's
            *(sys.executable, "-m", "sdrpc_build.cli.launch", "--json", "-q"),
            *("--host", "0.0.0.0", "-d", "Vulkan1,Vulkan2", "-p", "0"),
            *("--binary", str(server), "--log-dir", str(tmp_path / "logs")),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    err = ""
    try:
        ready = _wait(launch, _events(launch), "all-ready", timeout=120)
        assert ready is not None, "launch never became ready (its stderr follows at the end)"
        got = [(d["name"], d["device"]) for d in ready["device_map"]]
        assert got == [("RPC0", "Vulkan1"), ("RPC1", "Vulkan2")]
        port = int(ready["device_map"][0]["endpoint"].rsplit(":", 1)[1])
        check = subprocess.run(
            [
                *("ip", "netns", "exec", pair.client_ns),
                *(sys.executable, "-m", "sdrpc_build.cli.check", "--json"),
                *(f"{pair.server_ip}:{port}", "--expect-max-name", str(vulkan.LAB_MAX_NAME)),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        doc = json.loads(check.stdout)
        (s,) = doc["servers"]
        assert (s["verdict"], s["max_name"], s["protocol"]) == ("compatible", 160, "5.0.0"), s
        assert [d["name"] for d in doc["device_map"]] == ["RPC0", "RPC1"]
        assert doc["rpc_servers"] == f"{pair.server_ip}:{port}"
        # outside the namespace, nothing listens on that port: 0.0.0.0 was the namespace's
        here = subprocess.run(
            [sys.executable, "-m", "sdrpc_build.cli.check", "--json", f"127.0.0.1:{port}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert here.returncode == 11, here.stdout + here.stderr
    except AssertionError as exc:
        _stop(launch)
        raise AssertionError(f"{exc}\nsdrpc-launch's stderr:\n{_read(launch)}") from None
    finally:
        rc = _stop(launch)
        err += _read(launch)
    assert rc == 0, err
    # the loud warning: no authentication, no encryption, on a non-loopback address
    assert "listens on 0.0.0.0:" in err and "NO authentication and NO encryption" in err, err
