"""``sdrpc-launch status`` and ``sdrpc-launch stop``: a ``--detach`` instance, by name.

Parsing and output only: the use cases are ``launch.status.instance_status`` (identities
checked, busy/idle from the logs, never from the port) and ``launch.control.stop_named``.

Exit codes: 0 running (``status``) / stopped (``stop``); 27 not running (no state file, or a
stale one: ``stop`` removes it); 29 a process would not go away; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from rich.markup import escape

from sdrpc_build.cli._common import Parser, err_console, out_console, run_parsed
from sdrpc_build.cli.launch_report import PROG, print_device_map, row_json
from sdrpc_build.errors import NotRunningError
from sdrpc_build.launch import settings
from sdrpc_build.launch.activity import Activity
from sdrpc_build.launch.control import stop_named
from sdrpc_build.launch.identity import LIVE, Verdict, system_table
from sdrpc_build.launch.instance import (
    DEFAULT_INSTANCE,
    InstanceState,
    ServerRecord,
    check_instance_name,
)
from sdrpc_build.launch.status import InstanceStatus, instance_status
from sdrpc_build.paths import cache_dir, run_dir

__all__ = ["format_duration", "main"]


def format_duration(seconds: float) -> str:
    """``42s``, ``3m 5s``, ``2h 7m``, ``3d 4h``: two units at most."""
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s}s" if m else f"{s}s"


def _parser(command: str) -> argparse.ArgumentParser:
    what = {
        "status": "Show a detached sdrpc-launch instance: its servers, busy or idle, uptime.",
        "stop": "Stop a detached sdrpc-launch instance: SIGTERM, wait, SIGKILL.",
    }[command]
    p = Parser(prog=f"{PROG} {command}", description=what)
    p.add_argument(
        "--instance",
        metavar="NAME",
        default=DEFAULT_INSTANCE,
        help=f"instance name (default {DEFAULT_INSTANCE!r})",
    )
    p.add_argument("--cache-dir", help="sdrpc's cache (where run/<NAME>.json lives)")
    if command == "stop":
        p.add_argument(
            "--timeout",
            metavar="S",
            help="seconds to wait before SIGKILL (default: the instance's --stop-timeout + 5)",
        )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _since(a: Activity, rec: ServerRecord, now: float) -> str:
    if a.since is not None:
        return f" {format_duration((datetime.now() - a.since).total_seconds())}"
    if rec.ready_at is not None:
        return f" {format_duration(now - rec.ready_at)}"
    return ""


def _status(args: argparse.Namespace) -> int:
    rdir = run_dir(cache_dir(os.environ, args.cache_dir))
    st = instance_status(rdir, args.instance, system_table())
    if st.state is None:
        if args.json:
            reason = st.problem or "no state file"
            _emit(
                {"instance": st.instance, "running": False, "reason": reason, "state_file": st.path}
            )
    elif args.json:
        _emit(_status_json(st))
    else:
        _print_status(st)
    err = st.not_running()
    if err is not None:
        raise err
    return 0


def _status_json(st: InstanceStatus) -> dict[str, Any]:
    assert st.state is not None
    state, verdict, now, running = st.state, st.verdict, st.now, st.running
    return {
        "instance": state.instance,
        "running": running,
        "phase": state.phase if running else "stale",
        "state_file": str(st.path),
        "supervisor": {
            "pid": state.supervisor.pid,
            "identity": verdict,
            "uptime_s": round(now - state.started_at, 1) if running else None,
        },
        "rpc_servers": state.rpc_servers,
        "device_map": [row_json(r) for r in state.devices],
        "servers": [
            {
                "name": s.record.name,
                "endpoint": s.record.endpoint,
                "state": s.state,
                "phase": s.record.phase,
                "pid": s.record.process.pid if s.record.process else None,
                "activity": s.activity.state,
                "activity_since": s.activity.since.isoformat() if s.activity.since else None,
                "uptime_s": round(s.uptime, 1) if s.uptime is not None else None,
                "restarts": s.record.restarts,
                "log": str(s.record.log),
            }
            for s in st.servers
        ],
        "log_dir": str(state.log_dir),
        "supervisor_log": str(state.supervisor_log),
    }


def _print_status(st: InstanceStatus) -> None:
    assert st.state is not None
    state, verdict, servers, now = st.state, st.verdict, st.servers, st.now
    out = out_console()
    pid = state.supervisor.pid
    if verdict in LIVE:
        what = "starting" if state.phase == "starting" else "running"
        up = format_duration(now - state.started_at)
        out.print(
            f"[bold]{PROG}:[/bold] instance {state.instance!r} [green]{what}[/green] "
            f"(supervisor pid {pid}, up {up})"
        )
        if verdict == "unverified":
            out.print("    [yellow]identity not verified (PID only on this system)[/yellow]")
    else:
        out.print(f"[bold]{PROG}:[/bold] instance {state.instance!r} [red]not running[/red]")
    width = max((len(s.record.name) for s in servers), default=6)
    out.print(
        f"    {'SERVER':<{width}}  {'STATE':<8} {'PID':>7}  {'ENDPOINT':<21} {'CLIENT':<12} UPTIME",
        highlight=False,
    )
    for s in servers:
        r = s.record
        note = f"  ({r.phase})" if r.phase in ("fatal", "restarting") and not s.running else ""
        if r.restarts:
            note += f"  (restarts: {r.restarts})"
        pid_s = str(r.process.pid) if r.process and s.running else "-"
        act = s.activity.state + (_since(s.activity, r, now) if s.running else "")
        act = act if s.running else "-"
        up = format_duration(s.uptime) if s.uptime is not None else "-"
        color = {"running": "green", "starting": "yellow"}.get(s.state, "red")
        out.print(
            f"    {escape(r.name):<{width}}  [{color}]{s.state:<8}[/{color}] {pid_s:>7}  "
            f"{r.endpoint:<21} {act:<12} {up}{note}",
            highlight=False,
        )
    if state.rpc_servers and verdict in LIVE:
        print_device_map(out, state.devices, state.rpc_servers, width)
    out.print(
        f"    logs: {state.log_dir} (supervisor: {state.supervisor_log.name})", highlight=False
    )


def _stop(args: argparse.Namespace) -> int:
    check_instance_name(args.instance)  # before the other options, like status
    given = None if args.timeout is None else settings.stop_timeout(args.timeout, "--timeout")
    rdir = run_dir(cache_dir(os.environ, args.cache_dir))
    table = system_table()
    err = err_console()

    def announce(state: InstanceState, verdict: Verdict) -> None:
        if table.method == "pid":
            err.print(
                f"[yellow]{PROG}: warning: processes are identified by PID only here[/yellow]"
            )
        if verdict in LIVE and not args.json:
            out_console().print(
                f"[bold]{PROG}:[/bold] stopping instance {state.instance!r} "
                f"(supervisor pid {state.supervisor.pid})"
            )

    report = stop_named(rdir, args.instance, table, given, announce)
    instance, state, outcome = report.instance, report.state, report.outcome
    if state is None or outcome is None:
        if report.removed_unreadable:
            err.print(f"{PROG}: removed an unreadable state file ({escape(str(report.problem))})")
        elif report.problem is not None:
            err.print(f"{PROG}: no state file to read ({escape(report.problem)})")
        if args.json:
            _emit({"instance": instance, "stopped": False, "running": False})
        raise report.not_running()
    if args.json:
        _emit(
            {
                "instance": instance,
                "stopped": outcome.was_running,
                "running": False,
                "signalled": list(outcome.signalled),
                "killed": list(outcome.killed),
            }
        )
    if not outcome.was_running:
        gone = "is gone" if outcome.supervisor == "dead" else "now names another process"
        err.print(
            f"{PROG}: instance {instance!r} was not running (supervisor pid "
            f"{state.supervisor.pid} {gone}); removed its stale state file"
        )
        return NotRunningError.exit_code
    if not args.json:
        killed = f" (SIGKILL needed for pid {', '.join(map(str, outcome.killed))})"
        n = len(state.servers)
        out_console().print(
            f"[bold]{PROG}:[/bold] instance {instance!r} stopped: supervisor and "
            f"{n} server(s) gone" + (killed if outcome.killed else "")
        )
    return 0


def main(argv: list[str]) -> int:
    """``argv[0]`` is ``status`` or ``stop``."""
    command, rest = argv[0], argv[1:]
    body = _status if command == "status" else _stop
    return run_parsed(f"{PROG} {command}", _parser(command), rest, body)
