"""Benchmark sdrpc-check on loopback: probe latency, and 8 servers concurrently vs 1.

    python bench/bench_check.py [--reps 30] [--version 0.3.36] [--max-name 160]

Starts real rpc-servers (built and cached by tests/servers.py), measures
``probe()`` (HELLO + device inventory + GGML_MAX_NAME probe) and writes
``bench/results/bench_check.json``. Goal: checking 8 servers concurrently takes
at most 1.5x the time of checking one (ratio measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sdrpc_build.protocol.probe import probe  # noqa: E402

N_SERVERS = 8


def _start(binary: Path, n: int) -> list[tuple[int, subprocess.Popen[bytes]]]:
    from procs import free_port, wait_accepting

    out = []
    for _ in range(n):
        port = free_port()
        proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.append((port, proc))
        wait_accepting(port, proc)
    return out


def _check(ports: list[int], pool: ThreadPoolExecutor, expect: int | None) -> float:
    t0 = time.perf_counter()
    results = list(
        pool.map(lambda p: probe("127.0.0.1", p, timeout=3, expect_max_name=expect), ports)
    )
    took = time.perf_counter() - t0
    bad = [r for r in results if r.status != "ok"]
    if bad:
        raise SystemExit(f"probe failed: {bad[0]}")
    return took


def _stats(xs: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in xs)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "min_ms": round(ms[0], 3),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "n": len(ms),
    }


def _simulated(reps: int, max_name: int, delay: float) -> dict[str, Any]:
    """Fake v7 servers (tests/fakes) that wait ``delay`` before every reply: a LAN-like
    round trip, so the ratio measures concurrency rather than loopback CPU."""
    import contextlib

    from fakes import FakeRpc, FakeServer

    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max_workers=N_SERVERS) as pool:
        ports = [
            stack.enter_context(FakeServer(FakeRpc(max_name=max_name, delay=delay)))
            for _ in range(N_SERVERS)
        ]
        _check(ports, pool, max_name)
        n = max(5, reps // 3)
        s1 = _stats([_check(ports[:1], pool, max_name) for _ in range(n)])
        s8 = _stats([_check(ports, pool, max_name) for _ in range(n)])
    return {
        "delay_per_reply_ms": delay * 1000,
        "one_server": s1,
        "eight_concurrent": s8,
        "ratio_median": round(s8["median_ms"] / s1["median_ms"], 3),
    }


def run(reps: int, version: str, max_name: int) -> dict[str, Any]:
    import servers

    binary = servers.build_server(version, max_name)
    procs = _start(binary, N_SERVERS)
    ports = [p for p, _ in procs]
    out: dict[str, Any] = {
        "server": f"llama-cpp-python {version}, GGML_MAX_NAME={max_name}",
        "servers": N_SERVERS,
        "reps": reps,
    }
    try:
        with ThreadPoolExecutor(max_workers=N_SERVERS) as pool:
            for expect, label in ((max_name, "expected_name"), (None, "detect_name")):
                _check(ports, pool, expect)  # warm-up
                one = [_check(ports[:1], pool, expect) for _ in range(reps)]
                many = [_check(ports, pool, expect) for _ in range(reps)]
                s1, s8 = _stats(one), _stats(many)
                out[label] = {
                    "one_server": s1,
                    "eight_concurrent": s8,
                    "ratio_median": round(s8["median_ms"] / s1["median_ms"], 3),
                }
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    out["simulated_rtt_2ms"] = _simulated(reps, max_name, 0.002)
    out["goal_ratio_max"] = 1.5
    out["goal_met"] = {
        k: out[k]["ratio_median"] <= 1.5
        for k in ("expected_name", "detect_name", "simulated_rtt_2ms")
    }
    out["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--version", default="0.3.36")
    ap.add_argument("--max-name", type=int, default=160)
    args = ap.parse_args()
    doc = run(args.reps, args.version, args.max_name)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / "bench_check.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
