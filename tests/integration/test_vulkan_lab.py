"""The Vulkan lab (tests/vulkan.py): real Vulkan devices on a machine without a GPU.

Three lavapipe devices, a real Vulkan ggml-rpc-server built by sdrpc-build, sdrpc-launch
mapping them to RPC devices, and a real compute on a Vulkan device through RPC whose
result matches the CPU (llama.cpp's own test-backend-ops). Needs `.ci/vulkan-setup`
(run as root once); the first run builds the server (~4 min on 2 cores) and the client.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import vulkan
from procs import free_port, wait_accepting

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# llama.cpp test-backend-ops cases (exact names), run on RPC0 = the server's Vulkan1 and
# compared with the local CPU. lavapipe compiles each pipeline once: the MUL_MAT costs
# ~30 s with an empty Mesa shader cache (the lab keeps it in the test cache), 0.2 s after.
CASES = (
    "ADD(type=f32,ne=[10,5,4,3],nr=[2,2,2,2],nf=1,perm1=1,src_overlap=0)",
    "MUL_MAT(type_a=f32,type_b=f32,m=16,n=32,k=32,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=64,o=3)",
)


@pytest.fixture(scope="module")
def lab() -> dict[str, str]:
    """Three lavapipe devices: the environment plus os.environ."""
    return {**os.environ, **vulkan.lavapipe_env(3)}


@pytest.fixture(scope="module")
def vk_server() -> Path:
    return vulkan.vulkan_server()


def test_server_lists_three_vulkan_devices(vk_server: Path, lab: dict[str, str]) -> None:
    banner = vulkan.server_banner(vk_server, free_port(), lab)
    assert banner.devices == ("Vulkan0", "Vulkan1", "Vulkan2"), banner.text
    assert len(re.findall(r"^  Vulkan\d: llvmpipe ", banner.text, re.M)) == 3, banner.text


def test_lavapipe_is_hidden_without_visible_devices(vk_server: Path, lab: dict[str, str]) -> None:
    # ggml-vulkan skips CPU-type devices by default: the server falls back to its CPU
    env = {k: v for k, v in lab.items() if k != "GGML_VK_VISIBLE_DEVICES"}
    banner = vulkan.server_banner(vk_server, free_port(), env)
    assert banner.devices == ("CPU",), banner.text


def _launch(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "sdrpc_build.cli.launch", "--json", "-q"),
            *("--log-dir", str(tmp / "logs"), *args),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "SDRPC_CACHE_DIR": str(tmp / "sdrpc-cache")},
        start_new_session=True,
    )


def _wait_event(proc: subprocess.Popen[str], name: str, timeout: float) -> dict[str, Any] | None:
    """The first JSON event called ``name`` on launch's stdout, or None (exit or timeout)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event: dict[str, Any] = json.loads(lines.get(timeout=0.2))
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                return None
            continue
        if event["event"] == name:
            return event
    return None


def test_launch_maps_two_vulkan_devices(
    vk_server: Path, lab: dict[str, str], tmp_path: Path
) -> None:
    proc = _launch(["--binary", str(vk_server), "-d", "Vulkan1,Vulkan2", "-p", "0"], lab, tmp_path)
    try:
        ready = _wait_event(proc, "all-ready", timeout=120)
        why = proc.stderr.read() if proc.stderr and proc.poll() is not None else "(running)"
        assert ready is not None, why
        got = [(d["name"], d["device"]) for d in ready["device_map"]]
        assert got == [("RPC0", "Vulkan1"), ("RPC1", "Vulkan2")]
    finally:
        proc.terminate()  # SIGTERM: launch stops its server (by PID) and exits 0
        rc = proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert rc == 0


def test_compute_on_vulkan_through_rpc_matches_cpu(
    vk_server: Path, lab: dict[str, str], tmp_path: Path
) -> None:
    client = vulkan.rpc_ops_client()
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [
                *("stdbuf", "-oL", "-eL"),  # the banner is line by line in the log
                *(str(vk_server), "-H", "127.0.0.1", "-p", str(port), "-d", "Vulkan1"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**lab, "GGML_RPC_DEBUG": "1"},  # logs every command it serves
            start_new_session=True,
        )
    try:
        wait_accepting(port, server, timeout=60)
        run = subprocess.run(
            [str(client), "--rpc", f"127.0.0.1:{port}", "-b", "RPC0", "-o", ",".join(CASES)],
            capture_output=True,
            text=True,
            env=lab,
            timeout=600,
            check=False,
        )
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    for case in CASES:  # each case ran on the remote device and matched the CPU
        assert f"  {case}: OK" in plain, out
    assert f"{len(CASES)}/{len(CASES)} tests passed" in plain, out
    assert re.search(rf"Backend RPC0\[127\.0\.0\.1:{port}\]: OK", plain), out
    text = log.read_text(errors="replace")
    # the server served its one device, Vulkan1 (llvmpipe), and computed the graph there
    assert vulkan.banner_devices(text) == ("Vulkan1",), text
    assert re.search(r"\[graph_compute\] device: 0, n_nodes: [1-9]", text), text


# ---------------------------------------------------------------- what users are told


def test_hidden_lavapipe_device_hint_names_visible_devices(
    vk_server: Path, lab: dict[str, str], tmp_path: Path
) -> None:
    """ggml-vulkan hid the CPU-type lavapipe devices (no GGML_VK_VISIBLE_DEVICES): the binary
    offers only the CPU, and the hint names the variable, not "names are case-sensitive"."""
    env = {k: v for k, v in lab.items() if k != "GGML_VK_VISIBLE_DEVICES"}
    proc = _launch(["--binary", str(vk_server), "-d", "Vulkan1", "-p", "0"], env, tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 23, err
    assert "offers: CPU" in err
    assert "GGML_VK_VISIBLE_DEVICES" in err or "--visible-devices" in err, err


def test_unknown_device_lists_what_the_server_sees_in_its_environment(
    vk_server: Path, lab: dict[str, str], tmp_path: Path
) -> None:
    """-d Vulkan7 is refused with the real list, made with the environment the server gets:
    --visible-devices 0,1 (GGML_VK_VISIBLE_DEVICES for a Vulkan build) leaves two devices."""
    proc = _launch(["--binary", str(vk_server), "-d", "Vulkan7", "-p", "0"], lab, tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 23, err
    assert "unknown device 'Vulkan7'" in err and "offers: Vulkan0, Vulkan1, Vulkan2" in err, err
    args = ["--binary", str(vk_server), "--visible-devices", "0,1", "-d", "Vulkan2", "-p", "0"]
    proc = _launch(args, lab, tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 23, err
    assert "offers: Vulkan0, Vulkan1, CPU\n" in err, err  # Vulkan2 is hidden


def test_build_refuses_too_old_vulkan_headers_first(tmp_path: Path) -> None:
    old = tmp_path / "old-headers" / "vulkan"
    old.mkdir(parents=True)
    (old / "vulkan_core.h").write_text(
        "#define VK_HEADER_VERSION 239\n"
        "#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, VK_HEADER_VERSION)\n"
    )
    # the tree does not exist: a tool check that comes first answers before the source does
    run = subprocess.run(
        [
            *(sys.executable, "-m", "sdrpc_build.cli.build", "--backend", "vulkan"),
            *("--llama-commit", "4df29be4f4c3673f428170fda944a5b19f743bb8", "--max-name", "160"),
            *("-D", f"Vulkan_INCLUDE_DIR={old.parent}", "--llama-src", str(tmp_path / "no-tree")),
            *("--cache-dir", str(tmp_path / "cache")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 6, run.stderr
    assert "1.3.239" in run.stderr, run.stderr
