"""``sdrpc up|down|status [fleet.toml]``: the fleet's three commands (argv -> int)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from sdrpc_build.cli._common import Parser, run_parsed
from sdrpc_build.fleet.errors import FleetDownError, FleetHostsError
from sdrpc_build.fleet.model import Fleet, load_fleet
from sdrpc_build.fleet.ops import down, status, tunnels, up
from sdrpc_build.fleet.runner import HostOutcome
from sdrpc_build.paths import cache_dir

__all__ = ["down_main", "status_main", "up_main"]

LAN_WARNING = (
    'warning: transport = "lan": the servers listen on the hosts\' addresses without '
    "authentication; anyone who reaches them can read and write their memory"
)


def _parser(cmd: str, what: str) -> Parser:
    p = Parser(prog=f"sdrpc {cmd}", description=what)
    p.add_argument(
        "fleet", nargs="?", default="fleet.toml", metavar="FLEET.toml", help="default ./fleet.toml"
    )
    p.add_argument("--cache-dir", metavar="DIR", help="sdrpc's cache (builds, wheelhouse)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _load(args: argparse.Namespace) -> tuple[Fleet, Path]:
    return load_fleet(Path(args.fleet).expanduser()), cache_dir(os.environ, args.cache_dir)


def _failed(hosts: Sequence[tuple[str, str | None, str | None]]) -> str:
    return "; ".join(
        f"{n} ({t or 'ansible'}: {(r or 'failed').splitlines()[0]})" for n, t, r in hosts
    )


def _up(args: argparse.Namespace) -> int:
    fleet, root = _load(args)
    if fleet.client.transport == "lan":
        print(LAN_WARNING, file=sys.stderr)
    res = up(fleet, os.environ, root, replace=args.replace)
    # --print-rpc-servers: stdout is the --rpc-servers string alone, the report goes to stderr
    report = sys.stderr if args.print_rpc_servers else sys.stdout
    if args.json:
        print(json.dumps({**asdict(res), "ok": res.ok}, indent=2), file=report)
    else:
        for b in res.builds:
            who = {"client": "built here", "cache": "built before"}.get(
                str(b.builder), f"built on {b.builder}" if b.builder else "not built"
            )
            why = f": {b.reason}" if b.reason else ""
            print(f"server {b.backend} for {b.platform}: {who}{why}", file=report)
        for h in res.hosts:
            state = "ok" if h.ok else "FAILED"
            where = " ".join(h.endpoints) if h.ok else f"{h.task}: {h.reason}"
            print(f"{h.name:<16} {state:<7} changed={h.changed:<3} {where}", file=report)
        if res.rpc_servers and not args.print_rpc_servers:
            print(f"--rpc-servers {res.rpc_servers}")
    if res.rpc_servers and args.print_rpc_servers:
        print(res.rpc_servers)
    bad = [(h.name, h.task, h.reason) for h in res.hosts if not h.ok]
    if bad:
        raise FleetHostsError(
            f"{len(bad)} of {len(res.hosts)} hosts failed: {_failed(bad)}",
            hint="the healthy hosts keep running; fix the hosts named and run sdrpc up again",
        )
    return 0


def _outcome_json(o: HostOutcome) -> dict[str, object]:
    d = asdict(o)
    d.pop("outputs")
    return d


def _down(args: argparse.Namespace) -> int:
    fleet, root = _load(args)
    hosts = down(fleet, os.environ, root)
    if args.json:
        print(json.dumps({"hosts": [_outcome_json(o) for o in hosts]}, indent=2))
    else:
        for o in hosts:
            print(f"{o.name:<16} {'removed' if o.ok else 'FAILED'}  {o.reason or ''}".rstrip())
    bad = [(o.name, o.task, o.reason) for o in hosts if not o.ok]
    if bad:
        raise FleetDownError(
            f"{len(bad)} of {len(hosts)} hosts were not cleaned: {_failed(bad)}",
            hint="run sdrpc down again when the hosts are reachable",
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    fleet, root = _load(args)
    states, hosts = status(fleet, os.environ, root)
    links = tunnels(fleet, root).hosts if fleet.client.transport == "ssh" else ()
    if args.json:
        print(
            json.dumps(
                {
                    "servers": [asdict(s) for s in states],
                    "hosts": [_outcome_json(o) for o in hosts],
                    "tunnels": [asdict(t) for t in links],
                },
                indent=2,
            )
        )
    else:
        for s in states:
            print(
                f"{s.host:<16} {s.unit:<32} {s.active}/{s.sub:<10} "
                f"restarts={s.restarts if s.restarts is not None else '?':<3} {s.activity}"
            )
        for t in links:
            ports = ",".join(f"127.0.0.1:{f.local}->{f.remote}" for f in t.forwards)
            print(f"{t.host:<16} tunnel {t.phase:<12} restarts={t.restarts} {ports}")
        for o in hosts:
            if not o.ok:
                print(f"{o.name:<16} UNREACHABLE  {o.reason or ''}")
    bad = [(o.name, o.task, o.reason) for o in hosts if not o.ok]
    if bad:
        raise FleetHostsError(
            f"{len(bad)} of {len(hosts)} hosts did not answer: {_failed(bad)}",
            hint="check ssh to those hosts (ssh HOST true)",
        )
    return 0


def up_main(argv: list[str] | None = None) -> int:
    p = _parser("up", "Build, install and start the servers of fleet.toml on every host.")
    p.add_argument(
        "--print-rpc-servers",
        action="store_true",
        help="print only the --rpc-servers string on stdout (everything else on stderr): "
        'sd-cli --rpc-servers "$(sdrpc up --print-rpc-servers)"',
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace sdrpc servers on the hosts built for other pins than the client's "
        "(refused without it)",
    )
    return run_parsed("sdrpc up", p, argv, _up)


def down_main(argv: list[str] | None = None) -> int:
    p = _parser("down", "Stop and remove everything sdrpc installed on the hosts.")
    return run_parsed("sdrpc down", p, argv, _down)


def status_main(argv: list[str] | None = None) -> int:
    p = _parser(
        "status", "Each server's unit state, restarts and busy/idle (from its log), per host."
    )
    return run_parsed("sdrpc status", p, argv, _status)
