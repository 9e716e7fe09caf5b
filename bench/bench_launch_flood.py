"""What a server printing one huge line without a newline costs the sdrpc-launch supervisor.

The server is ``tests/fakes/flood_server.py``: ``--size`` bytes of ``x`` and no newline, a
progress bar, then a crash. sdrpc-launch runs it with ``-q --restart never``, so it goes
FATAL and the supervisor exits. Measured on the supervisor process alone (not its children):

* CPU seconds (user + system, from /proc/PID/stat, read after it exited and before it is
  reaped, so the flood server's own CPU is not counted);
* peak resident memory (VmHWM, polled every 10 ms);
* bytes it wrote to stdout + stderr (the FATAL tail);
* wall seconds from start to exit.

Usage: python bench/bench_launch_flood.py [--size 40M] [--src DIR] [--out FILE]
``--src`` is an sdrpc tree to measure (default: this one), e.g. an older commit from
``git archive COMMIT sdrpc_build | tar -x -C DIR``, to compare before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLOOD = ROOT / "tests" / "fakes" / "flood_server.py"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(size: str, src: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sdrpc-flood-") as tmp:
        wrapper = Path(tmp) / "flood-server"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FLOOD}" --size {size} "$@"\n')
        wrapper.chmod(0o755)
        argv = [sys.executable, "-m", "sdrpc_build.cli.launch", "-q", "--binary", str(wrapper)]
        argv += ["-p", "0", "--restart", "never", "--log-dir", str(Path(tmp) / "logs")]
        env = {**os.environ, "PYTHONPATH": str(src), "SDRPC_CACHE_DIR": str(Path(tmp) / "c")}
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out: dict[str, bytes] = {}

        def drain(name: str) -> None:
            stream = getattr(proc, name)
            out[name] = stream.read()

        readers = [threading.Thread(target=drain, args=(n,)) for n in ("stdout", "stderr")]
        for r in readers:
            r.start()
        peak = 0
        while True:  # poll the peak until it exits (WNOWAIT: not reaped yet)
            peak = max(peak, _hwm_kib(proc.pid))
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                break
            time.sleep(0.01)
        wall = time.monotonic() - t0
        cpu = _cpu_seconds(proc.pid)
        rc = proc.wait()
        for r in readers:
            r.join()
    return {
        "size": size,
        "src": str(src),
        "returncode": rc,
        "supervisor_cpu_s": round(cpu, 2),
        "supervisor_peak_rss_mib": round(peak / 1024, 1),
        "output_bytes": len(out["stdout"]) + len(out["stderr"]),
        "wall_s": round(wall, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="40M", help="bytes printed without a newline (40M)")
    p.add_argument("--src", type=Path, default=ROOT, help="the sdrpc tree to measure")
    p.add_argument("--out", type=Path, help="write the JSON document here")
    args = p.parse_args()
    result = measure(args.size, args.src.resolve())
    doc = {
        "bench": "launch_flood",
        "host": platform.node(),
        "python": platform.python_version(),
        "result": result,
        "goals": [
            {"name": "supervisor CPU < 3 s for 40 MB", "met": result["supervisor_cpu_s"] < 3},
            {"name": "output < 20 KB", "met": result["output_bytes"] < 20_000},
        ],
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
