"""SSH tunnels (sdrpc_build/fleet/tunnels.py): throughput through a tunnel vs direct, per
cipher, and how fast a tunnel notices a dead link and comes back (needs root: the lab).

    python bench/bench_tunnel.py --out FILE [--size 64M] [--rounds 3] [--cycles 3]

One lab host (tests/lab.py: a systemd-nspawn container with sshd on a private bridge) runs a real
CPU rpc-server (0.3.35 sdist, GGML_MAX_NAME 160) bound to 0.0.0.0:50052, so this machine reaches
it both directly (the host's address) and through ``open_tunnels`` (the host's 127.0.0.1). In
alternating rounds: direct, then a tunnel per cipher (each an ``open_tunnels`` with that ``-c``;
the local port stays). Each measurement is :func:`sdrpc_build.bench.link.bench_server`, SET and
GET of ``--size`` (best and median MB/s). Then ``--cycles`` times: cut the host's link (time
until the ssh process exits) and restore it (time until the tunnel is up again).

On one machine the ssh client, sshd, the server and the benchmark share the CPUs: the tunnel's
figures are what encryption costs in CPU here, not what a network would allow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import servers  # noqa: E402
from lab import Lab, lab_unavailable_reason  # noqa: E402

from sdrpc_build.bench.link import bench_server  # noqa: E402
from sdrpc_build.bench.maths import mb_per_s  # noqa: E402
from sdrpc_build.bench.options import BenchOptions  # noqa: E402
from sdrpc_build.fleet.tunnels import (  # noqa: E402
    FAST_CIPHERS,
    TunnelSpec,
    close_tunnels,
    open_tunnels,
    tunnel_status,
)
from sdrpc_build.protocol.probe import probe  # noqa: E402
from sdrpc_build.units import parse_size  # noqa: E402

PORT = 50052
INSTANCE = "bench-tunnel"
CIPHERS: dict[str, str | None] = {
    "sdrpc default (aes128-gcm first)": FAST_CIPHERS,
    "ssh default (chacha20-poly1305)": None,
    "aes256-gcm@openssh.com": "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com": "chacha20-poly1305@openssh.com",
    "aes128-ctr": "aes128-ctr",
}
UNIT = f"""\
[Service]
ExecStart=/opt/sdrpc-bench/rpc-server -H 0.0.0.0 -p {PORT}
Restart=on-failure
"""


def install(lab: Lab, binary: Path) -> None:
    dest = "/opt/sdrpc-bench/rpc-server"
    subprocess.run(
        lab.ssh_argv("lab1", f"mkdir -p /opt/sdrpc-bench && cat > {dest} && chmod 755 {dest}"),
        input=binary.read_bytes(),
        check=True,
        timeout=60,
    )
    lab.ssh("lab1", "cat > /etc/systemd/system/sdrpc-bench.service", input=UNIT, check=True)
    lab.ssh("lab1", "systemctl daemon-reload && systemctl start sdrpc-bench", check=True)
    deadline = time.monotonic() + 30
    while probe(lab.address("lab1"), PORT, timeout=2.0, detect_max_name=False).status != "ok":
        if time.monotonic() > deadline:
            raise SystemExit("the lab host's rpc-server did not answer within 30 s")
        time.sleep(0.1)


def measure(host: str, port: int, size: int, repeats: int) -> dict[str, list[float]]:
    opts = BenchOptions(sizes=(size,), timeout=30, verify=False, repeat_budget=size * repeats)
    res = bench_server(host, port, opts)
    out: dict[str, list[float]] = {"set": [], "get": []}
    for s in res.samples:
        out[s.op].extend(s.times)
    return out


def summary(size: int, times: list[float]) -> dict[str, float]:
    return {
        "best_mb_per_s": round(mb_per_s(size, min(times)), 1),
        "median_mb_per_s": round(mb_per_s(size, statistics.median(times)), 1),
        "runs": len(times),
    }


def open_with(lab: Lab, cache: Path, ciphers: str | None) -> int:
    spec = TunnelSpec("lab1", "lab1", (PORT,), config=lab.ssh_config_path, ciphers=ciphers)
    state = open_tunnels([spec], cache_root=cache, instance=INSTANCE, env=os.environ)
    return state.tunnels[0].forwards[0].local


def wait_phase(cache: Path, phase: str, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while tunnel_status(INSTANCE, cache).hosts[0].phase != phase:
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"the tunnel was not {phase} within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def link_cycles(lab: Lab, cache: Path, cycles: int) -> dict[str, Any]:
    drop, back = [], []
    for _ in range(cycles):
        wait_phase(cache, "up")
        lab.link_down("lab1")
        drop.append(round(wait_phase(cache, "reconnecting"), 3))
        time.sleep(8.0)  # a few failed reconnects (ConnectTimeout 5 s, backoff up to 5 s)
        lab.link_up("lab1")
        back.append(round(wait_phase(cache, "up"), 3))
    return {
        "ssh_exit_after_link_down_s": {"median": statistics.median(drop), "samples": drop},
        "up_after_link_up_s": {"median": statistics.median(back), "samples": back},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--size", default="64M")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        raise SystemExit(f"bench_tunnel: {reason}")
    size = parse_size(args.size)
    binary = servers.build_server("0.3.35", 160)
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, Lab(1) as lab:
        cache = Path(tmp)
        try:
            install(lab, binary)
            direct = lab.address("lab1")
            for _ in range(args.rounds):
                for name, ciphers in [("direct", ""), *CIPHERS.items()]:
                    host, port = (
                        (direct, PORT)
                        if ciphers == ""
                        else ("127.0.0.1", open_with(lab, cache, ciphers))
                    )
                    got = measure(host, port, size, args.repeats)
                    row = times.setdefault(name, {"set": [], "get": []})
                    for op in ("set", "get"):
                        row[op] += got[op]
            open_with(lab, cache, FAST_CIPHERS)
            links = link_cycles(lab, cache, args.cycles)
        finally:
            close_tunnels(INSTANCE, cache)
    results = {name: {op: summary(size, t[op]) for op in t} for name, t in times.items()}
    base = results["direct"]
    ratios = {
        f"{name}_vs_direct_{op}_median": round(
            r[op]["median_mb_per_s"] / base[op]["median_mb_per_s"], 3
        )
        for name, r in results.items()
        if name != "direct"
        for op in ("set", "get")
    }
    doc = {
        "benchmark": "ssh tunnels",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "ssh": subprocess.run(
                ["ssh", "-V"], capture_output=True, text=True, check=False
            ).stderr.strip(),
        },
        "bytes": size,
        "rounds": args.rounds,
        "throughput": results,
        "ratios": ratios,
        "link": links,
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    print("\n| path | SET MB/s (median, best) | GET MB/s (median, best) |\n|---|---|---|")
    for name, r in results.items():
        s, g = r["set"], r["get"]
        print(
            f"| {name} | {s['median_mb_per_s']}, {s['best_mb_per_s']} "
            f"| {g['median_mb_per_s']}, {g['best_mb_per_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
