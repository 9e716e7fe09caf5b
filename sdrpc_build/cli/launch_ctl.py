"""``sdrpc-launch status`` and ``sdrpc-launch stop``: a ``--detach`` instance, by name.

Both read ``<sdrpc cache>/run/<name>.json`` and check every recorded process's identity (PID +
start time) first: a stale file whose PID now names another process reads as "not running",
and such a process is never signalled. ``status`` never touches a server's port (a probe
during a client session would hang): busy/idle comes from the server's log.

Exit codes: 0 running (``status``) / stopped (``stop``); 27 not running (no state file, or a
stale one: ``stop`` removes it); 29 a process would not go away; 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Optional

from rich.markup import escape

from sdrpc_build.cli._common import Parser, err_console, out_console, run_parsed
from sdrpc_build.cli.launch_detach import instance_flag
from sdrpc_build.cli.launch_report import PROG, print_device_map, row_json
from sdrpc_build.errors import NotRunningError, StopError
from sdrpc_build.launch import settings
from sdrpc_build.launch.activity import Activity, read_activity
from sdrpc_build.launch.control import stop_instance
from sdrpc_build.launch.identity import (
    LIVE,
    ProcessTable,
    Verdict,
    signal_verified,
    system_table,
)
from sdrpc_build.launch.instance import (
    DEFAULT_INSTANCE,
    InstanceState,
    ServerRecord,
    StateFileError,
    check_instance_name,
    list_instances,
    read_state,
    remove_state,
    state_path,
)
from sdrpc_build.paths import cache_dir, run_dir

__all__ = ["ServerState", "ServerStatus", "format_duration", "main", "server_status"]


ServerState = Literal["running", "starting", "exited"]


@dataclass(frozen=True)
class ServerStatus:
    record: ServerRecord
    state: ServerState
    activity: Activity
    uptime: Optional[float]  # seconds since it became ready (while running)

    @property
    def running(self) -> bool:
        return self.state == "running"


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


def server_status(
    rec: ServerRecord,
    verdict: Optional[Verdict],
    supervised: bool,
    now: float,
    activity: Callable[[Path, int], Activity] = read_activity,
) -> ServerStatus:
    """One server: running iff its recorded process is still the same process; starting
    while a live supervisor (re)starts it; else exited."""
    if verdict in LIVE:
        act = activity(rec.log, rec.log_offset)
        uptime = now - rec.ready_at if rec.ready_at is not None else None
        return ServerStatus(rec, "running", act, uptime)
    state: ServerState = (
        "starting" if supervised and rec.phase in ("starting", "restarting") else "exited"
    )
    return ServerStatus(rec, state, Activity("unknown"), None)


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


def _load(path: Path) -> tuple[Optional[InstanceState], Optional[str]]:
    try:
        return read_state(path), None
    except StateFileError as exc:
        return None, str(exc)


def _not_running_hint(rdir: Path, table: ProcessTable, instance: str) -> Optional[str]:
    live = []
    for name in list_instances(rdir):
        if name == instance:
            continue
        try:
            other = read_state(state_path(rdir, name))
        except StateFileError:
            continue
        if other is not None and table.verify(other.supervisor) in LIVE:
            live.append(name)
    if live:
        return "running instances: " + ", ".join(live) + " (use --instance NAME)"
    return "start one with: sdrpc-launch ... --detach"


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
    instance = check_instance_name(args.instance)
    rdir = run_dir(cache_dir(os.environ, args.cache_dir))
    path = state_path(rdir, instance)
    table = system_table()
    state, problem = _load(path)
    now = time.time()
    if state is None:
        reason = problem or "no state file"
        if args.json:
            _emit({"instance": instance, "running": False, "reason": reason, "state_file": path})
        raise NotRunningError(
            f"instance {instance!r} is not running ({reason})",
            hint=_not_running_hint(rdir, table, instance)
            if problem is None
            else f"'sdrpc-launch stop{instance_flag(instance)}' removes the file"
            if os.path.isfile(path)
            else "check --cache-dir: the state files are in its run/ directory",
        )
    verdict = table.verify(state.supervisor)
    running = verdict in LIVE
    servers = [
        server_status(s, table.verify(s.process) if s.process else None, running, now)
        for s in state.servers
    ]
    why = {"dead": "its supervisor is gone", "reused": "its PID now names another process"}
    if args.json:
        _emit(_status_json(state, path, verdict, servers, now))
    else:
        _print_status(state, verdict, servers, now)
    if running:
        return 0
    raise NotRunningError(
        f"instance {instance!r} is not running: {why.get(verdict, verdict)} "
        f"(pid {state.supervisor.pid}; the state file is stale)",
        hint=f"'sdrpc-launch stop{instance_flag(instance)}' removes it",
    )


def _status_json(
    state: InstanceState, path: Path, verdict: Verdict, servers: list[ServerStatus], now: float
) -> dict[str, Any]:
    running = verdict in LIVE
    return {
        "instance": state.instance,
        "running": running,
        "phase": state.phase if running else "stale",
        "state_file": str(path),
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
            for s in servers
        ],
        "log_dir": str(state.log_dir),
        "supervisor_log": str(state.supervisor_log),
    }


def _print_status(
    state: InstanceState, verdict: Verdict, servers: list[ServerStatus], now: float
) -> None:
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
        st = s.state
        note = f"  ({r.phase})" if r.phase in ("fatal", "restarting") and not s.running else ""
        if r.restarts:
            note += f"  (restarts: {r.restarts})"
        pid_s = str(r.process.pid) if r.process and s.running else "-"
        act = s.activity.state + (_since(s.activity, r, now) if s.running else "")
        act = act if s.running else "-"
        up = format_duration(s.uptime) if s.uptime is not None else "-"
        color = {"running": "green", "starting": "yellow"}.get(s.state, "red")
        out.print(
            f"    {escape(r.name):<{width}}  [{color}]{st:<8}[/{color}] {pid_s:>7}  "
            f"{r.endpoint:<21} {act:<12} {up}{note}",
            highlight=False,
        )
    if state.rpc_servers and verdict in LIVE:
        print_device_map(out, state.devices, state.rpc_servers, width)
    out.print(
        f"    logs: {state.log_dir} (supervisor: {state.supervisor_log.name})", highlight=False
    )


def _stop(args: argparse.Namespace) -> int:
    instance = check_instance_name(args.instance)
    given = None if args.timeout is None else settings.stop_timeout(args.timeout, "--timeout")
    rdir = run_dir(cache_dir(os.environ, args.cache_dir))
    path = state_path(rdir, instance)
    table = system_table()
    err = err_console()
    state, problem = _load(path)
    if state is None:
        if problem is not None and os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            err.print(f"{PROG}: removed an unreadable state file ({escape(problem)})")
        elif problem is not None:
            err.print(f"{PROG}: no state file to read ({escape(problem)})")
        if args.json:
            _emit({"instance": instance, "stopped": False, "running": False})
        raise NotRunningError(
            f"instance {instance!r} is not running",
            hint=_not_running_hint(rdir, table, instance),
        )
    if table.method == "pid":
        err.print(f"[yellow]{PROG}: warning: processes are identified by PID only here[/yellow]")
    timeout = given if given is not None else state.stop_timeout + 5.0
    if table.verify(state.supervisor) in LIVE and not args.json:
        out_console().print(
            f"[bold]{PROG}:[/bold] stopping instance {instance!r} "
            f"(supervisor pid {state.supervisor.pid})"
        )
    outcome = stop_instance(
        state,
        check=table.verify,
        send=lambda ident, sig: signal_verified(table, ident, sig),
        timeout=timeout,
    )
    if outcome.survivors:
        pids = ", ".join(map(str, outcome.survivors))
        raise StopError(
            f"instance {instance!r}: process(es) {pids} did not end after SIGKILL",
            hint="they may belong to another user or hang in the kernel; see 'ps -p PID'",
        )
    remove_state(path, owner_pid=state.supervisor.pid)
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
