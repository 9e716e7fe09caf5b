"""The detached supervisor's bookkeeping: state file, start report, fail-fast (no processes)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sdrpc_build.cli.launch_report import ChildReporter
from sdrpc_build.errors import LaunchError, UsageError
from sdrpc_build.launch.child import DetachedChild, StartRule, event_from_wire, event_to_wire
from sdrpc_build.launch.identity import ProcessIdentity, ProcessInfo, ProcessTable
from sdrpc_build.launch.instance import InstanceState, read_state, state_path
from sdrpc_build.launch.readiness import Readiness, RemoteDevice
from sdrpc_build.launch.spec import ServerSpec
from sdrpc_build.launch.state import Policy, State
from sdrpc_build.launch.supervisor import Action, Event, Probe, Supervisor

READY = Readiness("ready", protocol="5.0.0", devices=(RemoteDevice(0, 1 << 30, 2 << 30),))
DEFAULT_POLICY = Policy()
TABLE = ProcessTable("proc", lambda pid: ProcessInfo(f"{pid}@boot"))


class Pipe(io.StringIO):
    """Keeps what was written after close()."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.closed_by_child = False

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def close(self) -> None:
        self.closed_by_child = True
        super().close()

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.text.splitlines()]


class FakeRunner:
    def __init__(self) -> None:
        self.stops = 0

    def request_stop(self) -> None:
        self.stops += 1


def make(
    tmp_path: Path,
    names: tuple[str, ...] = ("a", "b"),
    start: StartRule = "all-ready",
    policy: Policy = DEFAULT_POLICY,
) -> tuple[DetachedChild, Pipe, Supervisor, FakeRunner]:
    logs = tmp_path / "logs"
    logs.mkdir()
    state = InstanceState(
        instance="default",
        supervisor=ProcessIdentity(4242, "4242@boot", "proc"),
        started_at=1.0,
        log_dir=logs,
        supervisor_log=logs / "sdrpc-launch-default.log",
        stop_timeout=5.0,
    )
    pipe = Pipe()
    child = DetachedChild(
        pipe, state_path(tmp_path / "run", "default"), state, TABLE, lambda: 100.0, start=start
    )
    specs = [ServerSpec(n, Path("/bin/x"), port=50052 + i) for i, n in enumerate(names)]
    sup = Supervisor(specs, policy)
    runner = FakeRunner()
    child.attach(sup, runner)  # type: ignore[arg-type]
    return child, pipe, sup, runner


def feed(child: DetachedChild, actions: Sequence[Action]) -> None:
    for a in actions:
        if isinstance(a, Event):
            child.on_event(a)


def bring_up(child: DetachedChild, sup: Supervisor, name: str, pid: int, now: float) -> None:
    sup.spawned(name, pid, now)
    record = child.state.server(name)
    assert record is not None
    record.log.write_text("x" * 10 + "\n")
    feed(child, sup.probed(name, sup.servers[name].machine.generation, READY, now))


def load(path: Path) -> InstanceState:
    state = read_state(path)
    assert state is not None
    return state


def test_wire_round_trip() -> None:
    sup = Supervisor([ServerSpec("a", Path("/bin/x"))], Policy())
    sup.begin(0.0)
    sup.spawned("a", 7, 0.0)
    sup.line("a", "  transport      : TCP", 0.0)
    assert sup.tick(0.0) == [Probe("a", 1)]
    events = [a for a in sup.probed("a", 1, READY, 0.1) if isinstance(a, Event)]
    for e in events:
        again = event_from_wire(json.loads(json.dumps(event_to_wire(e))))
        assert again == e


def test_state_file_follows_the_start(tmp_path: Path) -> None:
    child, pipe, sup, _ = make(tmp_path)
    path = child.path
    state = read_state(path)
    assert state is not None and [s.phase for s in state.servers] == ["starting", "starting"]
    feed(child, sup.begin(0.0))
    bring_up(child, sup, "a", 101, 0.1)
    state = read_state(path)
    assert state is not None
    a = state.server("a")
    assert a is not None and a.phase == "ready"
    assert a.process == ProcessIdentity(101, "101@boot", "proc")
    assert (a.ready_at, a.log_offset) == (100.0, 11)
    assert state.phase == "starting" and not pipe.closed_by_child
    bring_up(child, sup, "b", 102, 0.2)
    state = read_state(path)
    assert state is not None and state.phase == "running"
    assert state.rpc_servers == "127.0.0.1:50052,127.0.0.1:50053"
    assert [d.rpc_name for d in state.devices] == ["RPC0", "RPC1"]
    # the parent got every event up to all-ready, then the pipe was closed
    kinds = [m["kind"] for m in pipe.messages()]
    assert kinds[-1] == "all-ready" and kinds.count("ready") == 2
    assert pipe.closed_by_child and child.started

    # later: a crash and a restart keep the file current, nothing more is sent
    feed(child, sup.exited("a", -9, 5.0))
    a = load(path).server("a")
    assert a is not None and (a.phase, a.process) == ("restarting", None)
    feed(child, sup.tick(10.0))
    bring_up(child, sup, "a", 103, 10.1)
    a = load(path).server("a")
    assert a is not None and a.process is not None and a.process.pid == 103 and a.restarts == 1


def test_an_exit_before_all_ready_fails_the_start(tmp_path: Path) -> None:
    child, pipe, sup, runner = make(tmp_path)
    feed(child, sup.begin(0.0))
    bring_up(child, sup, "a", 101, 0.1)
    sup.spawned("b", 102, 0.1)
    sup.line("b", "error: something broke", 0.1)
    feed(child, sup.exited("b", 1, 0.2))
    assert runner.stops == 1
    with pytest.raises(LaunchError) as info:
        child.raise_if_start_failed()
    err = info.value
    assert err.message == "b ended before it was ready (exit status 1): error: something broke"
    assert err.details is not None and "| error: something broke" in err.details
    assert err.hint is not None and "b.log" in err.hint
    # a late all-ready (a restarted b) must not report success
    feed(child, sup.tick(5.0))
    bring_up(child, sup, "b", 104, 5.1)
    assert not child.started
    assert load(child.path).phase == "starting"
    assert "all-ready" not in [m["kind"] for m in pipe.messages()]


def test_a_fatal_after_the_others_are_ready_is_not_reported_as_ready(tmp_path: Path) -> None:
    """b fails for good after a is READY: its FATAL completes an "all ready" of the servers
    left, which must not reach the waiting --detach (it would report success, exit 0)."""
    child, pipe, sup, runner = make(tmp_path)
    feed(child, sup.begin(0.0))
    bring_up(child, sup, "a", 101, 0.1)
    sup.spawned("b", 102, 0.1)
    sup.line("b", "error: unknown argument: --bogus-flag", 0.2)
    actions = sup.exited("b", 0, 0.3)
    assert [a.kind for a in actions if isinstance(a, Event)] == ["exited", "fatal", "all-ready"]
    feed(child, actions)
    assert runner.stops == 1
    assert [m["kind"] for m in pipe.messages()][-2:] == ["exited", "fatal"]
    assert not child.started
    with pytest.raises(LaunchError, match="b ended before it was ready"):
        child.raise_if_start_failed()


def test_run_reports_errors_and_removes_the_state_file(tmp_path: Path) -> None:
    child, pipe, _, _ = make(tmp_path)

    def body() -> int:
        assert child.path.exists()
        raise UsageError("bad", hint="fix it")

    with pytest.raises(UsageError):
        child.run(body)
    assert pipe.messages()[-1] == {
        "kind": "error",
        "message": "bad",
        "hint": "fix it",
        "details": None,
        "exit_code": 2,
    }
    assert pipe.closed_by_child
    assert not child.path.exists()


def test_run_success_removes_the_state_file(tmp_path: Path) -> None:
    child, pipe, _, _ = make(tmp_path)
    assert child.run(lambda: 0) == 0
    assert not child.path.exists()
    assert pipe.text == ""


def test_warnings_are_forwarded_until_started(tmp_path: Path) -> None:
    child, pipe, _, _ = make(tmp_path, ("a",))
    reporter = ChildReporter(child, False, [])
    reporter.warn("host resolved")
    (msg,) = pipe.messages()
    assert (msg["kind"], msg["data"]["message"]) == ("warning", "host resolved")


def test_a_gone_parent_does_not_stop_the_supervisor(tmp_path: Path) -> None:
    child, pipe, sup, runner = make(tmp_path, ("a",))

    def broken(s: str) -> int:
        raise BrokenPipeError

    pipe.write = broken  # type: ignore[method-assign]
    feed(child, sup.begin(0.0))
    bring_up(child, sup, "a", 101, 0.1)
    assert runner.stops == 0
    assert load(child.path).phase == "running"


def test_a_settled_start_ends_with_the_failed_ones_restarting(tmp_path: Path) -> None:
    """start="settled" (tunnels): b's failed first attempt does not stop a; the parent gets an
    all-ready of a naming b as failed, and b goes on restarting."""
    child, pipe, sup, runner = make(tmp_path, ("a", "b", "c"), start="settled")
    feed(child, sup.begin(0.0))
    bring_up(child, sup, "a", 101, 0.1)
    sup.spawned("b", 102, 0.1)
    sup.line("b", "ssh: connect to host 10.0.0.2 port 22: No route to host", 0.2)
    feed(child, sup.exited("b", 255, 0.3))
    assert runner.stops == 0 and not child.started  # c has not settled yet
    bring_up(child, sup, "c", 103, 0.4)
    assert runner.stops == 0 and child.started and pipe.closed_by_child
    last = pipe.messages()[-1]
    assert last["kind"] == "all-ready"
    assert last["data"]["failed"] == ["b"]
    assert last["data"]["rpc_servers"] == "127.0.0.1:50052,127.0.0.1:50054"
    ready = event_from_wire(last)
    assert [d.server for d in ready.data["devices"]] == ["a", "c"]
    child.raise_if_start_failed()
    state = load(child.path)
    assert state.phase == "running"
    b = state.server("b")
    assert b is not None and b.phase == "restarting"
    assert sup.servers["b"].machine.state is State.BACKOFF
    # b comes back later: the file follows, nothing more goes to the (closed) pipe
    sent = len(pipe.messages())
    feed(child, sup.tick(5.0))
    bring_up(child, sup, "b", 104, 5.1)
    b = load(child.path).server("b")
    assert b is not None and b.phase == "ready" and b.restarts == 1
    assert len(pipe.messages()) == sent


def test_a_settled_start_with_every_server_ready_is_the_usual_all_ready(tmp_path: Path) -> None:
    child, pipe, sup, runner = make(tmp_path, ("a", "b"), start="settled")
    feed(child, sup.begin(0.0))
    bring_up(child, sup, "a", 101, 0.1)
    assert not child.started
    bring_up(child, sup, "b", 102, 0.2)
    assert child.started and runner.stops == 0
    messages = pipe.messages()
    assert [m["kind"] for m in messages].count("all-ready") == 1
    assert messages[-1]["kind"] == "all-ready" and messages[-1]["data"]["failed"] == []
    assert load(child.path).rpc_servers == "127.0.0.1:50052,127.0.0.1:50053"


def test_a_settled_start_fails_when_every_server_failed_for_good(tmp_path: Path) -> None:
    child, pipe, sup, runner = make(
        tmp_path, ("a", "b"), start="settled", policy=Policy(max_failures=1)
    )
    feed(child, sup.begin(0.0))
    sup.spawned("a", 101, 0.0)
    feed(child, sup.exited("a", 255, 0.1))
    assert not child.started and runner.stops == 0
    sup.spawned("b", 102, 0.0)
    feed(child, sup.exited("b", 255, 0.2))
    assert not child.started and runner.stops == 1
    assert "all-ready" not in [m["kind"] for m in pipe.messages()]
    with pytest.raises(LaunchError, match="b ended before it was ready"):
        child.raise_if_start_failed()
