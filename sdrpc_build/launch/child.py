"""The detached supervisor's side of ``sdrpc-launch --detach`` (the waiting side: ``detach``).

``--detach`` starts ``sdrpc-launch`` again in its own session with a hidden ``--_ready-fd N``:
that process is the supervisor. Until its servers are all READY it sends its events (JSON
lines, :func:`event_to_wire`) through fd N to the waiting ``--detach`` process, then closes it.
It keeps the instance's state file current (written before each report, so a reader never
sees an older file than the report) and removes it when it ends.

Before the first "all ready", any server exit is a failure of the whole start: the supervisor
stops every server and exits non-zero with that server's last output lines, so a detached
start is either complete or leaves nothing behind.

With ``start="settled"`` (sdrpc's SSH tunnels: one host down must not stop the others) the start
ends instead once every server is ready or has failed at least once: the parent gets an
"all-ready" of the ready ones whose ``failed`` lists the others, which go on restarting under the
restart policy. Only when every server has failed for good (FATAL) does the start fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal, Optional

from sdrpc_build.errors import LaunchError, SdrpcError
from sdrpc_build.launch.identity import ProcessTable, system_table
from sdrpc_build.launch.instance import (
    InstanceState,
    ServerRecord,
    remove_state,
    state_path,
    supervisor_log,
    write_state,
)
from sdrpc_build.launch.lines import tail_line
from sdrpc_build.launch.runner import Runner
from sdrpc_build.launch.spec import client_host
from sdrpc_build.launch.state import State
from sdrpc_build.launch.supervisor import DeviceRow, Event, Supervisor, device_rows

__all__ = ["DetachedChild", "StartRule", "event_from_wire", "event_to_wire"]

TAIL = 15
#: when a detached start is over: every server ready ("all-ready"), or every server ready or
#: failed at least once ("settled"; the failed ones keep restarting)
StartRule = Literal["all-ready", "settled"]


def event_to_wire(e: Event) -> dict[str, Any]:
    data = dict(e.data)
    if e.kind == "all-ready":
        data["devices"] = [asdict(r) for r in e.data["devices"]]  # type: ignore[attr-defined]
    return {"kind": e.kind, "server": e.server, "time": e.time, "data": data}


def event_from_wire(obj: dict[str, Any]) -> Event:
    data = dict(obj.get("data") or {})
    if obj["kind"] == "all-ready":
        data["devices"] = [DeviceRow(**r) for r in data.get("devices") or []]
    return Event(obj["kind"], obj.get("server"), float(obj.get("time") or 0.0), data)


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class DetachedChild:
    """State file + start report of one detached supervisor."""

    def __init__(
        self,
        pipe: Optional[IO[str]],
        path: Path,
        state: InstanceState,
        table: ProcessTable,
        clock: Callable[[], float] = time.time,
        warn: Callable[[str], None] = lambda text: None,
        start: StartRule = "all-ready",
    ) -> None:
        self._pipe = pipe
        self.path = path
        self.state = state
        self.table = table
        self.clock = clock
        self.warn = warn  # the supervisor's own problems (its log)
        self.sup: Optional[Supervisor] = None
        self.runner: Optional[Runner] = None
        self.started = False  # the parent got "all-ready"
        self.failure: Optional[LaunchError] = None
        self.start_rule: StartRule = start
        self._settled: dict[str, bool] = {}  # "settled" start: server -> failed (not yet ready)
        self._save_warned = False

    @classmethod
    def begin(
        cls,
        fd: int,
        run_dir: Path,
        instance: str,
        log_dir: Path,
        stop_timeout: float,
        warn: Callable[[str], None],
        start: StartRule = "all-ready",
    ) -> DetachedChild:
        pipe = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        table = system_table()
        state = InstanceState(
            instance=instance,
            supervisor=table.identify(os.getpid()),
            started_at=time.time(),
            log_dir=log_dir,
            supervisor_log=supervisor_log(log_dir, instance),
            stop_timeout=stop_timeout,
        )
        return cls(pipe, state_path(run_dir, instance), state, table, warn=warn, start=start)

    # -- lifecycle --------------------------------------------------------------------------
    def run(self, body: Callable[[], int]) -> int:
        """Run the supervisor; report an error to the parent; always remove the state file.

        Until the runner installs its own handlers, SIGTERM (``sdrpc-launch stop`` during the
        start) unwinds like Ctrl-C, so the state file is removed.
        """
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            try:
                write_state(self.path, self.state)
            except OSError as exc:
                raise LaunchError(
                    f"cannot write the state file {self.path}: {exc.strerror or exc}",
                    hint="check the permissions of sdrpc's cache (--cache-dir)",
                ) from None
            return body()
        except SdrpcError as exc:
            self._send_error(exc.message, exc.hint, exc.details, exc.exit_code)
            raise
        except KeyboardInterrupt:
            self._send_error("interrupted", None, None, 130)
            raise
        except Exception as exc:
            self._send_error(f"internal error: {type(exc).__name__}: {exc}", None, None, 1)
            raise
        finally:
            self._close()
            remove_state(self.path, owner_pid=self.state.supervisor.pid)

    def attach(self, sup: Supervisor, runner: Runner) -> None:
        self.sup, self.runner = sup, runner
        for s in sup.servers.values():
            log = self.state.log_dir / f"{s.spec.name}.log"  # the runner's file
            self.state = self.state.with_server(ServerRecord(s.spec.name, s.spec.endpoint, log))
        self._save()

    def raise_if_start_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

    # -- events -----------------------------------------------------------------------------
    def on_event(self, e: Event) -> None:
        self._apply(e)
        if self.started:
            return
        if e.kind == "all-ready" and self.failure is not None:
            return  # the servers left are ready, but the start failed: not for the parent
        self._send(event_to_wire(e))
        if self.start_rule == "settled":
            self._settle(e)
        elif e.kind == "exited" and e.data.get("failure") and self.failure is None:
            self._fail(e)
        elif e.kind == "all-ready" and self.failure is None:
            self._started()

    def _settle(self, e: Event) -> None:
        """The "settled" start rule: done once each server is ready or has failed once."""
        if e.kind == "all-ready":
            self._started()
            return
        if e.server is None or self.sup is None:
            return
        if e.kind == "ready":
            self._settled[e.server] = False
        elif e.kind == "fatal" or (e.kind == "exited" and e.data.get("failure")):
            self._settled[e.server] = True
        if set(self._settled) != set(self.sup.servers):
            return
        servers = list(self.sup.servers.values())
        if all(s.machine.state is State.FATAL for s in servers):
            if self.failure is None:
                self._fail(e)
            return
        ready = [s for s in servers if s.machine.state is State.READY]
        settled = Event(
            "all-ready",
            None,
            e.time,
            {
                "rpc_servers": ",".join(f"{client_host(s.spec.host)}:{s.spec.port}" for s in ready),
                "devices": device_rows(ready),
                "first": True,
                "failed": [s.spec.name for s in servers if self._settled[s.spec.name]],
            },
        )
        self._apply(settled)
        self._send(event_to_wire(settled))
        self._started()

    def _started(self) -> None:
        self.started = True
        self._close()

    def on_warning(self, text: str) -> None:
        if not self.started:
            self._send(event_to_wire(Event("warning", None, self.clock(), {"message": text})))

    def _apply(self, e: Event) -> None:
        d = e.data
        if e.kind == "all-ready":
            rows: tuple[DeviceRow, ...] = tuple(d["devices"])  # type: ignore[arg-type]
            phase = "running" if self.failure is None else self.state.phase
            self.state = replace(
                self.state, phase=phase, rpc_servers=str(d["rpc_servers"]), devices=rows
            )
            self._save()
            return
        rec = self.state.server(e.server) if e.server else None
        if rec is None:
            return
        if e.kind == "ready":
            pid = d.get("pid")
            rec = replace(
                rec,
                phase="ready",
                process=self.table.identify(pid) if isinstance(pid, int) else None,
                ready_at=self.clock(),
                log_offset=_size(rec.log),  # the log is line-buffered, this line included
                restarts=int(str(d.get("restarts") or 0)),
            )
        elif e.kind == "exited":
            rec = replace(rec, phase="restarting", process=None)
        elif e.kind == "fatal":
            rec = replace(rec, phase="fatal", process=None)
        elif e.kind == "stopped":
            rec = replace(rec, phase="stopped", process=None)
        else:
            return
        self.state = self.state.with_server(rec)
        self._save()

    def _fail(self, e: Event) -> None:
        name = str(e.server)
        tail: list[str] = []
        if self.sup is not None and name in self.sup.servers:
            tail = list(self.sup.servers[name].tail)[-TAIL:]
        reason = e.data.get("reason")
        rec = self.state.server(name)
        self.failure = LaunchError(
            f"{name} ended before it was ready ({e.data.get('how')})"
            + (f": {reason}" if reason else ""),
            hint="nothing was left running"
            + (f"; the server's log: {rec.log}" if rec is not None else ""),
            details="\n".join(f"    | {tail_line(ln)}" for ln in tail) or None,
        )
        if self.runner is not None:
            self.runner.request_stop()

    # -- plumbing ---------------------------------------------------------------------------
    def _save(self) -> None:
        try:
            write_state(self.path, self.state)
        except OSError as exc:  # keep supervising; status will be stale
            if not self._save_warned:
                self._save_warned = True
                self.warn(f"cannot update {self.path}: {exc}")

    def _send(self, obj: dict[str, Any]) -> None:
        if self._pipe is None:
            return
        try:
            self._pipe.write(json.dumps(obj, default=str) + "\n")
            self._pipe.flush()
        except (OSError, ValueError):  # the parent is gone: carry on detached
            self._close()

    def _send_error(
        self, message: str, hint: Optional[str], details: Optional[str], exit_code: int
    ) -> None:
        self._send(
            {
                "kind": "error",
                "message": message,
                "hint": hint,
                "details": details,
                "exit_code": exit_code,
            }
        )

    def _close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
