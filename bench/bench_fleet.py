"""Fleet bring-up on the test lab: ``sdrpc up`` of 1 host vs 3 hosts, and a second ``up``.

    sudo PYTHONPATH=$PWD python3 bench/bench_fleet.py [--out FILE] [--rounds 1]

Needs what tests/integration/test_fleet.py needs (root, systemd-nspawn, the sdrpc[fleet]
extra). Each round boots a fresh 1-host lab and a fresh 3-host lab (one cpu server per host,
``transport = "lan"``, ``build-on = "client"``: the server build is the cached one of
tests/servers.py, and the wheelhouse of this sdrpc is built before the first round: the figures
are sdrpc + Ansible + systemd, not a compiler or pip on the client), then times:

* ``up1``: the first ``sdrpc up`` on the 1-host lab;
* ``up3``: the first ``sdrpc up`` on the 3-host lab (goal: ``up3 / up1 <= 1.5``);
* ``again3``: a second ``sdrpc up`` on the 3-host lab, nothing changed (goal: <= 10 s).

Writes ``bench/results/fleet-<date>.json`` unless ``--out`` is given. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fleetkit import MAX_NAME, VERSION, client_lines  # noqa: E402
from lab import Lab  # noqa: E402
from servers import build_server, sdrpc_cache  # noqa: E402

from sdrpc_build.fleet.wheelhouse import build_wheelhouse  # noqa: E402

PORT = 50052
GOAL_RATIO = 1.5
GOAL_AGAIN = 10.0


def _toml(lab: Lab, path: Path) -> Path:
    lines = client_lines(lab)
    for h in lab.hosts:
        lines += ["[[host]]", f'name = "{h}"', f'ssh = "{h}"', f'address = "{lab.address(h)}"']
        lines += ["  [[host.server]]", f"  port = {PORT}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sdrpc(*args: str) -> float:
    cmd = [sys.executable, "-m", "sdrpc_build.cli.main", *args, "--cache-dir", str(sdrpc_cache())]
    t0 = time.monotonic()
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "SDRPC_SSH_CONFIG": ""},
    )
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench_fleet: {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return took


def _round(tmp: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with Lab(1) as lab1:
        toml = _toml(lab1, tmp / "fleet1.toml")
        out["up1"] = _sdrpc("up", str(toml))
        _sdrpc("down", str(toml))
    with Lab(3) as lab3:
        toml = _toml(lab3, tmp / "fleet3.toml")
        out["up3"] = _sdrpc("up", str(toml))
        out["again3"] = _sdrpc("up", str(toml))
        _sdrpc("down", str(toml))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    build_server(VERSION, MAX_NAME, portable=True)  # cached: not part of the figures
    build_wheelhouse(sdrpc_cache(), os.environ)  # once per source digest: not part of them either
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(1, a.rounds)):
            r = _round(Path(tmp))
            rounds.append(r)
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.items()))
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    result: dict[str, Any] = {
        "bench": "fleet",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),  # other work on the machine skews the figures
        },
        "hosts": {"small": 1, "large": 3},
        "servers_per_host": 1,
        "rounds": rounds,
        "median_s": med,
        "ratio_up3_up1": med["up3"] / med["up1"],
        "goals": {"ratio_up3_up1": GOAL_RATIO, "again3_s": GOAL_AGAIN},
        "met": {
            "ratio_up3_up1": med["up3"] / med["up1"] <= GOAL_RATIO,
            "again3_s": med["again3"] <= GOAL_AGAIN,
        },
    }
    out = a.out or HERE / "results" / f"fleet-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("median_s", "ratio_up3_up1", "met")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
