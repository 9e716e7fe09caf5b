"""Start rpc-server processes: own process group, line-buffered output, parent-death signal.

* Each server gets its own session/process group, so a stop signal reaches all of it and a
  Ctrl-C in the terminal reaches only the supervisor (which then stops the servers in order).
* rpc-server's stdout is block-buffered when piped: we run it under ``stdbuf -oL`` when that
  exists, else on a pseudo-terminal, so banner and client lines arrive as they are printed.
* On Linux each child asks the kernel for SIGKILL when the supervisor dies
  (``prctl(PR_SET_PDEATHSIG)``), so servers never outlive it, even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Optional

from sdrpc_build.launch.banner import BannerDevice, parse_device_list
from sdrpc_build.run import run

__all__ = [
    "Child",
    "ProcessFactory",
    "line_buffer_prefix",
    "list_devices",
    "spawn",
    "stop_process",
]

PR_SET_PDEATHSIG = 1
_LIST_PROBE_DEVICE = "sdrpc-list-devices"


def line_buffer_prefix(which: Callable[[str], Optional[str]] = shutil.which) -> Optional[list[str]]:
    """``["/usr/bin/stdbuf", "-oL", "-eL"]`` where stdbuf exists (GNU coreutils), else None."""
    if sys.platform == "win32":
        return None
    path = which("stdbuf")
    return [path, "-oL", "-eL"] if path else None


def _pdeathsig_preexec() -> Optional[Callable[[], None]]:
    """A preexec hook asking for SIGKILL when the spawning thread dies (Linux only).

    preexec hooks are unsafe with threads only when they take locks or allocate: this one calls
    two pre-resolved functions (libc ``prctl``, ``getppid``) and nothing else. Spawns happen on
    the supervisor's main thread, which lives as long as the supervisor does.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it tiny
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


class Child:
    """A running server: its pid, the fd its output arrives on, and group signalling."""

    def __init__(self, popen: subprocess.Popen[bytes], fd: int, owned_fd: bool) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.fd = fd
        self._owned_fd = owned_fd
        self._closed = False

    def poll(self) -> Optional[int]:
        return self.popen.poll()

    def signal_group(self, sig: int) -> None:
        """Signal the server's whole process group (only while it is not yet reaped)."""
        if self.popen.returncode is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owned_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


ProcessFactory = Callable[[Sequence[str], Mapping[str, str], Optional[Path]], Child]


def spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Optional[Path] = None) -> Child:
    """Start a server. With no stdbuf prefix in ``argv`` the output goes through a pty."""
    preexec = _pdeathsig_preexec()
    use_pty = os.path.basename(argv[0]) != "stdbuf" and sys.platform != "win32"
    if use_pty:
        master, slave = os.openpty()
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=slave,
                stderr=slave,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509 - see _pdeathsig_preexec
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return Child(popen, master, owned_fd=True)
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=preexec,  # noqa: PLW1509 - see _pdeathsig_preexec
    )
    assert popen.stdout is not None
    fd = popen.stdout.fileno()
    os.set_blocking(fd, False)
    return Child(popen, fd, owned_fd=False)


def list_devices(
    binary: Path, env: Mapping[str, str], timeout: float = 60.0
) -> Optional[tuple[BannerDevice, ...]]:
    """The devices a binary offers, or None when it cannot say (no ``-d`` before 2025-05).

    rpc-server has no ``--list-devices``; asking for an unknown device makes it print the list
    and exit 1 without opening a socket.
    """
    done = run([str(binary), "-d", _LIST_PROBE_DEVICE], timeout=timeout, env=env)
    if done.returncode is None:  # could not start, or no answer in time
        return None
    out = done.stdout + done.stderr
    if f"unknown device: {_LIST_PROBE_DEVICE}" not in out:
        return None
    return parse_device_list(out)


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str],
    first: int = signal.SIGTERM,
    grace: float = 5.0,
    *,
    group: bool = True,
) -> None:
    """Stop a child we started (by PID): ``first`` signal, wait ``grace`` s, then SIGKILL.

    With ``group`` the signals go to its process group (it was started with
    ``start_new_session=True``), so its own children end too.
    """
    if proc.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if sys.platform == "win32":  # no process groups or POSIX signals
                proc.kill() if sig == signal.SIGKILL else proc.terminate()
            elif group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)

    send(first)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=30)
