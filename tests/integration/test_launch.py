"""sdrpc-launch against real CPU ggml-rpc-servers on 127.0.0.1 (run as a real subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import alive, free_port, port_bound

from sdrpc_build.protocol.compat import device_map
from sdrpc_build.protocol.probe import probe

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
Event = dict[str, Any]


class Launch:
    """A running ``python -m sdrpc_build.cli.launch --json`` and its event stream."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sdrpc_build.cli.launch",
                "--json",
                "-q",
                "--log-dir",
                str(tmp / "logs"),
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SDRPC_CACHE_DIR": str(tmp / "sdrpc-cache")},
        )
        self.events: list[Event] = []
        self._q: queue.Queue[Event] = queue.Queue()
        self.server_pids: set[int] = set()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            e = json.loads(line)
            if e.get("pid"):
                self.server_pids.add(int(e["pid"]))
            self._q.put(e)

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 60.0) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self._q.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self._q.empty():
                    break
                continue
            self.events.append(e)
            if pred(e):
                return e
        raise AssertionError(
            f"event not seen; got {[e['event'] for e in self.events]}; stderr: {self.stderr_now()}"
        )

    def all_ready(self, timeout: float = 60.0) -> Event:
        return self.wait_for(lambda e: e["event"] == "all-ready", timeout)

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        assert self.proc.stderr is not None
        return rc, self.proc.stderr.read()

    def stderr_now(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in self.server_pids:
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self._pump_thread.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launch]]:
    started: list[Launch] = []

    def start(*args: str) -> Launch:
        started.append(Launch(list(args), tmp_path))
        return started[-1]

    yield start
    for lc in started:
        lc.kill()


@pytest.fixture(scope="module")
def v35(server_binary: Callable[[str, int], Path]) -> Path:
    return server_binary("0.3.35", 64)


@pytest.fixture(scope="module")
def v36(server_binary: Callable[[str, int], Path]) -> Path:
    return server_binary("0.3.36", 160)


def test_three_servers_from_config_restart_and_device_map(
    launch: Callable[..., Launch], tmp_path: Path, v35: Path, v36: Path
) -> None:
    ports = [free_port() for _ in range(3)]
    cfg = tmp_path / "servers.toml"
    cfg.write_text(
        "".join(
            f'[[server]]\nname = "s{i}"\nbinary = "{b}"\nport = {p}\nthreads = 1\n\n'
            for i, (b, p) in enumerate(zip([v35, v36, v35], ports, strict=True))
        )
    )
    lc = launch("--config", str(cfg))
    ready = lc.all_ready()
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    assert ready["rpc_servers"] == ",".join(endpoints)
    protocols = {e["server"]: e["protocol"] for e in lc.events if e["event"] == "ready"}
    assert protocols == {"s0": "5.0.0", "s1": "7.0.0", "s2": "5.0.0"}

    # the device map equals what sdrpc-check computes from its own probes
    results = [probe("127.0.0.1", p, timeout=5.0, detect_max_name=False) for p in ports]
    expected = [(d.name, d.endpoint, d.server, d.index, d.total) for d in device_map(results)]
    got = [
        (d["name"], d["endpoint"], d["server"], d["index"], d["total"]) for d in ready["device_map"]
    ]
    assert got == expected
    assert [d["device"] for d in ready["device_map"]] == ["CPU", "CPU", "CPU"]

    # kill -9 one server: restarted on the same port, ready again
    first = next(e for e in lc.events if e["event"] == "ready" and e["server"] == "s1")
    os.kill(first["pid"], signal.SIGKILL)
    exited = lc.wait_for(lambda e: e["event"] == "exited")
    assert (exited["server"], exited["returncode"], exited["failure"]) == ("s1", -9, True)
    again = lc.wait_for(lambda e: e["event"] == "ready" and e["server"] == "s1")
    assert again["pid"] != first["pid"]
    assert again["endpoint"] == endpoints[1]
    assert again["restarts"] == 1
    ready2 = lc.all_ready()
    assert ready2["rpc_servers"] == ready["rpc_servers"]
    assert ready2["first"] is False
    assert probe("127.0.0.1", ports[1], timeout=5.0, detect_max_name=False).status == "ok"

    lc.proc.send_signal(signal.SIGTERM)
    rc, _ = lc.finish()
    assert rc == 0
    assert not any(alive(pid) for pid in lc.server_pids)
    assert not any(port_bound(p) for p in ports)
    log = (tmp_path / "logs" / "s1.log").read_text()
    assert "Starting RPC server v7.0.0" in log
    assert "--- sdrpc: restarting" in log


def test_bad_flag_is_fatal_with_the_servers_message(
    launch: Callable[..., Launch], tmp_path: Path, v35: Path
) -> None:
    wrapper = tmp_path / "bad-server"
    wrapper.write_text(f'#!/bin/sh\nexec "{v35}" --bogus-flag "$@"\n')
    wrapper.chmod(0o755)
    lc = launch("--binary", str(wrapper), "-p", "0")
    fatal = lc.wait_for(lambda e: e["event"] == "fatal", timeout=30)
    assert "unknown argument: --bogus-flag" in fatal["reason"]
    assert "error: unknown argument: --bogus-flag" in fatal["tail"]
    rc, err = lc.finish()
    assert rc == 26
    assert "FATAL" in err
    assert sum(e["event"] == "starting" for e in lc.events) == 1  # not retried in vain


def test_a_build_with_another_name_length_is_fatal(
    launch: Callable[..., Launch], tmp_path: Path, v35: Path
) -> None:
    """The readiness check the CLI injects (protocol's probe, judged by compat's name-length
    rule) against the build locator's GGML_MAX_NAME: a server built with 64 whose manifest
    says 160 is refused at once, not restarted."""
    entry = tmp_path / "entry"
    entry.mkdir()
    manifest = {
        "key": "fake160",
        "binary": str(v35),
        "backend": "cpu",
        "commit": "c" * 40,
        "max_name": 160,
        "protocol": "5.0.0",
        "target": "ggml-rpc-server",
        "created": "2026-01-01T00:00:00",
    }
    (entry / "manifest.json").write_text(json.dumps(manifest))
    lc = launch("--build", str(entry / "manifest.json"), "-p", "0")
    fatal = lc.wait_for(lambda e: e["event"] == "fatal", timeout=60)
    assert "name length 64 vs 160" in fatal["reason"]
    rc, err = lc.finish()
    assert "FATAL" in err
    assert rc == 26
    assert sum(e["event"] == "starting" for e in lc.events) == 1


def test_port_in_use_names_the_holder(launch: Callable[..., Launch], v35: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        lc = launch("--binary", str(v35), "-p", str(port))
        rc, err = lc.finish()
    assert rc == 22
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in err
    assert lc.server_pids == set()


def test_unknown_device_lists_the_binarys_devices(launch: Callable[..., Launch], v35: Path) -> None:
    lc = launch("--binary", str(v35), "-p", "0", "-d", "Vulkan7")
    rc, err = lc.finish()
    assert rc == 23
    assert "unknown device 'Vulkan7'" in err
    assert "offers: CPU" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_server_outlives_the_supervisor(
    launch: Callable[..., Launch], v35: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    ports = [free_port(), free_port()]
    cfg = tmp_path / "two.toml"
    cfg.write_text("".join(f'[[server]]\nbinary = "{v35}"\nport = {p}\n\n' for p in ports))
    lc = launch("--config", str(cfg))
    lc.all_ready()
    pids = set(lc.server_pids)
    assert len(pids) == 2
    assert all(alive(p) for p in pids)
    lc.proc.send_signal(sig)
    rc = lc.proc.wait(timeout=30)
    assert rc == (-9 if sig == signal.SIGKILL else 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert not any(port_bound(p) for p in ports)


def test_cache_cap_is_enforced(launch: Callable[..., Launch], v35: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    files = cache / "srv" / "rpc"
    files.mkdir(parents=True)
    for i in range(4):  # 4 x 1 KiB, oldest first
        f = files / f"{i:016x}"
        f.write_bytes(b"x" * 1024)
        os.utime(f, (1000 + i, 1000 + i))
    lc = launch(
        "--binary", str(v35), "--name", "srv", "-p", "0", "-c", str(cache), "--cache-max-size", "2K"
    )
    pruned = lc.wait_for(lambda e: e["event"] == "cache-pruned")
    assert (pruned["removed"], pruned["remaining"]) == (2, 2048)
    ready = lc.all_ready()
    assert sorted(p.name for p in files.iterdir()) == [f"{2:016x}", f"{3:016x}"]
    # while running: new files appear; a client session ends -> pruned again
    for i in range(4, 7):
        (files / f"{i:016x}").write_bytes(b"y" * 1024)
    host, port = ready["rpc_servers"].split(":")
    assert probe(host, int(port), timeout=5.0, detect_max_name=False).status == "ok"
    again = lc.wait_for(lambda e: e["event"] == "cache-pruned")
    assert again["remaining"] <= 2048
    assert len(list(files.iterdir())) == 2
    lc.proc.send_signal(signal.SIGINT)
    assert lc.finish()[0] == 0


FAKES = ROOT / "tests" / "fakes"


def flood_binary(tmp_path: Path, size: str, progress: int = 100) -> Path:
    """An executable 'server' that prints ``size`` bytes without a newline, then crashes."""
    wrapper = tmp_path / f"flood-{size}"
    fake = FAKES / "flood_server.py"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{fake}" --size {size} --progress {progress} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_a_flooding_server_cannot_hurt_the_supervisor(
    launch: Callable[..., Launch], tmp_path: Path, v35: Path
) -> None:
    """40 MB without a newline: split at 4 KiB, a bounded tail; the other server is served."""
    good = free_port()
    cfg = tmp_path / "servers.toml"
    cfg.write_text(
        f'[[server]]\nname = "flood"\nbinary = "{flood_binary(tmp_path, "40M")}"\nport = 0\n'
        'restart = "never"\n\n'
        f'[[server]]\nname = "good"\nbinary = "{v35}"\nport = {good}\nthreads = 1\n'
    )
    lc = launch("--config", str(cfg))
    fatal = lc.wait_for(lambda e: e["event"] == "fatal", timeout=120)
    assert fatal["server"] == "flood"
    assert "flood done" in fatal["reason"]
    assert len(json.dumps(fatal)) < 100_000  # 15 lines of at most 4 KiB
    assert fatal["tail"][-2:] == ["loading 99%", "error: flood done"]  # \r ends a line

    def good_ready(e: Event) -> bool:
        return bool(e["event"] == "ready" and e["server"] == "good")

    first = next((e for e in lc.events if good_ready(e)), None) or lc.wait_for(good_ready)
    # the supervisor still does its job for the other server: a crash is restarted
    os.kill(first["pid"], signal.SIGKILL)
    again = lc.wait_for(good_ready)
    assert again["pid"] != first["pid"]
    lc.proc.send_signal(signal.SIGTERM)
    rc, err = lc.finish()
    assert rc == 26  # flood went FATAL
    assert len(err) < 5_000
    with (tmp_path / "logs" / "flood.log").open(encoding="utf-8") as log:
        widths = [len(line) for line in log]
    assert max(widths) <= 4096 + 40  # timestamp + a piece of at most 4 KiB
    assert sum(widths) > 40 << 20  # nothing lost


def test_a_flood_is_not_echoed_in_the_fatal_tail_with_q(tmp_path: Path) -> None:
    flood = flood_binary(tmp_path, "8M", progress=0)
    argv = ["-q", "--binary", str(flood), "-p", "0", "--restart", "never"]
    proc = subprocess.run(
        [sys.executable, "-m", "sdrpc_build.cli.launch", *argv, "--log-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SDRPC_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 26
    assert len(proc.stdout) + len(proc.stderr) < 10_000  # was the whole 8 MB line, twice
    assert "FATAL" in proc.stderr
    assert "more characters" in proc.stderr  # a shortened tail line


@pytest.mark.parametrize("gap", [None, 0.0, 0.05])
def test_a_second_ctrl_c_while_stopping_is_quiet(
    launch: Callable[..., Launch], v35: Path, tmp_path: Path, gap: float | None
) -> None:
    """Two Ctrl-C (or a stream of them, gap None): a clean stop, exit 0, no "interrupted"."""
    ports = [free_port(), free_port()]
    cfg = tmp_path / "two.toml"
    cfg.write_text("".join(f'[[server]]\nbinary = "{v35}"\nport = {p}\n\n' for p in ports))
    lc = launch("--config", str(cfg))
    lc.all_ready()
    pids = set(lc.server_pids)
    lc.proc.send_signal(signal.SIGINT)
    if gap is None:  # some land while it stops, some after the servers are gone
        deadline = time.monotonic() + 30
        while lc.proc.poll() is None and time.monotonic() < deadline:
            lc.proc.send_signal(signal.SIGINT)
            time.sleep(0.002)
    else:
        time.sleep(gap)
        lc.proc.send_signal(signal.SIGINT)
    rc, err = lc.finish()
    assert rc == 0, err
    assert "interrupted" not in err
    assert "Traceback" not in err
    assert "error" not in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert not any(port_bound(p) for p in ports)


def _time_wait(reuse: bool) -> int:
    """A port on 127.0.0.1 left in TIME_WAIT by a listener with or without SO_REUSEADDR."""
    with socket.socket() as listener:
        if reuse:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = listener.accept()
            conn.close()  # the server side closes first: its end goes to TIME_WAIT
            assert client.recv(1) == b""
    return port


def test_time_wait_is_named_and_agrees_with_rpc_server(
    launch: Callable[..., Launch], v35: Path
) -> None:
    """A TIME_WAIT rpc-server could not bind through is refused, and said to be one."""
    port = _time_wait(reuse=False)
    # what rpc-server itself does with that port (SO_REUSEADDR + bind): it cannot
    direct = subprocess.run(
        [str(v35), "-H", "127.0.0.1", "-p", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Failed to create server socket" in direct.stdout + direct.stderr
    lc = launch("--binary", str(v35), "-p", str(port))
    rc, err = lc.finish()
    assert rc == 22
    assert f"port {port} on 127.0.0.1 is held by a connection in TIME_WAIT, no process" in err
    assert "it clears in about" in err
    assert lc.server_pids == set()


def test_time_wait_rpc_server_can_bind_is_not_refused(
    launch: Callable[..., Launch], v35: Path
) -> None:
    """A TIME_WAIT left by a SO_REUSEADDR listener (an earlier rpc-server) blocks nothing."""
    port = _time_wait(reuse=True)
    lc = launch("--binary", str(v35), "-p", str(port))
    ready = lc.all_ready()
    assert ready["rpc_servers"] == f"127.0.0.1:{port}"
    lc.proc.send_signal(signal.SIGINT)
    assert lc.finish()[0] == 0
