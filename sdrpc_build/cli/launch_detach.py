"""``sdrpc-launch --detach``: start the supervisor in the background, return once all are ready.

The supervisor is ``sdrpc-launch`` itself (same arguments plus a hidden ``--_ready-fd``) in
its own session, stdin from /dev/null, its output appended to ``<log dir>/sdrpc-launch-NAME.log``.
It reports its start events through a pipe (see ``launch_child``); this side prints them, and
on success the ``--rpc-servers`` string and the device map. On any failure (a server exits
before it is ready, a bad option, the deadline, Ctrl-C/SIGTERM here) the supervisor is
stopped and waited for, its servers are checked gone, and its state file removed: nothing
half-started stays behind.

One instance per name (``--instance``, default "default"): a lock serialises starts, and a
state file naming a live supervisor refuses the start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Optional

from filelock import FileLock, Timeout
from rich.markup import escape

from sdrpc_build.cli._common import err_console, out_console
from sdrpc_build.cli.launch_child import event_from_wire
from sdrpc_build.cli.launch_report import PROG, Reporter, row_json, tail_line
from sdrpc_build.errors import (
    DetachedStartError,
    InstanceRunningError,
    SdrpcError,
    UsageError,
)
from sdrpc_build.launch.identity import (
    LIVE,
    ProcessIdentity,
    ProcessTable,
    signal_verified,
    system_table,
)
from sdrpc_build.launch.instance import (
    DEFAULT_INSTANCE,
    InstanceState,
    StateFileError,
    check_instance_name,
    read_state,
    remove_state,
    state_path,
    supervisor_log,
)
from sdrpc_build.launch.private import FILE_MODE, cannot_write, private_dir, private_fd
from sdrpc_build.launch.procs import stop_process
from sdrpc_build.launch.state import Policy, describe_exit
from sdrpc_build.launch.supervisor import DeviceRow, Event
from sdrpc_build.paths import run_dir

__all__ = ["DetachedStartError", "instance_flag", "start_detached"]

#: on top of --ready-timeout + --stop-timeout: resolving builds and devices, Python start-up
SLACK = 90.0
LOG_TAIL = 20
HEADER = "=== "  # starts the supervisor log's line for each start


@dataclass
class _Start:
    """What the waiting side learned from the supervisor."""

    ready: Optional[Event] = None
    error: Optional[dict[str, Any]] = None
    timed_out: bool = False
    server_pids: list[ProcessIdentity] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def instance_flag(instance: str) -> str:
    return "" if instance == DEFAULT_INSTANCE else f" --instance {instance}"


def start_detached(
    args: argparse.Namespace,
    argv: list[str],
    env: Mapping[str, str],
    root: Path,
    log_dir: Path,
    policy: Policy,
) -> int:
    if sys.platform == "win32":
        raise UsageError(
            "--detach is not supported on Windows",
            hint="run sdrpc-launch in its own console window (or as a service)",
        )
    instance = check_instance_name(args.instance or DEFAULT_INSTANCE)
    rdir = run_dir(root)
    try:
        private_dir(rdir, tighten=True)
    except OSError as exc:
        raise cannot_write(rdir, exc, "give --cache-dir a directory you can write") from None
    path = state_path(rdir, instance)
    table = system_table()
    lock = FileLock(str(rdir / f"{instance}.lock"), mode=FILE_MODE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InstanceRunningError(
            f"instance {instance!r} is being started by another sdrpc-launch",
            hint="wait for it, or start another with --instance NAME",
        ) from None
    try:
        _refuse_if_running(path, table, instance)
        if table.method == "pid":
            _warn("this system offers no process start times: instances are tracked by PID only")
        log = supervisor_log(log_dir, instance)
        proc, rfd = _spawn(argv, env, log, instance)
        with _abort_on_failure(proc, path, table, policy.stop_timeout) as start:
            deadline = time.monotonic() + policy.ready_timeout + policy.stop_timeout + SLACK
            _wait(proc, rfd, deadline, start, table, args.json)
            if start.ready is None:
                raise _failure(start, proc, log, policy, args.json)
        _report_started(start.ready, path, instance, proc.pid, log, args.json, start.warnings)
        return 0
    finally:
        lock.release()


def _warn(text: str) -> None:
    err_console().print(f"[bold yellow]{PROG}: warning:[/bold yellow] {escape(text)}")


def _refuse_if_running(path: Path, table: ProcessTable, instance: str) -> None:
    try:
        state = read_state(path)
    except StateFileError as exc:
        _warn(f"removing an unreadable state file: {exc}")
        path.unlink(missing_ok=True)
        return
    if state is None:
        return
    flag = instance_flag(instance)
    verdict = table.verify(state.supervisor)
    if verdict in LIVE:
        what = state.rpc_servers or "still starting"
        raise InstanceRunningError(
            f"instance {instance!r} is already running "
            f"(supervisor pid {state.supervisor.pid}: {what})",
            hint=f"'sdrpc-launch stop{flag}' ends it; --instance NAME starts another one",
        )
    orphans = [s for s in state.servers if s.process and table.verify(s.process) in LIVE]
    if orphans:
        pids = ", ".join(str(s.process.pid) for s in orphans if s.process)
        raise InstanceRunningError(
            f"servers of instance {instance!r} still run without their supervisor (pid {pids})",
            hint=f"'sdrpc-launch stop{flag}' ends them",
        )
    remove_state(path, owner_pid=state.supervisor.pid)
    gone = "is gone" if verdict == "dead" else "now names another process"
    _warn(
        f"removed a stale state file of {instance!r} (supervisor pid {state.supervisor.pid} {gone})"
    )


def _spawn(
    argv: list[str], env: Mapping[str, str], log: Path, instance: str
) -> tuple[subprocess.Popen[bytes], int]:
    try:
        private_dir(log.parent)
        log_fd = private_fd(log)
    except OSError as exc:
        raise cannot_write(
            log, exc, "give --log-dir (or --cache-dir) a directory you can write"
        ) from None
    rfd, wfd = os.pipe()
    try:
        with os.fdopen(log_fd, "ab") as out:
            stamp = datetime.now().isoformat(timespec="seconds")
            out.write(f"{HEADER}{stamp} sdrpc-launch --detach (instance {instance}) ===\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "sdrpc_build.cli.launch", *argv, "--_ready-fd", str(wfd)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(wfd,),
                start_new_session=True,
                env={**env, "PYTHONUNBUFFERED": "1"},
            )
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)
    return proc, rfd


def _raise_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _abort_on_failure(
    proc: subprocess.Popen[bytes], path: Path, table: ProcessTable, stop_timeout: float
) -> Iterator[_Start]:
    """Treat SIGTERM/SIGHUP like Ctrl-C while waiting; on any error leave nothing behind."""
    start = _Start()
    saved = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    saved[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    try:
        yield start
    except BaseException:
        # the clean-up is bounded: another Ctrl-C must not cut it short and leave servers
        for s in saved:
            signal.signal(s, signal.SIG_IGN)
        _abort(proc, path, table, stop_timeout, start.server_pids, polite=start.error is not None)
        raise
    finally:
        for s, handler in saved.items():
            if handler is not None:
                signal.signal(s, handler)


def _abort(
    proc: subprocess.Popen[bytes],
    path: Path,
    table: ProcessTable,
    stop_timeout: float,
    servers: list[ProcessIdentity],
    polite: bool,
) -> None:
    """Stop the supervisor (it stops its servers), make sure they are gone, drop the file."""
    if polite:  # it is already stopping by itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=stop_timeout + 10)
    stop_process(proc, signal.SIGTERM, grace=stop_timeout + 10, group=True)
    deadline = time.monotonic() + 5.0
    left = [s for s in servers if table.verify(s) in LIVE]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [s for s in left if table.verify(s) in LIVE]
    for s in left:
        signal_verified(table, s, signal.SIGKILL)
    remove_state(path, owner_pid=proc.pid)


def _wait(
    proc: subprocess.Popen[bytes],
    rfd: int,
    deadline: float,
    start: _Start,
    table: ProcessTable,
    as_json: bool,
) -> None:
    """Read the supervisor's reports until all-ready, EOF (it failed) or the deadline."""
    reporter = Reporter(as_json=False, quiet=True, specs=[])
    buf = b""
    with selectors.DefaultSelector() as sel, os.fdopen(rfd, "rb", buffering=0) as pipe:
        sel.register(pipe, selectors.EVENT_READ)
        while start.ready is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                start.timed_out = True
                return
            if not sel.select(min(remaining, 1.0)):
                continue
            chunk = pipe.read(65536)
            if not chunk:
                return  # the supervisor closed it: it failed (or was stopped)
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                _handle(line, start, table, reporter, as_json)


def _handle(line: bytes, start: _Start, table: ProcessTable, rep: Reporter, as_json: bool) -> None:
    try:
        obj = json.loads(line)
        if obj.get("kind") == "error":
            start.error = obj
            return
        e = event_from_wire(obj)
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # not ours: ignore
    pid = e.data.get("pid")
    if e.kind == "ready" and isinstance(pid, int):
        start.server_pids.append(table.identify(pid))
    if e.kind == "warning":
        start.warnings.append(str(e.data.get("message")))
        if e.server is None:
            rep.warn(str(e.data.get("message")))
            return
    if e.kind == "all-ready":
        start.ready = e
    elif not as_json and e.kind not in ("fatal", "restarting"):
        rep.event(e)  # (a failure's tail comes once, with the error)


def _log_tail(log: Path) -> Optional[str]:
    """The last lines this start wrote to the supervisor log (after its header)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    starts = [i for i, ln in enumerate(lines) if ln.startswith(HEADER)]
    lines = lines[starts[-1] + 1 if starts else 0 :][-LOG_TAIL:]
    return "\n".join(f"    | {tail_line(ln)}" for ln in lines) or None


def _failure(
    start: _Start, proc: subprocess.Popen[bytes], log: Path, policy: Policy, as_json: bool
) -> SdrpcError:
    hint = f"the supervisor's log: {log}"
    if start.error is not None:
        e = start.error
        first = f"{e['hint']}; " if e.get("hint") else ""
        err = DetachedStartError(
            str(e.get("message")), first + hint, e.get("details"), int(e.get("exit_code") or 20)
        )
    elif start.timed_out:
        limit = policy.ready_timeout + policy.stop_timeout + SLACK
        err = DetachedStartError(
            f"the servers were not all ready within {limit:g} s", hint, _log_tail(log), 20
        )
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=policy.stop_timeout + 10)
        rc = proc.returncode
        what = (
            "was stopped"
            if rc == 0
            else f"ended ({describe_exit(rc) if rc is not None else 'still running'})"
        )
        err = DetachedStartError(
            f"the detached supervisor {what} before the servers were ready",
            hint,
            _log_tail(log),
            20,
        )
    if as_json:
        obj = {
            "ok": False,
            "error": err.message,
            "exit_code": err.exit_code,
            "supervisor_pid": proc.pid,
            "supervisor_log": str(log),
        }
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    return err


def _report_started(
    ready: Event,
    path: Path,
    instance: str,
    pid: int,
    log: Path,
    as_json: bool,
    warnings: list[str],
) -> None:
    try:
        state: Optional[InstanceState] = read_state(path)
    except StateFileError:
        state = None
    rows: list[DeviceRow] = list(ready.data["devices"])  # type: ignore[call-overload]
    rpc = str(ready.data["rpc_servers"])
    if as_json:
        obj = {
            "ok": True,
            "instance": instance,
            "supervisor_pid": pid,
            "state_file": str(path),
            "supervisor_log": str(log),
            "rpc_servers": rpc,
            "device_map": [row_json(r) for r in rows],
            "servers": [
                {
                    "name": s.name,
                    "endpoint": s.endpoint,
                    "pid": s.process.pid if s.process else None,
                    "log": str(s.log),
                }
                for s in (state.servers if state else ())
            ],
            "warnings": warnings,
        }
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
        return
    rep = Reporter(as_json=False, quiet=True, specs=[])
    rep.width = max((len(r.server) for r in rows), default=4)
    rep.event(ready)
    flag = instance_flag(instance)
    out = out_console()
    rep.say(f"running in the background: instance {instance!r}, supervisor pid {pid}")
    out.print(f"    logs:   {log.parent} (supervisor: {log.name})", highlight=False)
    out.print(f"    status: sdrpc-launch status{flag}", highlight=False)
    out.print(f"    stop:   sdrpc-launch stop{flag}", highlight=False)
