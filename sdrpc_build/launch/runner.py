"""The supervisor's I/O loop: processes, output, probes, signals, timers.

The readiness check is injected (see ``readiness``): launch does not speak the protocol.

One thread owns every process (so the Linux parent-death signal stays tied to it); readiness
probes run on worker threads and report back through a self-pipe. The loop sleeps in
``select`` until output, a child exit (SIGCHLD), a signal, a probe result or the next timer:
an idle supervisor costs (almost) no CPU.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, Optional

from sdrpc_build.launch.cache import prune
from sdrpc_build.launch.lines import LineSplitter
from sdrpc_build.launch.private import cannot_write, open_log, private_dir
from sdrpc_build.launch.procs import Child, ProcessFactory, spawn
from sdrpc_build.launch.readiness import Readiness, ReadinessCheck
from sdrpc_build.launch.spec import ServerSpec, build_argv, build_env
from sdrpc_build.launch.supervisor import Action, Event, Kill, Probe, Prune, Spawn, Supervisor

__all__ = ["CommandBuilder", "Runner"]

#: the command line of a server (default: :func:`~sdrpc_build.launch.spec.build_argv` with the
#: runner's line-buffer prefix); another program supervised like a server (an ``ssh -N`` tunnel)
#: brings its own
CommandBuilder = Callable[[ServerSpec], list[str]]

MAX_SLEEP = 5.0
READ_CHUNK = 65536  # one read per server per wake-up: a chatty server cannot starve the others
FINAL_READ_MAX = 1 << 20  # what is left in a dead server's pipe that we still read


class Runner:
    """Drive a :class:`Supervisor` until every server is EXITED or FATAL."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        base_env: Mapping[str, str],
        on_event: Callable[[Event], None],
        on_output: Callable[[str, str], None],
        readiness: ReadinessCheck,
        log_dir: Optional[Path] = None,
        line_buffer: Optional[list[str]] = None,
        factory: ProcessFactory = spawn,
        clock: Callable[[], float] = time.monotonic,
        command: Optional[CommandBuilder] = None,
    ) -> None:
        self.sup = supervisor
        self.base_env = dict(base_env)
        self.on_event = on_event
        self.on_output = on_output
        self.log_dir = log_dir
        self.line_buffer = line_buffer or []
        self.factory = factory
        self.readiness = readiness
        self.clock = clock
        self.command = command
        self.children: dict[str, Child] = {}
        self._lines: dict[str, LineSplitter] = {}
        self._logs: dict[str, IO[str]] = {}
        self._results: queue.SimpleQueue[tuple[str, int, Readiness]] = queue.SimpleQueue()
        self._stop_requests = 0
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, len(supervisor.servers)), thread_name_prefix="sdrpc-probe"
        )

    # -- public -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop_requests += 1
        self._wake()

    def run(self, install_signals: bool = True, restore_signals: bool = True) -> None:
        """Supervise until every server is EXITED or FATAL.

        With ``install_signals``, SIGINT/SIGTERM request a stop (a second one SIGKILLs the
        servers at once). With ``restore_signals=False`` they are ignored from the return on
        instead of restored: for a process that exits when supervision ends, so a late Ctrl-C
        while it winds down is not raised as KeyboardInterrupt (SIG_IGN, unlike a Python
        handler, also holds while the interpreter shuts down).
        """
        saved: dict[int, Any] = {}
        old_wakeup = -1
        if install_signals:
            old_wakeup = signal.set_wakeup_fd(self._wake_w)
            for sig in (signal.SIGINT, signal.SIGTERM):
                saved[sig] = signal.signal(sig, self._on_signal)
            if hasattr(signal, "SIGCHLD"):
                saved[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            self._prepare()
            self._do(self.sup.begin(self.clock()))
            self._loop()
        finally:
            self._kill_all()
            if install_signals:
                signal.set_wakeup_fd(old_wakeup)
                for signum, handler in saved.items():
                    if restore_signals or signum not in (signal.SIGINT, signal.SIGTERM):
                        signal.signal(signum, handler)
                    else:  # our handler was in place until now: no window for a late signal
                        signal.signal(signum, signal.SIG_IGN)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._sel.close()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for f in self._logs.values():
                f.close()

    # -- loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        stops_seen = 0
        while not self.sup.done:
            now = self.clock()
            if self._stop_requests > stops_seen:
                if stops_seen == 0:
                    self._do(self.sup.stop(now))
                if self._stop_requests > 1:  # a second Ctrl-C: do not wait for the polite stop
                    for name in list(self.children):
                        self._do([Kill(name, signal.SIGKILL)])
                stops_seen = self._stop_requests
            deadline = self.sup.next_deadline()
            timeout = MAX_SLEEP if deadline is None else min(MAX_SLEEP, max(0.0, deadline - now))
            for key, _ in self._sel.select(timeout):
                if key.data is None:
                    self._drain_wake()
                else:
                    self._read(key.data)
            now = self.clock()
            while True:
                try:
                    name, gen, result = self._results.get_nowait()
                except queue.Empty:
                    break
                self._do(self.sup.probed(name, gen, result, now))
            self._reap(now)
            self._do(self.sup.tick(self.clock()))

    def _reap(self, now: float) -> None:
        for name, child in list(self.children.items()):
            rc = child.poll()
            if rc is None:
                continue
            self._read(name, final=True)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(child.fd)
            child.close()
            del self.children[name]
            self._do(self.sup.exited(name, rc, now))

    def _read(self, name: str, final: bool = False) -> None:
        """Read what ``name`` printed: one chunk, or (``final``) what is left, bounded."""
        child = self.children.get(name)
        if child is None:
            return
        splitter = self._lines.setdefault(name, LineSplitter())
        lines: list[str] = []
        eof = False
        budget = FINAL_READ_MAX if final else READ_CHUNK
        while budget > 0:
            try:
                chunk = os.read(child.fd, min(READ_CHUNK, budget))
            except BlockingIOError:
                break
            except OSError:  # EIO: the pty's other side is gone
                eof = True
                break
            if not chunk:
                eof = True
                break
            lines += splitter.feed(chunk)
            budget -= len(chunk)
        if eof or final:
            lines += splitter.finish()
        now = self.clock()
        for text in lines:
            self._log(name, text)
            self.on_output(name, text)
            self._do(self.sup.line(name, text, now))
        if eof:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(child.fd)

    # -- actions ----------------------------------------------------------------------------
    def _do(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Event):
                self._log_event(a)
                self.on_event(a)
            elif isinstance(a, Spawn):
                self._spawn(a.server)
            elif isinstance(a, Probe):
                self._probe(a.server, a.generation)
            elif isinstance(a, Kill):
                child = self.children.get(a.server)
                if child is not None:
                    child.signal_group(a.sig)
            elif isinstance(a, Prune):
                self._prune(a.server)

    def _spawn(self, name: str) -> None:
        spec = self.sup.servers[name].spec
        argv = self.command(spec) if self.command else build_argv(spec, self.line_buffer)
        env = build_env(spec, self.base_env)
        try:
            child = self.factory(argv, env, None)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in argv or env
            why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            message = f"cannot start {spec.binary}: {why}"
            self._do(self.sup.spawn_failed(name, message, self.clock()))
            return
        self.children[name] = child
        self._lines[name] = LineSplitter()
        self._sel.register(child.fd, selectors.EVENT_READ, name)
        self._do(self.sup.spawned(name, child.pid, self.clock()))

    def _probe(self, name: str, generation: int) -> None:
        spec = self.sup.servers[name].spec
        check = self.readiness

        def work() -> None:
            try:
                result = check(spec)
            except Exception as exc:  # a probe bug must not kill the supervisor
                result = Readiness("fail", f"readiness probe failed: {type(exc).__name__}: {exc}")
            self._results.put((name, generation, result))
            self._wake()

        self._pool.submit(work)

    def _prune(self, name: str) -> None:
        spec = self.sup.servers[name].spec
        where = spec.cache_files_dir
        if where is None or spec.cache_max_size is None:
            return
        try:
            result = prune(where, spec.cache_max_size)
        except OSError as exc:
            self._do(
                [
                    Event(
                        "warning",
                        name,
                        self.clock(),
                        {"message": f"cache prune of {where} failed: {exc}"},
                    )
                ]
            )
            return
        if result.count:
            self._do(
                [
                    Event(
                        "cache-pruned",
                        name,
                        self.clock(),
                        {
                            "removed": result.count,
                            "freed": result.freed,
                            "remaining": result.remaining,
                            "limit": spec.cache_max_size,
                            "dir": str(where),
                        },
                    )
                ]
            )

    # -- plumbing ---------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self._stop_requests += 1

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _kill_all(self) -> None:
        """Last line of defence (also on internal errors): no server outlives the loop."""
        for child in self.children.values():
            child.signal_group(signal.SIGKILL)
        for child in self.children.values():
            child.wait(5.0)
            child.close()
        self.children.clear()

    def _prepare(self) -> None:
        """Log files and cache dirs, private (0600/0700); a LaunchError when they cannot be."""
        for spec in (s.spec for s in self.sup.servers.values()):
            if spec.cache_dir is not None:
                try:
                    private_dir(spec.cache_dir)
                except OSError as exc:
                    raise cannot_write(
                        spec.cache_dir, exc, "give -c/'cache' a directory you can write"
                    ) from None
        if self.log_dir is None:
            return
        hint = "give --log-dir (or --cache-dir) a directory you can write"
        try:
            private_dir(self.log_dir)
        except OSError as exc:
            raise cannot_write(self.log_dir, exc, hint) from None
        for name in self.sup.servers:
            path = self.log_dir / f"{name}.log"
            try:
                self._logs[name] = open_log(path)
            except OSError as exc:
                raise cannot_write(path, exc, hint) from None

    def _log(self, name: str, text: str) -> None:
        f = self._logs.get(name)
        if f is not None:
            f.write(f"{datetime.now().isoformat(timespec='milliseconds')} {text}\n")

    def _log_event(self, e: Event) -> None:
        names = [e.server] if e.server else list(self._logs)
        detail = " ".join(f"{k}={v}" for k, v in e.data.items() if k not in ("tail", "devices"))
        for n in names:
            self._log(n, f"--- sdrpc: {e.kind} {detail}".rstrip())
