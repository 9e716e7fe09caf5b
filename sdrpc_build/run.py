"""The one way sdrpc runs a command: ``+ cmd`` logged, output captured, the tail shown on failure.

Commands are argument lists (never a shell). Each runs in its own process group
(session), so that on a timeout, Ctrl-C, SIGTERM or any other exception the whole
group (a compiler's jobs, git's helpers) gets SIGTERM, then SIGKILL, and the
runner returns only once no process of that group is left (:func:`stop_group`).

* :func:`run`: a short command (``git rev-parse``, ``cc --version``, ``pip
  download``): output captured, a timeout bounds the whole command; returns a
  :class:`Completed` that says what happened and makes the error to raise.
* :func:`run_logged`: a long one (CMake configure and compile, ``pip wheel``):
  output streamed to a log file and a line callback; raises :class:`BuildError`
  with the lines that explain a failure.

Long-lived servers are not commands: :mod:`sdrpc_build.launch` supervises them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

from sdrpc_build.errors import BuildError, Interrupted, SdrpcError, ToolError

__all__ = [
    "STOP_GRACE",
    "Completed",
    "failure_tail",
    "run",
    "run_logged",
    "stop_group",
]

#: seconds between SIGTERM to a command's group and SIGKILL
STOP_GRACE = 10.0
_LOG = logging.getLogger(__name__)
_KEEP_LINES = 5000  # run_logged keeps at most this many recent lines for the failure tail


def _show(argv: Sequence[str]) -> str:
    return "+ " + shlex.join(argv)


@dataclass(frozen=True)
class Completed:
    """How a command ended. ``returncode`` is None when it could not start or timed out
    (``problem`` says which); ``stdout``/``stderr`` are the bytes it wrote."""

    argv: tuple[str, ...]
    returncode: Optional[int]
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode(errors="replace")

    @property
    def why(self) -> str:
        """``exit 2``, or the problem (could not start, timed out)."""
        return self.problem or f"exit {self.returncode}"

    def tail(self, n: int = 5) -> str:
        """The last ``n`` lines of stderr (of stdout when stderr is empty)."""
        text = (self.stderr or self.stdout).strip()
        return "\n".join(text.splitlines()[-n:]) if text else self.problem

    def error(
        self,
        cls: Callable[..., SdrpcError],
        message: str,
        hint: str,
        scrub: Callable[[str], str] = lambda text: text,
        n: int = 5,
    ) -> SdrpcError:
        """``cls(message, hint, details=<the tail of the output>)`` to raise for a failure;
        ``scrub`` removes what must not be shown (credentials) from the tail."""
        return cls(message, hint=hint, details=scrub(self.tail(n)) or None)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
    capture: bool = True,
    shown: Optional[Sequence[str]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Completed:
    """Run a short command to its end, within ``timeout`` seconds in all.

    Never raises for a failing command (see :class:`Completed`); a Ctrl-C or any
    other exception stops its process group first. ``shown`` is the command as it
    may be logged (credentials replaced); ``log`` also gets the ``+ cmd`` line.
    ``capture=False`` lets the output through to this process's stdout/stderr.
    """
    args = tuple(argv)
    line = _show(shown if shown is not None else args)
    _LOG.debug("%s", line)
    if log is not None:
        log(line)
    pipe = subprocess.PIPE if capture else None
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=pipe,
            stderr=pipe,
            start_new_session=os.name != "nt",  # its own group: stopped as a whole
        )
    except (OSError, ValueError) as exc:  # ValueError: a NUL in argv or env
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Completed(args, None, problem=f"cannot run {args[0]}: {why}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, grace=min(STOP_GRACE, 2.0))
        out, err = b"", b""
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
            out, err = proc.communicate(timeout=2)
        return Completed(
            args, None, out or b"", err or b"", problem=f"no result within {timeout:g} s"
        )
    except BaseException:
        stop_group(proc)
        raise
    return Completed(args, proc.returncode, out or b"", err or b"")


def failure_tail(lines: Sequence[str], n: int = 25) -> str:
    """The lines that explain a failure: CMake/compiler errors first, else the last ``n``."""
    picked: list[str] = []
    for i, line in enumerate(lines):
        if "CMake Error" in line or "error:" in line or "FAILED:" in line:
            picked.extend(lines[i : i + 8])
            if len(picked) >= n:
                break
    if not picked:
        picked = list(lines[-n:])
    return "\n".join("  | " + ln for ln in picked[:n])


def run_logged(
    argv: Sequence[str],
    *,
    log: IO[str],
    env: Mapping[str, str],
    cwd: Optional[Path] = None,
    on_line: Callable[[str], None] = lambda _l: None,
    what: str = "command",
    hint: str = "see the log for details",
) -> list[str]:
    """Run ``argv``, tee output to ``log`` and ``on_line``; raise BuildError on failure."""
    log.write(_show(argv) + "\n")
    log.flush()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=os.name != "nt",  # its own group: stopped as a whole
        )
    except OSError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}", hint=hint) from None
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if len(lines) > _KEEP_LINES:
                del lines[:1000]
            log.write(line + "\n")
            on_line(line)
        rc = proc.wait()
    except BaseException as exc:  # Ctrl-C, SIGTERM (raised by the CLI), a failing callback
        stop_group(proc)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"{what} interrupted", hint="run the same command again") from None
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdout.close()
    log.flush()
    if rc != 0:
        raise BuildError(f"{what} failed (exit {rc})", hint=hint, details=failure_tail(lines))
    return lines


def _group_alive(pgid: int) -> bool:
    """Some process of group ``pgid`` is still running (zombies do not count on Linux)."""
    proc_root = Path("/proc")
    if sys.platform.startswith("linux") and proc_root.is_dir():
        for d in proc_root.iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[Any], grace: float = STOP_GRACE) -> None:
    """Stop ``proc`` and every process of its group: SIGTERM, wait, SIGKILL; bounded.

    Returns once no member of the group runs (or after ``grace`` + 5 s at most).
    """
    with _no_interrupts():
        _stop_group(proc, grace)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM while a stop is under way (a second Ctrl-C must not cut it)."""
    saved: list[tuple[signal.Signals, Any]] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved.append((sig, signal.signal(sig, signal.SIG_IGN)))
    except ValueError:  # not the main thread: signals go to the main thread anyway
        pass
    try:
        yield
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)


def _stop_group(proc: subprocess.Popen[Any], grace: float) -> None:
    if os.name == "nt":
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        return
    pgid = proc.pid  # a session leader: its PID is the group's ID
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid) or proc.poll() is None:
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        end = time.monotonic() + 5
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.05)
