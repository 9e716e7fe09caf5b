"""sdrpc-launch's console output: human lines (rich) or a JSON event stream.

Shared by the foreground supervisor, the detached one (:class:`ChildReporter`: its log, plus
its start report), ``--detach`` (which replays the detached supervisor's start events) and
``status`` (the device map).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.markup import escape

from sdrpc_build.cli._common import err_console, out_console
from sdrpc_build.launch.child import DetachedChild
from sdrpc_build.launch.lines import tail_line
from sdrpc_build.launch.spec import ServerSpec, is_loopback
from sdrpc_build.launch.supervisor import DeviceRow, Event
from sdrpc_build.units import format_size

__all__ = [
    "PROG",
    "ChildReporter",
    "Reporter",
    "print_device_map",
    "row_json",
    "security_warning",
]

PROG = "sdrpc-launch"


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
                data["device_map"] = [row_json(r) for r in e.data["devices"]]  # type: ignore[attr-defined]
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
            con.print(f"    [dim]|[/dim] {escape(tail_line(str(ln)))}")

    def _all_ready(self, e: Event) -> None:
        rows: list[DeviceRow] = list(e.data["devices"])  # type: ignore[call-overload]
        n = len({r.server for r in rows}) or "all"
        again = "" if e.data.get("first") else " again"
        self.say(f"[green]{n} server(s) ready{again}[/green]; client options:")
        print_device_map(self.out, rows, str(e.data["rpc_servers"]), self.width)


class ChildReporter(Reporter):
    """The supervisor log's human output, plus the child's bookkeeping (never echoes lines)."""

    def __init__(self, child: DetachedChild, as_json: bool, specs: Sequence[ServerSpec]) -> None:
        super().__init__(as_json, True, specs)
        self.child = child

    def warn(self, text: str) -> None:
        super().warn(text)
        self.child.on_warning(text)

    def event(self, e: Event) -> None:
        super().event(e)
        self.child.on_event(e)


def print_device_map(out: Console, rows: Sequence[DeviceRow], rpc_servers: str, width: int) -> None:
    """``--rpc-servers ...``, one line per device (RPC0, RPC1, ...) and an sd-cli example."""
    out.print(f"    --rpc-servers {rpc_servers}", highlight=False)
    for r in rows:
        mem = f"{format_size(r.free)} free of {format_size(r.total)}"
        out.print(
            f"    [bold]{r.rpc_name:<6}[/bold] {escape(r.server):<{width}}  "
            f"{r.endpoint:<21} {escape(r.name):<10} {escape(r.description)}  "
            f"({mem})"
        )
    if rows:
        out.print(
            f"    e.g. sd-cli --rpc-servers {rpc_servers} --backend {rows[0].rpc_name}",
            highlight=False,
        )


def row_json(r: DeviceRow) -> dict[str, Any]:
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


def security_warning(reporter: Reporter, spec: ServerSpec) -> None:
    if is_loopback(spec.host):
        return
    reporter.warn(
        f"{spec.name} listens on {spec.endpoint}: ggml RPC has NO authentication and NO "
        "encryption. Anyone who can reach this port can send tensors and graphs to the server "
        "(malformed requests crash it; past bugs allowed code execution). Use only on a trusted "
        "network, behind a firewall or a tunnel (ssh -L, WireGuard)."
    )
