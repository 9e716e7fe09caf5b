from __future__ import annotations

import pytest

from sdrpc_build.launch.state import Policy, ServerMachine, State, backoff_delay, describe_exit

P = Policy(
    backoff_initial=0.5, backoff_factor=2.0, backoff_max=4.0, max_failures=3, failure_window=60.0
)


def started(policy: Policy = P, ready: bool = True) -> ServerMachine:
    m = ServerMachine("s", policy)
    m.start(0.0)
    if ready:
        m.mark_ready(0.2)
    return m


def test_backoff_grows_and_caps() -> None:
    assert [backoff_delay(P, n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_describe_exit() -> None:
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_crash_after_ready_backs_off_then_restarts() -> None:
    m = started()
    info = m.exited(10.0, -9)
    assert info.failure
    assert info.was_ready
    assert m.state is State.BACKOFF
    assert m.next_start_at == pytest.approx(10.5)
    m.start(10.5)
    assert m.state is State.STARTING  # type: ignore[comparison-overlap]  # narrowing kept over the call
    assert m.restarts == 1
    assert m.generation == 2


@pytest.mark.parametrize("rc", [0, 1, -11])
def test_exit_before_ready_is_a_failure_even_with_status_0(rc: int) -> None:
    m = started(ready=False)
    info = m.exited(1.0, rc)
    assert info.failure
    assert not info.was_ready
    assert m.state is State.BACKOFF


def test_clean_exit_after_ready_depends_on_policy() -> None:
    m = started(Policy(restart="on-failure"))
    assert not m.exited(5.0, 0).failure
    assert m.state is State.EXITED
    m = started(Policy(restart="always", backoff_initial=0.25))
    m.exited(5.0, 0)
    assert m.state is State.BACKOFF
    assert m.next_start_at == pytest.approx(5.25)
    assert m.recent_failures(5.0) == 0  # a clean exit is not counted


def test_never_makes_a_failure_fatal() -> None:
    m = started(Policy(restart="never"))
    m.exited(5.0, -9)
    assert m.state is State.FATAL
    assert m.fatal_reason is not None
    assert "never" in m.fatal_reason


def test_too_many_failures_in_window_is_fatal() -> None:
    m = started()
    for t in (1.0, 2.0):
        m.exited(t, 1)
        assert m.state is State.BACKOFF
        m.start(t + 0.5)
    m.exited(3.0, 1)
    assert m.state is State.FATAL
    assert m.fatal_reason is not None
    assert "3 failures within 60 s" in m.fatal_reason


def test_failures_outside_window_are_forgotten() -> None:
    m = started()
    for t in (1.0, 100.0, 200.0, 300.0):
        m.exited(t, 1)
        assert m.state is State.BACKOFF
        assert m.next_start_at == pytest.approx(t + 0.5)  # back to the first delay
        m.start(t + 0.5)


def test_permanent_failure_is_fatal_at_once() -> None:
    m = started(ready=False)
    m.exited(0.1, 0, "unknown argument: --bogus", permanent=True)
    assert m.state is State.FATAL
    assert m.fatal_reason is not None
    assert "unknown argument" in m.fatal_reason


def test_kill_reason_set_by_supervisor_is_reported() -> None:
    m = started(ready=False)
    m.mark_killing("not ready after 60 s")
    info = m.exited(61.0, -9)
    assert info.reason == "not ready after 60 s"
    assert m.state is State.BACKOFF


def test_stop_paths() -> None:
    m = started()
    assert m.stop(1.0)
    assert m.state is State.STOPPING
    assert m.stop_deadline == pytest.approx(1.0 + P.stop_timeout)
    info = m.exited(1.2, -15)
    assert not info.failure
    assert m.state is State.EXITED  # type: ignore[comparison-overlap]  # narrowing kept over the call
    m = started()
    m.exited(1.0, -9)
    assert not m.stop(1.1)  # BACKOFF: nothing to signal
    assert m.state is State.EXITED
    m = started(ready=False)
    m.exited(0.1, 0, "x", permanent=True)
    assert not m.stop(1.0)
    assert m.state is State.FATAL
