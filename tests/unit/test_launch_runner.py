"""The I/O loop with fake processes (pipes, no real children) and a fake readiness check."""

from __future__ import annotations

import os
import signal
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from sdrpc_build.launch.lines import MAX_LINE
from sdrpc_build.launch.readiness import Readiness, RemoteDevice
from sdrpc_build.launch.runner import Runner
from sdrpc_build.launch.spec import ServerSpec
from sdrpc_build.launch.state import Policy
from sdrpc_build.launch.supervisor import Event, Supervisor

BANNER = (
    b"Starting RPC server v5.0.0\n  endpoint       : 127.0.0.1:1\nDevices:\n"
    b"  CPU: Fake (100 MiB, 90 MiB free)\n  transport      : TCP\n"
)


class FakeChild:
    count = 0

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        FakeChild.count += 1
        self.pid = 1000 + FakeChild.count
        self.argv = list(argv)
        self.env = dict(env)
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        self.rc: int | None = None
        self.signals: list[int] = []
        os.write(self._w, BANNER)

    def die(self, rc: int, last: bytes = b"") -> None:
        if last:
            os.write(self._w, last)
        os.close(self._w)
        self.rc = rc
        os.kill(os.getpid(), signal.SIGCHLD)  # what the kernel would do

    def poll(self) -> int | None:
        return self.rc

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        if self.rc is None:
            self.die(-sig)

    def wait(self, timeout: float) -> int | None:
        return self.rc

    def close(self) -> None:
        os.close(self.fd)


C = TypeVar("C", bound=FakeChild)


def test_runner_starts_restarts_and_stops(tmp_path: Path) -> None:
    children: list[FakeChild] = []
    seen: list[Event] = []
    lines: list[tuple[str, str]] = []

    def factory(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> FakeChild:
        c = FakeChild(argv, env)
        children.append(c)
        return c

    def ready(spec: ServerSpec) -> Readiness:
        return Readiness("ready", protocol="5.0.0", devices=(RemoteDevice(0, 9, 10),))

    spec = ServerSpec(
        name="a", binary=Path("/x/rpc"), port=50999, cache_dir=tmp_path / "c", cache_max_size=10
    )
    sup = Supervisor([spec], Policy(backoff_initial=0.01, probe_interval=0.01))
    runner: Runner

    def on_event(e: Event) -> None:
        seen.append(e)
        readies = [x for x in seen if x.kind == "all-ready"]
        if e.kind == "all-ready" and len(readies) == 1:
            children[0].die(-9, b"Segmentation fault\n")
        elif e.kind == "all-ready":
            runner.request_stop()

    runner = Runner(
        sup,
        base_env={"A": "1"},
        on_event=on_event,
        on_output=lambda n, t: lines.append((n, t)),
        log_dir=tmp_path / "logs",
        line_buffer=["stdbuf", "-oL"],
        factory=factory,  # type: ignore[arg-type]  # FakeChild quacks like procs.Child
        readiness=ready,
    )
    runner.run(install_signals=False)

    kinds = [e.kind for e in seen]
    assert kinds == [
        "starting",
        "ready",
        "all-ready",
        "exited",
        "restarting",
        "starting",
        "ready",
        "all-ready",
        "stopping",
        "exited",
        "stopped",
    ]
    assert children[0].argv == ["stdbuf", "-oL", "/x/rpc", "-H", "127.0.0.1", "-p", "50999", "-c"]
    assert children[0].env == {"A": "1", "LLAMA_CACHE": str(tmp_path / "c")}
    assert children[1].signals == [signal.SIGTERM]
    assert ("a", "Segmentation fault") in lines
    assert ("a", "  CPU: Fake (100 MiB, 90 MiB free)") in lines
    log = (tmp_path / "logs" / "a.log").read_text()
    assert "Segmentation fault" in log
    assert "--- sdrpc: restarting" in log
    assert sup.done
    assert sup.fatal == []


def test_runner_kills_everything_on_an_internal_error(tmp_path: Path) -> None:
    children: list[FakeChild] = []

    def factory(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> FakeChild:
        children.append(FakeChild(argv, env))
        return children[-1]

    def boom(e: Event) -> None:
        if e.kind == "all-ready":
            raise RuntimeError("reporter bug")

    sup = Supervisor([ServerSpec(name="a", binary=Path("/x"))], Policy(probe_interval=0.01))
    runner = Runner(
        sup,
        base_env={},
        on_event=boom,
        on_output=lambda n, t: None,
        factory=factory,  # type: ignore[arg-type]  # FakeChild quacks like procs.Child
        readiness=lambda s: Readiness("ready"),
    )
    try:
        runner.run(install_signals=False)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the error should propagate")
    assert children[0].signals == [signal.SIGKILL]


def test_spawn_failure_is_fatal(tmp_path: Path) -> None:
    def factory(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> FakeChild:
        raise PermissionError(13, "Permission denied")

    seen: list[Event] = []
    sup = Supervisor([ServerSpec(name="a", binary=Path("/x"))], Policy())
    Runner(
        sup,
        base_env={},
        on_event=seen.append,
        on_output=lambda n, t: None,
        factory=factory,  # type: ignore[arg-type]  # FakeChild quacks like procs.Child
        readiness=lambda s: Readiness("ready"),
    ).run(install_signals=False)
    assert [e.kind for e in seen] == ["starting", "exited", "fatal"]
    assert "Permission denied" in str(seen[-1].data["reason"])


def _one_server_runner(
    tmp_path: Path,
    child_class: type[C],
    seen: list[Event],
    lines: list[str],
) -> tuple[Runner, list[C]]:
    children: list[C] = []

    def factory(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> C:
        children.append(child_class(argv, env))
        return children[-1]

    spec = ServerSpec(
        name="a", binary=Path("/x"), cache_dir=tmp_path / "cache" / "a", restart="never"
    )
    sup = Supervisor([spec], Policy(probe_interval=0.01))
    runner = Runner(
        sup,
        base_env={},
        on_event=seen.append,
        on_output=lambda n, t: lines.append(t),
        log_dir=tmp_path / "logs",
        factory=factory,  # type: ignore[arg-type]  # FakeChild quacks like procs.Child
        readiness=lambda s: Readiness("retry"),
    )
    return runner, children


class FloodingChild(FakeChild):
    """Prints 5 MiB without a newline, a progress bar, then crashes (from a thread)."""

    SIZE = 5 << 20

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        super().__init__(argv, env)
        self.thread = threading.Thread(target=self._flood, daemon=True)
        self.thread.start()

    def _flood(self) -> None:
        chunk = b"x" * 65536
        for _ in range(self.SIZE // len(chunk)):
            os.write(self._w, chunk)
        os.write(self._w, b"\rloading 10%\rloading 20%\r\nerror: boom\n")
        self.die(1)


def test_a_flood_without_newlines_is_split_and_bounded(tmp_path: Path) -> None:
    seen: list[Event] = []
    lines: list[str] = []
    runner, children = _one_server_runner(tmp_path, FloodingChild, seen, lines)
    runner.run(install_signals=False)
    children[0].thread.join(10)
    flood = [x for x in lines if x.startswith("x")]
    assert sum(len(x) for x in flood) == FloodingChild.SIZE  # nothing lost...
    assert max(len(x) for x in lines) <= MAX_LINE  # ...but no line above the cap
    assert lines[-3:] == ["loading 10%", "loading 20%", "error: boom"]  # \r ends a line
    fatal = seen[-1]
    assert fatal.kind == "fatal"
    tail = fatal.data["tail"]
    assert isinstance(tail, list)
    assert sum(len(x) for x in tail) <= 15 * MAX_LINE
    assert "boom" in str(fatal.data["reason"])


def test_spawn_value_error_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    def factory(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> FakeChild:
        raise ValueError("embedded null byte")

    seen: list[Event] = []
    sup = Supervisor([ServerSpec(name="a", binary=Path("/x"))], Policy())
    runner = Runner(
        sup,
        base_env={},
        on_event=seen.append,
        on_output=lambda n, t: None,
        factory=factory,  # type: ignore[arg-type]  # FakeChild quacks like procs.Child
        readiness=lambda s: Readiness("ready"),
    )
    runner.run(install_signals=False)
    assert [e.kind for e in seen] == ["starting", "exited", "fatal"]
    assert "embedded null byte" in str(seen[-1].data["reason"])


def test_logs_and_cache_dirs_are_private_whatever_the_umask(tmp_path: Path) -> None:
    seen: list[Event] = []
    runner, _ = _one_server_runner(tmp_path, FakeChild, seen, [])
    old = os.umask(0)
    try:
        runner.request_stop()
        runner.run(install_signals=False)
    finally:
        os.umask(old)
    modes = {
        p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in (tmp_path / x for x in ("logs", "logs/a.log", "cache", "cache/a"))
    }
    assert modes == {"logs": 0o700, "logs/a.log": 0o600, "cache": 0o700, "cache/a": 0o700}


def test_a_late_signal_is_counted_not_raised(tmp_path: Path) -> None:
    """restore_signals=False: a Ctrl-C after the stop must not become KeyboardInterrupt."""
    seen: list[Event] = []
    runner, _ = _one_server_runner(tmp_path, FakeChild, seen, [])
    before = signal.getsignal(signal.SIGINT)
    try:
        runner.request_stop()
        runner.run(restore_signals=False)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)  # would raise KeyboardInterrupt with the default
        signal.raise_signal(signal.SIGTERM)  # would end the test run with the default
    finally:
        signal.signal(signal.SIGINT, before)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert [e.kind for e in seen][-2:] == ["exited", "stopped"]


def test_a_command_builder_replaces_the_server_command_line(tmp_path: Path) -> None:
    """Another program supervised like a server (an ``ssh -N`` tunnel) brings its argv."""
    children: list[FakeChild] = []

    def factory(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> FakeChild:
        children.append(FakeChild(argv, env))
        return children[-1]

    def stop_when_ready(e: Event) -> None:
        if e.kind == "all-ready":
            runner.request_stop()

    spec = ServerSpec(name="gpu1", binary=Path("/usr/bin/ssh"), port=41000)
    runner = Runner(
        Supervisor([spec], Policy(probe_interval=0.01)),
        base_env={"SSH_AUTH_SOCK": "/run/agent"},
        on_event=stop_when_ready,
        on_output=lambda n, t: None,
        line_buffer=["stdbuf", "-oL"],
        factory=factory,  # type: ignore[arg-type]  # FakeChild quacks like procs.Child
        readiness=lambda s: Readiness("ready"),
        command=lambda s: [str(s.binary), "-N", "-L", f"127.0.0.1:{s.port}:127.0.0.1:50052", "h"],
    )
    runner.run(install_signals=False)
    assert children[0].argv == ["/usr/bin/ssh", "-N", "-L", "127.0.0.1:41000:127.0.0.1:50052", "h"]
    assert children[0].env == {"SSH_AUTH_SOCK": "/run/agent"}
