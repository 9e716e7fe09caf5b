"""Link throughput: sdrpc's client vs llama.cpp's own C++ client vs raw TCP, on loopback.

    python bench/bench_link.py --out FILE [--size 64M] [--rounds 3] [--versions 0.3.35,0.3.36]

Per sdist version (0.3.35 = protocol v5, 0.3.36 = v7) a real CPU rpc-server
(GGML_MAX_NAME 64, from tests/servers.py) is started on 127.0.0.1, then in
alternating rounds (to share any drift of the machine fairly):

* sdrpc: :func:`sdrpc_build.bench.link.bench_server` (SET + 4-byte GET barrier,
  GET into a preallocated buffer);
* native: bench/native/rpc_native_bench.cpp (``ggml_backend_tensor_set/get``
  through llama.cpp's RPC client, same barrier);
* raw TCP: a plain socket pair pushing the same bytes (``sendall`` /
  ``recv_into``), the ceiling of the loopback itself.

Reported per op: best and median seconds and MB/s, and ratios
sdrpc/native and each/raw TCP. The goal (issue #6): sdrpc >= 0.9 x native for
SET and GET at 64 MiB, judged on the ratio of the medians of all runs (robust
on a busy machine; the best-of-runs ratio is reported too). Nothing here is
asserted in tests.

Note: llama.cpp's v5 client hashes every upload above 10 MiB (FNV-1a, for the
``-c`` cache) and copies it into a request buffer before sending; that is what
sd.cpp does too, so it is part of the native figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(HERE / "native")]

import servers  # noqa: E402
from build import native_binary  # noqa: E402

from sdrpc_build.bench.link import bench_server  # noqa: E402
from sdrpc_build.bench.maths import mb_per_s  # noqa: E402
from sdrpc_build.bench.options import BenchOptions  # noqa: E402
from sdrpc_build.units import parse_size  # noqa: E402

GOAL = 0.9
PROTOCOL = {"0.3.35": "v5", "0.3.36": "v7"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(version: str) -> tuple[int, subprocess.Popen[bytes]]:
    binary = servers.build_server(version, 64)
    port = _free_port()
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"rpc-server {version} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return port, proc
        time.sleep(0.05)
    _stop(proc)
    raise SystemExit(f"rpc-server {version} did not accept within 20 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def raw_tcp(size: int, repeats: int) -> list[float]:
    """Seconds to push ``size`` bytes through a loopback TCP pair (+ 1-byte ack)."""
    data = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20 or 1))[:size]
    sink = memoryview(bytearray(size))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        times: list[float] = []

        def receiver(conn: socket.socket) -> None:
            with conn:
                for _ in range(repeats):
                    got = 0
                    while got < size:
                        n = conn.recv_into(sink[got:])
                        if n == 0:
                            return
                        got += n
                    conn.sendall(b"!")

        with socket.create_connection(("127.0.0.1", port), timeout=30) as tx:
            rx, _ = listener.accept()
            rx.settimeout(30)
            th = threading.Thread(target=receiver, args=(rx,), daemon=True)
            th.start()
            for _ in range(repeats):
                t0 = time.perf_counter()
                tx.sendall(data)
                if tx.recv(1) != b"!":
                    raise SystemExit("raw TCP receiver stopped early")
                times.append(time.perf_counter() - t0)
            th.join(timeout=30)
    return times


def native(binary: Path, port: int, size: int, repeats: int) -> dict[str, Any]:
    proc = subprocess.run(
        [str(binary), f"127.0.0.1:{port}", str(size), str(repeats)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"native client failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    if not out.get("verified"):
        raise SystemExit("native client read back different data")
    return out


def sdrpc(port: int, size: int, repeats: int) -> dict[str, list[float]]:
    opts = BenchOptions(sizes=(size,), timeout=30, verify=True, repeat_budget=size * repeats)
    res = bench_server("127.0.0.1", port, opts)
    dev = res.devices[0]
    if not dev.verified:
        raise SystemExit("sdrpc: data not verified")
    out: dict[str, list[float]] = {"set": [], "get": []}
    for s in dev.samples:
        out[s.op].extend(s.times)
    return out


def _summary(size: int, times: list[float]) -> dict[str, float]:
    best, med = min(times), statistics.median(times)
    return {
        "best_s": round(best, 6),
        "median_s": round(med, 6),
        "best_mb_per_s": round(mb_per_s(size, best), 1),
        "median_mb_per_s": round(mb_per_s(size, med), 1),
        "runs": len(times),
    }


def bench_version(version: str, size: int, rounds: int, repeats: int) -> dict[str, Any]:
    binary = native_binary(version, 64)
    port, proc = _start_server(version)
    t: dict[str, list[float]] = {
        k: [] for k in ("sdrpc_set", "sdrpc_get", "native_set", "native_get", "raw_tcp")
    }
    try:
        for _ in range(rounds):
            s = sdrpc(port, size, repeats)
            t["sdrpc_set"] += s["set"]
            t["sdrpc_get"] += s["get"]
            n = native(binary, port, size, repeats)
            t["native_set"] += n["set_s"]
            t["native_get"] += n["get_s"]
            t["raw_tcp"] += raw_tcp(size, repeats)
    finally:
        _stop(proc)
    summary = {k: _summary(size, v) for k, v in t.items()}

    def ratio(a: str, b: str, key: str) -> float:
        return round(summary[a][key] / summary[b][key], 3)

    ratios = {}
    for op in ("set", "get"):
        for key, tag in (("best_mb_per_s", ""), ("median_mb_per_s", "_median")):
            ratios[f"sdrpc_vs_native_{op}{tag}"] = ratio(f"sdrpc_{op}", f"native_{op}", key)
            ratios[f"sdrpc_vs_raw_tcp_{op}{tag}"] = ratio(f"sdrpc_{op}", "raw_tcp", key)
            ratios[f"native_vs_raw_tcp_{op}{tag}"] = ratio(f"native_{op}", "raw_tcp", key)
    return {
        "version": version,
        "protocol": PROTOCOL.get(version, "?"),
        "bytes": size,
        "timings": summary,
        "ratios": ratios,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--size", default="64M")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=4, help="transfers per op and round")
    p.add_argument("--versions", default="0.3.35,0.3.36")
    args = p.parse_args()
    size = parse_size(args.size)
    size -= size % 4
    start = time.time()
    results = [
        bench_version(v.strip(), size, args.rounds, args.repeats)
        for v in args.versions.split(",")
        if v.strip()
    ]
    goals = []
    for r in results:
        for op in ("set", "get"):
            value = r["ratios"][f"sdrpc_vs_native_{op}_median"]
            goals.append(
                {
                    "name": f"sdrpc {op.upper()} vs native (median), {r['protocol']}, "
                    f"{size >> 20} MiB",
                    "value": value,
                    "target": GOAL,
                    "met": value >= GOAL,
                }
            )
    doc = {
        "bench": "link",
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
        "duration_s": round(time.time() - start, 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": results,
        "goals": goals,
        "notes": [
            "loopback; server and clients share the machine's cores",
            "goals are judged on *_median ratios (median of all runs); best-of-runs ratios too",
            "v5's native SET includes llama.cpp's FNV-1a hash of uploads above 10 MiB",
        ],
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for r in results:
        ra = r["ratios"]
        tm = r["timings"]
        print(
            f"{r['protocol']}: SET sdrpc {tm['sdrpc_set']['best_mb_per_s']:.0f} / native "
            f"{tm['native_set']['best_mb_per_s']:.0f} MB/s ({ra['sdrpc_vs_native_set']}x); "
            f"GET sdrpc {tm['sdrpc_get']['best_mb_per_s']:.0f} / native "
            f"{tm['native_get']['best_mb_per_s']:.0f} MB/s ({ra['sdrpc_vs_native_get']}x); "
            f"median ratios SET {ra['sdrpc_vs_native_set_median']}x "
            f"GET {ra['sdrpc_vs_native_get_median']}x; "
            f"raw TCP {tm['raw_tcp']['best_mb_per_s']:.0f} MB/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
