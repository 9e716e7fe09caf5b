"""Benchmarks for sdrpc-launch (real CPU ggml-rpc-server on 127.0.0.1).

* crash-to-ready: ``kill -9`` of a READY server until sdrpc-launch reports it READY again,
  against the server's own start-to-ready time (spawn -> HELLO answered) measured here in the
  same run. Goal: <= start-to-ready + 0.5 s.
* idle CPU: the supervisor's CPU use (user+system, /proc) while 4 servers sit idle.
  Goal: < 1 % of one core.

Usage: python bench/bench_launch.py [--binary PATH] [--rounds N] [--idle-seconds S]
Writes bench/results/launch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sdrpc_build.protocol.probe import probe  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_start_to_ready(binary: Path, rounds: int) -> list[float]:
    """Spawn the server directly and probe until HELLO is answered (same 10 ms poll)."""
    out = []
    for _ in range(rounds):
        port = free_port()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [str(binary), "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = t0 + 30
            while time.monotonic() < deadline:
                if probe("127.0.0.1", port, timeout=2.0, detect_max_name=False).status == "ok":
                    out.append(time.monotonic() - t0)
                    break
                time.sleep(0.01)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


class Launcher:
    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdrpc_build.cli.launch", "--json", "-q", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.q: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put((time.monotonic(), json.loads(line)))

    def wait(
        self, kind: str, server: str | None = None, timeout: float = 60
    ) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            t, e = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            if e["event"] == kind and (server is None or e["server"] == server):
                return t, e

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def crash_to_ready(binary: Path, rounds: int, tmp: Path) -> list[float]:
    port = free_port()
    # a 1 s failure window with crashes 1.5 s apart: every crash is a "first" failure
    lc = Launcher(
        [
            "--binary",
            str(binary),
            "-p",
            str(port),
            "--name",
            "b",
            "--log-dir",
            str(tmp),
            "--failure-window",
            "1",
            "--max-failures",
            "100",
        ]
    )
    out = []
    try:
        _, ready = lc.wait("ready", "b")
        pid = ready["pid"]
        for _ in range(rounds):
            time.sleep(1.5)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            t1, ready = lc.wait("ready", "b")
            out.append(t1 - t0)
            pid = ready["pid"]
    finally:
        lc.stop()
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(binary: Path, seconds: float, tmp: Path) -> float:
    cfg = tmp / "four.toml"
    cfg.write_text(
        "".join(f'[[server]]\nbinary = "{binary}"\nport = {free_port()}\n\n' for _ in range(4))
    )
    lc = Launcher(["--config", str(cfg), "--log-dir", str(tmp)])
    try:
        lc.wait("all-ready")
        time.sleep(1.0)
        c0, t0 = cpu_seconds(lc.proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(lc.proc.pid), time.monotonic()
    finally:
        lc.stop()
    return 100.0 * (c1 - c0) / (t1 - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", type=Path)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    args = ap.parse_args()
    if args.binary is None:
        import servers

        args.binary = servers.build_server("0.3.35", 64)
    with tempfile.TemporaryDirectory(prefix="sdrpc-bench-launch-") as d:
        tmp = Path(d)
        own = own_start_to_ready(args.binary, args.rounds)
        crash = crash_to_ready(args.binary, args.rounds, tmp)
        cpu = idle_cpu(args.binary, args.idle_seconds, tmp)
    own_med, crash_med = statistics.median(own), statistics.median(crash)
    result = {
        "benchmark": "sdrpc-launch",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "binary": str(args.binary),
        "server_start_to_ready_s": {
            "median": round(own_med, 4),
            "max": round(max(own), 4),
            "samples": [round(x, 4) for x in own],
        },
        "crash_to_ready_s": {
            "median": round(crash_med, 4),
            "max": round(max(crash), 4),
            "samples": [round(x, 4) for x in crash],
        },
        "crash_overhead_s": round(crash_med - own_med, 4),
        "crash_goal_met": crash_med <= own_med + 0.5,
        "idle_cpu_percent_4_servers": round(cpu, 3),
        "idle_seconds": args.idle_seconds,
        "idle_goal_met": cpu < 1.0,
    }
    out = ROOT / "bench" / "results" / "launch.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
