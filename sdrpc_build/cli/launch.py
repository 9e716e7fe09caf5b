"""sdrpc-launch: start ggml rpc-server instances and keep them running.

Usage::

    sdrpc-launch                                    # one server on 127.0.0.1:50052, newest build
    sdrpc-launch --host 0.0.0.0 -d Vulkan1,Vulkan2 -p 50053
    sdrpc-launch --backend cuda --visible-devices 0
    sdrpc-launch --per-device                       # one server per device the binary offers
    sdrpc-launch --config servers.toml              # several servers ([[server]] tables)

Stop with Ctrl-C (or SIGTERM): every server gets SIGTERM, then SIGKILL after --stop-timeout.

Exit codes:

==  ===============================================================
0   stopped on request (or every server exited cleanly)
1   internal error (run again with --debug)
2   usage error
20  a server could not be started or supervised
21  invalid servers.toml
22  a port is already in use (the holding process is named)
23  unknown -d device (the binary's devices are listed)
24  host is not an IPv4 address
25  no server binary or matching build
26  one or more servers ended FATAL
130 interrupted before the servers were started
==  ===============================================================
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.markup import escape

from sdrpc_build.cli._common import err_console, out_console, run_main
from sdrpc_build.errors import UsageError
from sdrpc_build.paths import artifacts_dir, cache_dir
from sdrpc_build.supervise.cache import format_size, parse_size
from sdrpc_build.supervise.config import ServerOptions, load_config
from sdrpc_build.supervise.errors import ServerFatalError
from sdrpc_build.supervise.ports import ensure_port_free, pick_free_port
from sdrpc_build.supervise.procs import line_buffer_prefix, list_devices
from sdrpc_build.supervise.resolve import Environment, resolve_servers
from sdrpc_build.supervise.runner import Runner
from sdrpc_build.supervise.spec import RESTART_POLICIES, ServerSpec, is_loopback
from sdrpc_build.supervise.state import Policy
from sdrpc_build.supervise.supervisor import DeviceRow, Event, Supervisor

__all__ = ["main"]

PROG = "sdrpc-launch"
_PER_SERVER_FLAGS = (
    "binary",
    "backend",
    "build",
    "name",
    "host",
    "port",
    "device",
    "threads",
    "cache",
    "cache_max_size",
    "env",
    "visible_devices",
    "restart",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Start and supervise ggml rpc-servers.")
    sel = p.add_argument_group("which server binary")
    sel.add_argument("--binary", type=Path, help="an rpc-server binary to run")
    sel.add_argument("--backend", help="newest sdrpc build of this backend (cuda, vulkan, ...)")
    sel.add_argument(
        "--build", metavar="KEY", help="an sdrpc build: key, key prefix or manifest.json path"
    )
    sel.add_argument("--cache-dir", help="sdrpc's cache (artifact store; default: user cache)")
    srv = p.add_argument_group("server options (one server; see --config for several)")
    srv.add_argument("--name", help="server name (log file, cache dir); default rpc-PORT")
    srv.add_argument("--host", help="IPv4 address to bind (default 127.0.0.1)")
    srv.add_argument("-p", "--port", type=int, help="port (default 50052; 0 = a free port)")
    srv.add_argument("-d", "--device", help="devices to serve, e.g. Vulkan1,Vulkan2")
    srv.add_argument("-t", "--threads", type=int, help="CPU threads")
    srv.add_argument(
        "-c",
        "--cache",
        nargs="?",
        const="",
        metavar="DIR",
        help="enable rpc-server's tensor cache; one dir per server under DIR "
        "(default: sdrpc's cache)",
    )
    srv.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="prune least recently used cache files above SIZE (e.g. 20G); implies -c",
    )
    srv.add_argument("--env", action="append", metavar="KEY=VAL", help="extra environment")
    srv.add_argument(
        "--visible-devices",
        metavar="LIST",
        help="GPUs the backend may see (CUDA_VISIBLE_DEVICES and the like)",
    )
    srv.add_argument(
        "--restart",
        choices=RESTART_POLICIES,
        help="restart policy (default on-failure; a kill by signal is a failure)",
    )
    srv.add_argument(
        "--per-device",
        action="store_true",
        help="one server per device the binary offers (ports PORT, PORT+1, ...)",
    )
    p.add_argument("--config", type=Path, help="servers.toml with [[server]] tables")
    sup = p.add_argument_group("supervision")
    sup.add_argument(
        "--log-dir", type=Path, help="per-server log files (default: <sdrpc cache>/logs)"
    )
    sup.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds a start may take before it counts as failed (default 60)",
    )
    sup.add_argument(
        "--stop-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL on stop (default 5)",
    )
    sup.add_argument(
        "--max-failures",
        type=int,
        default=5,
        metavar="N",
        help="failures within --failure-window that make a server FATAL (5)",
    )
    sup.add_argument(
        "--failure-window",
        type=float,
        default=60.0,
        metavar="S",
        help="window for --max-failures in seconds (60)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="JSON events on stdout, one per line")
    out.add_argument("-q", "--quiet", action="store_true", help="do not echo server output")
    out.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _env_pairs(items: Optional[list[str]]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r} is not KEY=VALUE", hint="e.g. --env GGML_RPC_DEBUG=1")
        pairs.append((key, value))
    return tuple(pairs)


def _options(args: argparse.Namespace) -> list[ServerOptions]:
    if args.config is not None:
        given = [f for f in _PER_SERVER_FLAGS if getattr(args, f) is not None]
        if given or args.per_device:
            flag = "--" + (given[0] if given else "per_device").replace("_", "-")
            raise UsageError(
                f"{flag} cannot be combined with --config",
                hint="put per-server settings into the [[server]] tables",
            )
        return load_config(args.config)
    if args.binary is not None and args.build is not None:
        raise UsageError("give --binary or --build, not both")
    o = ServerOptions(
        name=args.name,
        binary=args.binary,
        backend=args.backend and args.backend.lower(),
        build=args.build,
        host=args.host or "127.0.0.1",
        port=50052 if args.port is None else args.port,
        devices=tuple(d.strip() for d in (args.device or "").split(",") if d.strip()),
        threads=args.threads,
        env=_env_pairs(args.env),
        visible_devices=args.visible_devices,
        restart=args.restart or "on-failure",
    )
    if not 0 <= o.port <= 65535:
        raise UsageError(f"port {o.port} is out of range", hint="use 1-65535, or 0 for a free one")
    if o.threads is not None and o.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.cache is not None or args.cache_max_size is not None:
        path = Path(args.cache).expanduser().resolve() if args.cache else None
        size = parse_size(args.cache_max_size) if args.cache_max_size is not None else None
        o = replace(o, cache=True, cache_path=path, cache_max_size=size)
    return [o]


def _resolve_host(host: str) -> Optional[str]:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None


class Reporter:
    """Human output (rich) or a JSON event stream."""

    def __init__(self, as_json: bool, quiet: bool, specs: Sequence[ServerSpec]) -> None:
        self.json = as_json
        self.quiet = quiet
        self.out: Console = out_console()
        self.err: Console = err_console()
        self.width = max((len(s.name) for s in specs), default=4)

    def say(self, text: str) -> None:
        self.out.print(f"[bold]{PROG}:[/bold] {text}")

    def warn(self, text: str) -> None:
        if self.json:
            self.emit({"event": "warning", "server": None, "message": text})
        self.err.print(f"[bold yellow]{PROG}: warning:[/bold yellow] {escape(text)}")

    def emit(self, obj: dict[str, Any]) -> None:
        obj = {"time": round(time.time(), 3), **obj}
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    def output(self, server: str, line: str) -> None:
        if self.quiet:
            return
        text = f"{server:<{self.width}} | {line}\n"
        stream = sys.stderr if self.json else sys.stdout
        stream.write(text)
        stream.flush()

    def event(self, e: Event) -> None:
        if self.json:
            data = dict(e.data)
            if "devices" in data and e.kind == "all-ready":
                data["device_map"] = [_row_json(r) for r in e.data["devices"]]  # type: ignore[attr-defined]
                del data["devices"]
            self.emit({"event": e.kind, "server": e.server, **data})
            return
        name = f"[cyan]{e.server}[/cyan]" if e.server else ""
        d = e.data
        if e.kind == "starting":
            verb = "restarting" if d.get("restart") else "starting"
            self.say(f"{name} {verb} on {d['endpoint']}")
        elif e.kind == "ready":
            devs = d.get("devices")
            devtext = ", ".join(map(str, devs)) if isinstance(devs, list) else f"{devs} device(s)"
            self.say(
                f"{name} [green]ready[/green] on {d['endpoint']} in {d['startup_s']} s "
                f"(protocol {d['protocol']}, {escape(devtext)})"
            )
        elif e.kind == "all-ready":
            self._all_ready(e)
        elif e.kind == "exited" and d.get("failure"):
            style = "red" if d.get("failure") else "dim"
            reason = f": {escape(str(d['reason']))}" if d.get("reason") else ""
            self.say(f"{name} [{style}]{d['how']}[/{style}]{reason}")
        elif e.kind == "restarting":
            self._tail(d.get("tail"))
            self.say(f"{name} restarting in {d['delay_s']} s (attempt {d['attempt']})")
        elif e.kind == "fatal":
            self.err.print(
                f"[bold red]{PROG}: {e.server} FATAL:[/bold red] {escape(str(d['reason']))}"
            )
            self._tail(d.get("tail"), stderr=True)
        elif e.kind == "stopping":
            self.say("stopping all servers")
        elif e.kind == "stopped":
            self.say(f"{name} stopped ({d['how']})")
        elif e.kind in ("busy", "idle"):
            self.say(f"{name} {'client connected' if e.kind == 'busy' else 'client gone'}")
        elif e.kind == "cache-pruned":
            self.say(
                f"{name} cache pruned: {d['removed']} file(s), "
                f"{format_size(int(str(d['freed'])))} freed, "
                f"{format_size(int(str(d['remaining'])))} kept "
                f"(limit {format_size(int(str(d['limit'])))})"
            )
        elif e.kind == "warning":
            self.err.print(
                f"[yellow]{PROG}: warning:[/yellow] {e.server}: {escape(str(d.get('message')))}"
            )

    def _tail(self, lines: object, stderr: bool = False) -> None:
        if not isinstance(lines, list) or not lines:
            return
        con = self.err if stderr else self.out
        for ln in lines:
            con.print(f"    [dim]|[/dim] {escape(str(ln))}")

    def _all_ready(self, e: Event) -> None:
        rows: list[DeviceRow] = list(e.data["devices"])  # type: ignore[call-overload]
        n = len({r.server for r in rows}) or "all"
        again = "" if e.data.get("first") else " again"
        self.say(f"[green]{n} server(s) ready{again}[/green]; client options:")
        self.out.print(f"    --rpc-servers {e.data['rpc_servers']}", highlight=False)
        for r in rows:
            mem = f"{format_size(r.free)} free of {format_size(r.total)}"
            self.out.print(
                f"    [bold]{r.rpc_name:<6}[/bold] {escape(r.server):<{self.width}}  "
                f"{r.endpoint:<21} {escape(r.name):<10} {escape(r.description)}  "
                f"({mem})"
            )
        if rows:
            self.out.print(
                f"    e.g. sd-cli --rpc-servers {e.data['rpc_servers']} "
                f"--backend {rows[0].rpc_name}",
                highlight=False,
            )


def _row_json(r: DeviceRow) -> dict[str, Any]:
    d = asdict(r)
    return {
        "name": r.rpc_name,
        "endpoint": d["endpoint"],
        "server": d["position"],
        "server_name": d["server"],
        "index": d["device_index"],
        "device": d["name"],
        "description": d["description"],
        "free": d["free"],
        "total": d["total"],
    }


def _security_warning(reporter: Reporter, spec: ServerSpec) -> None:
    if is_loopback(spec.host):
        return
    reporter.warn(
        f"{spec.name} listens on {spec.endpoint}: ggml RPC has NO authentication and NO "
        "encryption. Anyone who can reach this port can send tensors and graphs to the server "
        "(malformed requests crash it; past bugs allowed code execution). Use only on a trusted "
        "network, behind a firewall or a tunnel (ssh -L, WireGuard)."
    )


def _run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    root = cache_dir(env, args.cache_dir)
    early_warnings: list[str] = []
    world = Environment(
        env=env,
        artifacts_root=artifacts_dir(root),
        cache_root=root / "rpc-cache",
        resolve_host=_resolve_host,
        ensure_port_free=ensure_port_free,
        pick_free_port=pick_free_port,
        list_devices=list_devices,
        warn=early_warnings.append,
    )
    specs = resolve_servers(_options(args), world, per_device=args.per_device)
    reporter = Reporter(args.json, args.quiet, specs)
    for w in early_warnings:
        reporter.warn(w)
    for spec in specs:
        _security_warning(reporter, spec)
    policy = Policy(
        ready_timeout=args.ready_timeout,
        stop_timeout=args.stop_timeout,
        max_failures=args.max_failures,
        failure_window=args.failure_window,
    )
    sup = Supervisor(specs, policy)
    runner = Runner(
        sup,
        base_env=env,
        on_event=reporter.event,
        on_output=reporter.output,
        log_dir=args.log_dir or root / "logs",
        line_buffer=line_buffer_prefix(),
    )
    runner.run()
    fatal = sup.fatal
    if fatal:
        names = ", ".join(s.spec.name for s in fatal)
        reason = fatal[0].machine.fatal_reason or "too many failures"
        raise ServerFatalError(
            f"{len(fatal)} server(s) FATAL: {names} ({reason})",
            hint=f"see the logs in {args.log_dir or root / 'logs'}",
        )
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(PROG, lambda: _run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
