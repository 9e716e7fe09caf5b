"""The supervisor's decisions for many servers, without I/O.

The runner feeds it what happened (spawned, a line of output, a probe result, an exit, the time)
and executes the actions it returns (spawn, probe, signal, prune). Tests drive it with a fake
clock and never sleep.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Optional, Union

from sdrpc_build.launch.banner import BannerParser, classify_failure
from sdrpc_build.launch.readiness import Readiness
from sdrpc_build.launch.spec import ServerSpec, client_host
from sdrpc_build.launch.state import Policy, ServerMachine, State, describe_exit

__all__ = [
    "Action",
    "DeviceRow",
    "Event",
    "EventKind",
    "Kill",
    "Probe",
    "Prune",
    "Server",
    "Spawn",
    "Supervisor",
    "device_rows",
]

EventKind = Literal[
    "starting",
    "ready",
    "all-ready",
    "exited",
    "restarting",
    "fatal",
    "stopping",
    "stopped",
    "busy",
    "idle",
    "cache-pruned",
    "warning",
]
TAIL_LINES = 40
PRUNE_INTERVAL = 60.0


@dataclass(frozen=True)
class Event:
    kind: EventKind
    server: Optional[str]
    time: float
    data: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Spawn:
    server: str


@dataclass(frozen=True)
class Probe:
    server: str
    generation: int


@dataclass(frozen=True)
class Kill:
    server: str
    sig: int


@dataclass(frozen=True)
class Prune:
    server: str


Action = Union[Spawn, Probe, Kill, Prune, Event]


@dataclass(frozen=True)
class DeviceRow:
    """One remote device as sd-cli numbers it: ``RPC<index>``, one counter across servers."""

    index: int
    server: str
    position: int  # the server's place in --rpc-servers
    device_index: int  # the device's index on that server
    endpoint: str
    name: str  # ggml's device name from the banner ("CUDA0", "CPU"), "?" when not seen
    description: str
    total: int  # bytes
    free: int

    @property
    def rpc_name(self) -> str:
        return f"RPC{self.index}"


@dataclass
class Server:
    spec: ServerSpec
    machine: ServerMachine
    parser: BannerParser = field(default_factory=BannerParser)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    pid: Optional[int] = None
    readiness: Optional[Readiness] = None
    next_prune_at: Optional[float] = None


def device_rows(servers: Sequence[Server]) -> list[DeviceRow]:
    """Devices in ``--rpc-servers`` order as the probe saw them (before v3: one per server)."""
    rows: list[DeviceRow] = []
    for pos, s in enumerate(servers):
        r = s.readiness
        if r is None:
            continue
        remote = r.devices
        if r.protocol is not None and int(r.protocol.split(".")[0]) < 3:
            remote = remote[:1]
        banner = s.parser.banner.devices
        for i, d in enumerate(remote):
            b = banner[i] if i < len(banner) else None
            rows.append(
                DeviceRow(
                    len(rows),
                    s.spec.name,
                    pos,
                    d.index,
                    f"{client_host(s.spec.host)}:{s.spec.port}",
                    b.name if b else "?",
                    b.description if b else "",
                    d.total,
                    d.free,
                )
            )
    return rows


class Supervisor:
    """Decisions for a fixed, ordered set of servers."""

    def __init__(self, specs: Sequence[ServerSpec], policy: Policy) -> None:
        self.servers: dict[str, Server] = {}
        for spec in specs:
            p = replace(policy, restart=spec.restart)
            self.servers[spec.name] = Server(spec, ServerMachine(spec.name, p))
        self.stopping = False
        self._all_ready_sent = False

    # -- queries -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return all(s.machine.finished for s in self.servers.values())

    @property
    def fatal(self) -> list[Server]:
        return [s for s in self.servers.values() if s.machine.state is State.FATAL]

    def rpc_servers(self) -> str:
        return ",".join(f"{client_host(s.spec.host)}:{s.spec.port}" for s in self.servers.values())

    def next_deadline(self) -> Optional[float]:
        times: list[float] = []
        for s in self.servers.values():
            m = s.machine
            if m.state is State.BACKOFF and m.next_start_at is not None:
                times.append(m.next_start_at)
            if m.state is State.STARTING:
                if m.next_probe_at is not None and not m.probe_in_flight:
                    times.append(m.next_probe_at)
                if not m.killed:
                    times.append(m.started_at + m.policy.ready_timeout)
            if m.state is State.STOPPING and m.stop_deadline is not None and not m.killed:
                times.append(m.stop_deadline)
            if m.state is State.READY and s.next_prune_at is not None:
                times.append(s.next_prune_at)
        return min(times) if times else None

    # -- inputs --------------------------------------------------------------------------
    def begin(self, now: float) -> list[Action]:
        out: list[Action] = []
        for s in self.servers.values():
            out += self._start(s, now)
        return out

    def spawned(self, name: str, pid: int, now: float) -> list[Action]:
        self.servers[name].pid = pid
        return []

    def spawn_failed(self, name: str, error: str, now: float) -> list[Action]:
        s = self.servers[name]
        s.tail.append(error)
        s.machine.mark_killing(error, permanent=True)
        return self._after_exit(s, 127, now)

    def line(self, name: str, text: str, now: float) -> list[Action]:
        s = self.servers[name]
        s.tail.append(text)
        kind = s.parser.feed(text)
        m = s.machine
        if kind == "transport" and m.state is State.STARTING and not m.probe_in_flight:
            m.next_probe_at = now  # the socket is about to listen: probe right away
        if kind in ("client-connected", "client-closed"):
            # Before READY these are our own probes; a close without an accept is the tail
            # of the last probe.
            busy = kind == "client-connected"
            if m.state is not State.READY or busy == m.busy:
                return []
            m.busy = busy
            out: list[Action] = [Event("busy" if m.busy else "idle", name, now)]
            if not m.busy and s.spec.cache_max_size is not None:
                out.append(Prune(name))
            return out
        return []

    def probed(self, name: str, generation: int, result: Readiness, now: float) -> list[Action]:
        s = self.servers[name]
        m = s.machine
        if generation != m.generation or m.state is not State.STARTING:
            return []  # stale: an older process, or already stopping
        m.probe_in_flight = False
        if result.status == "retry":
            m.next_probe_at = now + m.policy.probe_interval
            return []
        if result.status == "fail":
            m.mark_killing(result.message or "readiness probe failed", permanent=True)
            return [Kill(name, signal.SIGKILL)]
        s.readiness = result
        m.mark_ready(now)
        if s.spec.cache_max_size is not None:
            s.next_prune_at = now + PRUNE_INTERVAL
        banner = s.parser.banner
        data: dict[str, object] = {
            "endpoint": s.spec.endpoint,
            "pid": s.pid,
            "protocol": result.protocol,
            "version": banner.version_str,
            "max_name": result.max_name,
            "devices": [d.name for d in banner.devices] or len(result.devices),
            "startup_s": round(now - m.started_at, 3),
            "restarts": m.restarts,
        }
        out: list[Action] = [Event("ready", name, now, data)]
        for p in result.problems:
            out.append(Event("warning", name, now, {"message": p}))
        if s.spec.protocol and result.protocol and result.protocol != s.spec.protocol:
            out.append(
                Event(
                    "warning",
                    name,
                    now,
                    {
                        "message": f"server reports protocol {result.protocol}, "
                        f"its build manifest says {s.spec.protocol}"
                    },
                )
            )
        live = [x for x in self.servers.values() if x.machine.state is not State.FATAL]
        if live and all(x.machine.state is State.READY for x in live):
            out.append(self._all_ready(now))
        return out

    def exited(self, name: str, returncode: int, now: float) -> list[Action]:
        return self._after_exit(self.servers[name], returncode, now)

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for s in self.servers.values():
            m = s.machine
            if m.state is State.BACKOFF and m.next_start_at is not None and now >= m.next_start_at:
                out += self._start(s, now)
            elif m.state is State.STARTING:
                if not m.killed and now >= m.started_at + m.policy.ready_timeout:
                    t = m.policy.ready_timeout
                    m.mark_killing(f"not ready after {t:g} s (no answer to HELLO)")
                    out.append(Kill(s.spec.name, signal.SIGKILL))
                elif (
                    m.next_probe_at is not None and not m.probe_in_flight and now >= m.next_probe_at
                ):
                    m.probe_in_flight = True
                    m.next_probe_at = None
                    out.append(Probe(s.spec.name, m.generation))
            elif m.state is State.STOPPING and not m.killed and m.stop_deadline is not None:
                if now >= m.stop_deadline:
                    m.killed = True
                    out.append(Kill(s.spec.name, signal.SIGKILL))
            elif m.state is State.READY and s.next_prune_at is not None and now >= s.next_prune_at:
                s.next_prune_at = now + PRUNE_INTERVAL
                out.append(Prune(s.spec.name))
        return out

    def stop(self, now: float) -> list[Action]:
        """SIGINT/SIGTERM: SIGTERM every server; SIGKILL after the stop timeout."""
        out: list[Action] = []
        if not self.stopping:
            self.stopping = True
            out.append(Event("stopping", None, now))
        for s in self.servers.values():
            if s.machine.stop(now) and s.pid is not None:
                out.append(Kill(s.spec.name, signal.SIGTERM))
            elif s.machine.state is State.STOPPING and s.pid is None:
                out.append(Kill(s.spec.name, signal.SIGKILL))
        return out

    # -- internals -----------------------------------------------------------------------
    def _start(self, s: Server, now: float) -> list[Action]:
        restart = s.machine.generation > 0
        s.machine.start(now)
        s.pid = None
        s.readiness = None
        s.parser = BannerParser()
        s.next_prune_at = None
        out: list[Action] = []
        if s.spec.cache_max_size is not None:
            out.append(Prune(s.spec.name))
        data = {"endpoint": s.spec.endpoint, "attempt": s.machine.restarts + 1, "restart": restart}
        out += [Event("starting", s.spec.name, now, data), Spawn(s.spec.name)]
        return out

    def _all_ready(self, now: float) -> Event:
        first = not self._all_ready_sent
        self._all_ready_sent = True
        live = [s for s in self.servers.values() if s.machine.state is State.READY]
        rows = device_rows(live)
        return Event(
            "all-ready",
            None,
            now,
            {
                "rpc_servers": ",".join(f"{client_host(s.spec.host)}:{s.spec.port}" for s in live),
                "devices": rows,
                "first": first,
            },
        )

    def _after_exit(self, s: Server, returncode: int, now: float) -> list[Action]:
        m = s.machine
        name = s.spec.name
        tail = list(s.tail)
        was = m.state
        permanent, reason = classify_failure(tail) if was is State.STARTING else (False, None)
        info = m.exited(now, returncode, reason, permanent)
        s.pid = None
        s.readiness = None
        out: list[Action] = [
            Event(
                "exited",
                name,
                now,
                {
                    "returncode": returncode,
                    "how": describe_exit(returncode),
                    "was_ready": info.was_ready,
                    "failure": info.failure,
                    "reason": info.reason,
                },
            )
        ]
        if m.state is State.BACKOFF and m.next_start_at is not None:
            out.append(
                Event(
                    "restarting",
                    name,
                    now,
                    {
                        "delay_s": round(m.next_start_at - now, 3),
                        "attempt": m.restarts + 2,
                        "tail": tail[-10:] if info.failure and not info.was_ready else [],
                    },
                )
            )
        elif m.state is State.FATAL:
            out.append(Event("fatal", name, now, {"reason": m.fatal_reason, "tail": tail[-15:]}))
        elif m.state is State.EXITED:
            out.append(Event("stopped", name, now, {"how": describe_exit(returncode)}))
        if not self.stopping:
            live = [x for x in self.servers.values() if x.machine.state is not State.FATAL]
            if (
                m.state is State.FATAL
                and live
                and all(x.machine.state is State.READY for x in live)
            ):
                out.append(self._all_ready(now))
        return out
