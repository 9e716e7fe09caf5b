"""Peak client memory of ``sdrpc-bench`` with its default sizes, against a real server.

    python bench/bench_memory.py --out FILE [--version 0.3.35] [--pythonpath DIR]

Starts a real CPU rpc-server (tests/servers.py, GGML_MAX_NAME 64) on 127.0.0.1,
runs ``python -m sdrpc_build.cli.bench 127.0.0.1:PORT --json`` (default sizes:
4 KiB to 256 MiB, capped by the device's free memory) in a child process and
reads the child's peak resident set size (``ru_maxrss`` from ``os.wait4``).
For scale it also measures a child that only imports the CLI (the floor: the
interpreter, rich and sdrpc itself).

``--pythonpath`` runs another checkout of sdrpc (e.g. an export of an older
commit) to compare before/after. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench_link import _start_server, _stop  # noqa: E402  (one server launcher for the benches)

MIB = 1 << 20


def _run(argv: list[str], pythonpath: str, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    t0 = time.monotonic()
    with open(os.devnull, "wb") as null:
        # cwd: ``python -m`` puts it first on sys.path, before PYTHONPATH
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=null, env=env, cwd=pythonpath)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "seconds": round(time.monotonic() - t0, 2),
        "peak_rss_mib": round(usage.ru_maxrss * 1024 / MIB, 1),  # ru_maxrss is KiB on Linux
        "stdout": out.decode(errors="replace"),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path)
    p.add_argument("--version", default="0.3.35")
    p.add_argument("--pythonpath", default=str(REPO), help="the sdrpc checkout to measure")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    floor = _run(
        [sys.executable, "-c", "import sdrpc_build.cli.bench, rich.table, rich.progress"],
        args.pythonpath,
        60,
    )
    port, server = _start_server(args.version)
    try:
        run = _run(
            [sys.executable, "-m", "sdrpc_build.cli.bench", f"127.0.0.1:{port}", "--json"],
            args.pythonpath,
            args.timeout,
        )
    finally:
        _stop(server)
    largest = None
    rates: dict[str, float] = {}
    with contextlib.suppress(ValueError, KeyError, IndexError):
        samples = json.loads(run["stdout"])["servers"][0]["samples"]
        largest = max(s["bytes"] for s in samples)
        rates = {s["op"]: s["mb_per_s"] for s in samples if s["bytes"] == largest}
    result = {
        "host": platform.node(),
        "python": platform.python_version(),
        "server": f"llama-cpp-python {args.version}, GGML_MAX_NAME=64",
        "sdrpc": args.pythonpath,
        "bench_rc": run["rc"],
        "bench_seconds": run["seconds"],
        "largest_transfer_mib": None if largest is None else largest / MIB,
        "largest_mb_per_s": rates,  # for context only: one run, a busy machine
        "peak_rss_mib": run["peak_rss_mib"],
        "import_only_peak_rss_mib": floor["peak_rss_mib"],
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0 if run["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
