"""Wall time of sdrpc-check / sdrpc-bench against hostile servers vs the documented deadline.

    python bench/bench_deadlines.py [--out FILE] [--timeout 2] [--pythonpath DIR]

Each case runs the real command in a child process (``python -m
sdrpc_build.cli.check|bench``) against fakes from tests/fakes on 127.0.0.1:

* slow: valid v7 replies, each 0.6 s late, 64 devices;
* drip: the HELLO reply one byte every 0.2 s;
* garbage, hang (accepts, never answers), http (Python's http.server);
* all: the five at once;
* bench-drip: sdrpc-bench against a server that sends GET_TENSOR data one byte
  every 1.5 s.

Documented deadlines: sdrpc-check 3 x --timeout in all; sdrpc-bench 60 x
--timeout per server (and every request --timeout, plus as much per MiB).
``--pythonpath`` runs another checkout (e.g. an export of an older commit);
``--limit`` kills a case that runs longer. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fakes import FakeRpc, FakeServer, garbage, hang, real_http_server, slow_drip  # noqa: E402

CHECK_FACTOR = 3
BENCH_FACTOR = 60


@contextlib.contextmanager
def _servers(kind: str) -> Iterator[list[int]]:
    makers: dict[str, Any] = {
        "slow": lambda: FakeServer(FakeRpc(delay=0.6, devices=[(1 << 30, 2 << 30)] * 64)),
        "drip": lambda: FakeServer(slow_drip),
        "garbage": lambda: FakeServer(garbage),
        "hang": lambda: FakeServer(hang),
        "http": real_http_server,
        "bench-drip": lambda: FakeServer(FakeRpc(drip=1.5)),
    }
    names = ["slow", "drip", "garbage", "hang", "http"] if kind == "all" else [kind]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(makers[n]()) for n in names]


def _run(argv: list[str], pythonpath: str, limit: float) -> tuple[int | None, float, str]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            env=env,
            cwd=pythonpath,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - t0, f"still running after {limit:g} s: killed"
    return done.returncode, time.monotonic() - t0, done.stdout


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--pythonpath", default=str(REPO))
    p.add_argument("--limit", type=float, default=180.0)
    args = p.parse_args()
    t = args.timeout
    rows = []
    for kind in ("slow", "drip", "garbage", "hang", "http", "all", "bench-drip"):
        with _servers(kind) as ports:
            eps = [f"127.0.0.1:{port}" for port in ports]
            if kind == "bench-drip":
                tool, deadline = "sdrpc-bench", BENCH_FACTOR * t
                argv = ["-m", "sdrpc_build.cli.bench", *eps, "--sizes", "4K"]
            else:
                tool, deadline = "sdrpc-check", CHECK_FACTOR * t
                argv = ["-m", "sdrpc_build.cli.check", *eps]
            argv = [sys.executable, *argv, "--timeout", f"{t:g}", "--json"]
            rc, wall, out = _run(argv, args.pythonpath, args.limit)
        verdicts: list[Any] = []
        with contextlib.suppress(ValueError, KeyError):
            doc = json.loads(out)
            verdicts = [s.get("verdict") or s.get("error") for s in doc["servers"]]
        rows.append(
            {
                "case": kind,
                "tool": tool,
                "exit": rc,
                "wall_s": round(wall, 2),
                "documented_deadline_s": deadline,
                "ratio": round(wall / deadline, 3),
                "verdicts": verdicts,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    doc = {"timeout_s": t, "sdrpc": args.pythonpath, "cases": rows}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
