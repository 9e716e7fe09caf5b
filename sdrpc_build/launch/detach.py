"""``--detach``, the waiting side: start the supervisor in the background, return once all ready.

The supervisor is the command the caller gives (``sdrpc-launch`` itself, told the fd of its
report pipe) in its own session, stdin from /dev/null, its output appended to
``<log dir>/sdrpc-launch-NAME.log``. It reports its start events through the pipe (see
``child``); :func:`start_detached` hands them to the caller as they come. On any failure (a
server exits before it is ready, a bad option, the deadline, Ctrl-C/SIGTERM/SIGHUP here) the
supervisor is stopped and waited for, its servers are checked gone, and its state file
removed: nothing half-started stays behind.

One instance per name: a lock serialises starts, and a state file naming a live supervisor
refuses the start.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Optional

from filelock import FileLock, Timeout

from sdrpc_build.errors import DetachedStartError, InstanceRunningError, UsageError
from sdrpc_build.launch.child import event_from_wire
from sdrpc_build.launch.identity import (
    LIVE,
    ProcessIdentity,
    ProcessTable,
    signal_verified,
    system_table,
)
from sdrpc_build.launch.instance import (
    InstanceState,
    StateFileError,
    check_instance_name,
    instance_flag,
    read_state,
    remove_state,
    state_path,
    supervisor_log,
)
from sdrpc_build.launch.lines import tail_line
from sdrpc_build.launch.private import FILE_MODE, cannot_write, private_dir, private_fd
from sdrpc_build.launch.procs import stop_process
from sdrpc_build.launch.settings import Policy
from sdrpc_build.launch.state import describe_exit
from sdrpc_build.launch.supervisor import Event

__all__ = [
    "HEADER",
    "SLACK",
    "DetachRequest",
    "DetachedStartError",
    "Started",
    "start_detached",
]

#: on top of --ready-timeout + --stop-timeout: resolving builds and devices, Python start-up
SLACK = 90.0
LOG_TAIL = 20
HEADER = "=== "  # starts the supervisor log's line for each start


@dataclass(frozen=True)
class DetachRequest:
    """What to start: ``command(fd)`` is the supervisor's argv, reporting on pipe ``fd``."""

    instance: str
    command: Callable[[int], Sequence[str]]
    env: Mapping[str, str]
    run_dir: Path
    log_dir: Path
    policy: Policy

    @property
    def deadline_s(self) -> float:
        return self.policy.ready_timeout + self.policy.stop_timeout + SLACK


@dataclass(frozen=True)
class Started:
    """A detached instance whose servers are all ready."""

    instance: str
    ready: Event  # the "all-ready" event (rpc_servers, devices)
    state: Optional[InstanceState]  # its state file then (None: unreadable)
    state_file: Path
    supervisor_pid: int
    log: Path
    warnings: tuple[str, ...]


@dataclass
class _Start:
    """What the waiting side learned from the supervisor."""

    ready: Optional[Event] = None
    error: Optional[dict[str, Any]] = None
    timed_out: bool = False
    server_pids: list[ProcessIdentity] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def start_detached(
    req: DetachRequest,
    *,
    on_event: Callable[[Event], None],
    warn: Callable[[str], None],
) -> Started:
    """Start the supervisor, pass its start events (all but "all-ready") to ``on_event`` and
    its general warnings to ``warn``; return once all are ready, else raise (nothing left)."""
    if sys.platform == "win32":
        raise UsageError(
            "--detach is not supported on Windows",
            hint="run sdrpc-launch in its own console window (or as a service)",
        )
    instance = check_instance_name(req.instance)
    try:
        private_dir(req.run_dir, tighten=True)
    except OSError as exc:
        raise cannot_write(req.run_dir, exc, "give --cache-dir a directory you can write") from None
    path = state_path(req.run_dir, instance)
    table = system_table()
    lock = FileLock(str(req.run_dir / f"{instance}.lock"), mode=FILE_MODE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InstanceRunningError(
            f"instance {instance!r} is being started by another sdrpc-launch",
            hint="wait for it, or start another with --instance NAME",
        ) from None
    try:
        _refuse_if_running(path, table, instance, warn)
        if table.method == "pid":
            warn("this system offers no process start times: instances are tracked by PID only")
        log = supervisor_log(req.log_dir, instance)
        proc, rfd = _spawn(req, log, instance)
        stop_timeout = req.policy.stop_timeout
        with _abort_on_failure(proc, path, table, stop_timeout) as start:
            deadline = time.monotonic() + req.deadline_s
            _wait(rfd, deadline, start, table, on_event, warn)
            if start.ready is None:
                raise _failure(start, proc, log, req)
        _keep(proc)
        try:
            state: Optional[InstanceState] = read_state(path)
        except StateFileError:
            state = None
        return Started(instance, start.ready, state, path, proc.pid, log, tuple(start.warnings))
    finally:
        lock.release()


#: the supervisors this process started that may still run: referenced, so that a library
#: caller (``fleet``) does not get a ResourceWarning when the Popen would be collected, and
#: reaped (no zombie) at the next start once they have ended
_DETACHED: list[subprocess.Popen[bytes]] = []


def _keep(proc: subprocess.Popen[bytes]) -> None:
    _DETACHED[:] = [p for p in _DETACHED if p.poll() is None]
    _DETACHED.append(proc)


def _refuse_if_running(
    path: Path, table: ProcessTable, instance: str, warn: Callable[[str], None]
) -> None:
    try:
        state = read_state(path)
    except StateFileError as exc:
        warn(f"removing an unreadable state file: {exc}")
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
    warn(
        f"removed a stale state file of {instance!r} (supervisor pid {state.supervisor.pid} {gone})"
    )


def _spawn(req: DetachRequest, log: Path, instance: str) -> tuple[subprocess.Popen[bytes], int]:
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
                list(req.command(wfd)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(wfd,),
                start_new_session=True,
                env={**req.env, "PYTHONUNBUFFERED": "1"},
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
    rfd: int,
    deadline: float,
    start: _Start,
    table: ProcessTable,
    on_event: Callable[[Event], None],
    warn: Callable[[str], None],
) -> None:
    """Read the supervisor's reports until all-ready, EOF (it failed) or the deadline."""
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
                _handle(line, start, table, on_event, warn)


def _handle(
    line: bytes,
    start: _Start,
    table: ProcessTable,
    on_event: Callable[[Event], None],
    warn: Callable[[str], None],
) -> None:
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
            warn(str(e.data.get("message")))
            return
    if e.kind == "all-ready":
        start.ready = e
    else:
        on_event(e)


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
    start: _Start, proc: subprocess.Popen[bytes], log: Path, req: DetachRequest
) -> DetachedStartError:
    hint = f"the supervisor's log: {log}"

    def error(message: str, hint: str, details: Optional[str], code: int) -> DetachedStartError:
        return DetachedStartError(message, hint, details, code, supervisor_pid=proc.pid, log=log)

    if start.error is not None:
        e = start.error
        first = f"{e['hint']}; " if e.get("hint") else ""
        return error(
            str(e.get("message")), first + hint, e.get("details"), int(e.get("exit_code") or 20)
        )
    if start.timed_out:
        limit = req.deadline_s
        return error(f"the servers were not all ready within {limit:g} s", hint, _log_tail(log), 20)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=req.policy.stop_timeout + 10)
    rc = proc.returncode
    what = (
        "was stopped"
        if rc == 0
        else f"ended ({describe_exit(rc) if rc is not None else 'still running'})"
    )
    message = f"the detached supervisor {what} before the servers were ready"
    return error(message, hint, _log_tail(log), 20)
