from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from sdrpc_build.launch.readiness import Readiness, RemoteDevice
from sdrpc_build.launch.spec import ServerSpec
from sdrpc_build.launch.state import Policy, State
from sdrpc_build.launch.supervisor import Action, Event, Kill, Probe, Prune, Spawn, Supervisor

BIN = Path("/x/ggml-rpc-server")
POLICY = Policy(
    backoff_initial=0.5, max_failures=3, ready_timeout=10.0, stop_timeout=5.0, probe_interval=0.1
)
GIB = 1024**3
READY = Readiness("ready", protocol="5.0.0", devices=(RemoteDevice(0, 10 * GIB, 16 * GIB),))


def spec(name: str, port: int, **kw: object) -> ServerSpec:
    return ServerSpec(name=name, binary=BIN, port=port, **kw)  # type: ignore[arg-type]


def events(actions: Sequence[Action], kind: str | None = None) -> list[Event]:
    return [a for a in actions if isinstance(a, Event) and (kind is None or a.kind == kind)]


def banner(sup: Supervisor, name: str, dev: str, now: float) -> list[Action]:
    out: list[Action] = []
    for line in [
        "Starting RPC server v5.0.0",
        "Devices:",
        f"  {dev}: Fake GPU (16384 MiB, 10240 MiB free)",
        "  transport      : TCP",
    ]:
        out += sup.line(name, line, now)
    return out


def bring_up(sup: Supervisor, now: float = 0.0) -> list[Action]:
    acts: list[Action] = list(sup.begin(now))
    for i, name in enumerate(sup.servers):
        sup.spawned(name, 100 + i, now)
        banner(sup, name, f"CUDA{i}", now)
    probes = [a for a in sup.tick(now) if isinstance(a, Probe)]
    for p in probes:
        acts += sup.probed(p.server, p.generation, READY, now + 0.05)
    return acts


def test_begin_spawns_every_server_in_order() -> None:
    sup = Supervisor([spec("a", 1), spec("b", 2)], POLICY)
    acts = sup.begin(0.0)
    assert [a.server for a in acts if isinstance(a, Spawn)] == ["a", "b"]
    assert [e.kind for e in events(acts)] == ["starting", "starting"]


def test_probe_is_scheduled_and_banner_makes_it_immediate() -> None:
    sup = Supervisor([spec("a", 1)], POLICY)
    sup.begin(0.0)
    sup.spawned("a", 100, 0.0)
    assert sup.tick(0.05) == []
    assert sup.next_deadline() == 0.1
    banner(sup, "a", "CUDA0", 0.06)
    acts = sup.tick(0.06)
    assert acts == [Probe("a", 1)]
    assert sup.tick(0.5) == []  # one probe in flight at a time
    sup.probed("a", 1, Readiness("retry"), 0.07)
    assert sup.tick(0.1) == []
    assert sup.tick(0.18) == [Probe("a", 1)]


def test_all_ready_gives_client_string_and_device_map() -> None:
    sup = Supervisor([spec("a", 50052), spec("b", 50053, host="0.0.0.0")], POLICY)
    acts = bring_up(sup)
    assert [e.server for e in events(acts, "ready")] == ["a", "b"]
    (all_ready,) = events(acts, "all-ready")
    assert all_ready.data["rpc_servers"] == "127.0.0.1:50052,127.0.0.1:50053"
    rows = all_ready.data["devices"]
    assert [(r.rpc_name, r.server, r.name, r.total) for r in rows] == [  # type: ignore[attr-defined]
        ("RPC0", "a", "CUDA0", 16 * GIB),
        ("RPC1", "b", "CUDA1", 16 * GIB),
    ]
    assert all(s.machine.state is State.READY for s in sup.servers.values())


def test_pre_v3_server_contributes_one_device() -> None:
    sup = Supervisor([spec("a", 1)], POLICY)
    sup.begin(0.0)
    sup.spawned("a", 1, 0.0)
    (_p,) = sup.tick(0.2)
    two = Readiness(
        "ready", protocol="2.0.0", devices=(RemoteDevice(0, 1, 2), RemoteDevice(1, 1, 2))
    )
    acts = sup.probed("a", 1, two, 0.3)
    assert len(events(acts, "all-ready")[0].data["devices"]) == 1  # type: ignore[arg-type]


def test_crash_restarts_on_same_port_after_backoff() -> None:
    sup = Supervisor([spec("a", 50052)], POLICY)
    bring_up(sup)
    acts = sup.exited("a", -signal.SIGKILL, 10.0)
    kinds = [e.kind for e in events(acts)]
    assert kinds == ["exited", "restarting"]
    assert events(acts, "exited")[0].data["failure"] is True
    assert sup.next_deadline() == 10.5
    assert sup.tick(10.4) == []
    acts = sup.tick(10.5)
    assert Spawn("a") in acts
    assert sup.servers["a"].spec.port == 50052
    assert sup.servers["a"].machine.generation == 2


def test_stale_probe_result_is_ignored() -> None:
    sup = Supervisor([spec("a", 1)], POLICY)
    sup.begin(0.0)
    sup.spawned("a", 1, 0.0)
    (action,) = sup.tick(0.2)
    p = cast(Probe, action)  # typing only: tick() returns the Action union
    sup.exited("a", 1, 0.3)
    sup.tick(0.8)  # restarted: generation 2
    assert sup.probed("a", p.generation, READY, 0.9) == []
    assert sup.servers["a"].machine.state is State.STARTING


def test_bad_flag_is_fatal_with_the_servers_message_and_others_keep_running() -> None:
    sup = Supervisor([spec("good", 1), spec("bad", 2)], POLICY)
    sup.begin(0.0)
    sup.spawned("good", 1, 0.0)
    sup.spawned("bad", 2, 0.0)
    for line in ["error: unknown argument: --bogus", "Usage: x [options]"]:
        sup.line("bad", line, 0.01)
    acts = sup.exited("bad", 0, 0.02)
    (fatal,) = events(acts, "fatal")
    assert "unknown argument: --bogus" in str(fatal.data["reason"])
    assert "error: unknown argument: --bogus" in fatal.data["tail"]  # type: ignore[operator]
    (p,) = [a for a in sup.tick(0.2) if isinstance(a, Probe)]
    acts = sup.probed("good", p.generation, READY, 0.3)
    (all_ready,) = events(acts, "all-ready")
    assert all_ready.data["rpc_servers"] == "127.0.0.1:1"
    assert not sup.done
    assert [s.spec.name for s in sup.fatal] == ["bad"]


def test_repeated_failures_become_fatal() -> None:
    sup = Supervisor([spec("a", 1)], POLICY)
    sup.begin(0.0)
    now = 0.0
    kinds: list[str] = []
    for _ in range(3):
        sup.spawned("a", 1, now)
        sup.line("a", "Failed to create server socket", now)
        kinds += [e.kind for e in events(sup.exited("a", 0, now + 0.01))]
        now += 10.0
        sup.tick(now)
    assert kinds[-1] == "fatal"
    assert kinds.count("restarting") == 2
    assert sup.done


def test_not_ready_in_time_is_killed_and_counted() -> None:
    sup = Supervisor([spec("a", 1)], POLICY)
    sup.begin(0.0)
    sup.spawned("a", 1, 0.0)
    (_p,) = sup.tick(0.2)
    assert Kill("a", signal.SIGKILL) in sup.tick(10.0)
    acts = sup.exited("a", -9, 10.1)
    assert "not ready after 10 s" in str(events(acts, "exited")[0].data["reason"])
    assert sup.servers["a"].machine.state is State.BACKOFF


def test_wrong_server_fails_readiness_and_is_fatal() -> None:
    sup = Supervisor([spec("a", 1, max_name=160)], POLICY)
    sup.begin(0.0)
    sup.spawned("a", 1, 0.0)
    (_p,) = sup.tick(0.2)
    acts = sup.probed("a", 1, Readiness("fail", "GGML_MAX_NAME is 64"), 0.3)
    assert acts == [Kill("a", signal.SIGKILL)]
    acts = sup.exited("a", -9, 0.4)
    assert "GGML_MAX_NAME is 64" in str(events(acts, "fatal")[0].data["reason"])


def test_stop_sends_sigterm_then_sigkill_and_finishes() -> None:
    sup = Supervisor([spec("a", 1), spec("b", 2)], POLICY)
    bring_up(sup)
    acts = sup.stop(20.0)
    assert [a for a in acts if isinstance(a, Kill)] == [
        Kill("a", signal.SIGTERM),
        Kill("b", signal.SIGTERM),
    ]
    sup.exited("a", -15, 20.1)
    assert sup.tick(24.9) == []
    assert sup.tick(25.0) == [Kill("b", signal.SIGKILL)]
    acts = sup.exited("b", -9, 25.1)
    assert [e.kind for e in events(acts)] == ["exited", "stopped"]
    assert sup.done
    assert sup.fatal == []


def test_busy_idle_only_after_ready_and_prune_when_idle() -> None:
    sup = Supervisor([spec("a", 1, cache_dir=Path("/c"), cache_max_size=100)], POLICY)
    acts = sup.begin(0.0)
    assert Prune("a") in acts  # pruned before each start
    sup.spawned("a", 1, 0.0)
    assert sup.line("a", "Accepted client connection", 0.1) == []  # our own probe
    (_p,) = sup.tick(0.2)
    sup.probed("a", 1, READY, 0.3)
    assert sup.line("a", "Client connection closed", 0.31) == []  # tail of our probe
    acts = sup.line("a", "Accepted client connection", 1.0)
    assert [e.kind for e in events(acts)] == ["busy"]
    acts = sup.line("a", "Client connection closed", 2.0)
    assert [e.kind for e in events(acts)] == ["idle"]
    assert Prune("a") in acts
    assert Prune("a") in sup.tick(0.3 + 60.0)  # and periodically
