"""The fleet's use cases: up, down, status. They return values; the CLI renders them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from sdrpc_build.build.pins import SdPins
from sdrpc_build.build.pipeline import build, source_tree
from sdrpc_build.build.store import Manifest
from sdrpc_build.errors import SdrpcError
from sdrpc_build.fleet import local as local_host
from sdrpc_build.fleet.groups import (
    CLIENT,
    Doctor,
    Group,
    client_platform,
    parse_doctor,
    plan_groups,
    platform_tag,
)
from sdrpc_build.fleet.hostbuild import (
    BUILD_ROOT,
    build_argv,
    cached_server,
    install_wheel,
    server_key,
    source_tar,
)
from sdrpc_build.fleet.model import Fleet, FleetServer, Host
from sdrpc_build.fleet.payload import Member, write_payload
from sdrpc_build.fleet.pins import build_options, client_pins
from sdrpc_build.fleet.runner import HostOutcome, host_vars, run_playbook, work_dir
from sdrpc_build.fleet.servers_toml import render_servers_toml
from sdrpc_build.fleet.tunnels import (
    TunnelSpec,
    TunnelStatus,
    close_tunnels,
    open_tunnels,
    tunnel_status,
)
from sdrpc_build.fleet.units import INSTALL_ROOT, ServerUnit, render_unit
from sdrpc_build.fleet.wheelhouse import build_wheelhouse
from sdrpc_build.launch.activity import ActivityState, parse_activity
from sdrpc_build.launch.private import write_private
from sdrpc_build.protocol.compat import ClientSpec, judge
from sdrpc_build.protocol.probe import probe

__all__ = [
    "BuildReport",
    "HostReport",
    "ServerState",
    "UpResult",
    "bind_address",
    "down",
    "local_instance",
    "parse_show",
    "parse_status",
    "ssh_config",
    "status",
    "tunnel_instance",
    "tunnels",
    "up",
]

READY_RETRIES = 30  # readiness on the host: this many tries, 1 s apart
CHECK_TIMEOUT = 3.0
STATUS_TASK = "sdrpc status"
STATE_TASK = "sdrpc host state"
DOCTOR_TASK = "sdrpc doctor"
DETACH_CONFIG = "detach/servers.toml"  # in the payload: what sdrpc-launch runs without systemd
DETACH_CACHE = PurePosixPath("/var/cache/sdrpc")  # a server's cache there, as its unit's


@dataclass(frozen=True)
class HostReport:
    name: str
    ok: bool
    changed: int
    endpoints: tuple[str, ...]  # address:port of each server, config order
    task: Optional[str] = None
    reason: Optional[str] = None


@dataclass(frozen=True)
class BuildReport:
    """Who provided the server of one (backend, platform) group: "client" (built or found
    here), "cache" (a host built it at an earlier up), a host's name, or None (nobody could)."""

    backend: str
    platform: str
    hosts: tuple[str, ...]
    builder: Optional[str]
    seconds: float = 0.0
    reason: Optional[str] = None


@dataclass(frozen=True)
class UpResult:
    hosts: tuple[HostReport, ...]
    transport: str
    rpc_servers: Optional[str]  # under lan, when every host is ok
    seconds: float
    builds: tuple[BuildReport, ...] = ()

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)


@dataclass(frozen=True)
class ServerState:
    host: str
    unit: str
    active: str
    sub: str
    restarts: Optional[int]
    pid: Optional[int]
    activity: ActivityState = "unknown"  # busy/idle, from its log since its last start


def ssh_config(fleet: Fleet, env: Mapping[str, str]) -> Optional[Path]:
    """``$SDRPC_SSH_CONFIG`` > [client] ssh-config > none (ssh reads ~/.ssh/config)."""
    given = env.get("SDRPC_SSH_CONFIG", "").strip()
    return Path(given).expanduser() if given else fleet.client.ssh_config


def bind_address(fleet: Fleet, host: Host) -> str:
    if fleet.client.transport == "lan":
        return host.address or "127.0.0.1"
    return "127.0.0.1"


def _build_line(m: Manifest) -> str:
    return f"{m.backend}, llama.cpp {m.commit[:12]}, GGML_MAX_NAME {m.max_name}"


def _check_argv(pins: SdPins, endpoints: list[str]) -> list[str]:
    argv = [str(INSTALL_ROOT / "venv/bin/sdrpc-check"), "--timeout", str(CHECK_TIMEOUT)]
    if pins.max_name.value is not None:
        argv += ["--expect-max-name", str(pins.max_name.value)]
    if pins.client_protocol.value is not None:
        argv += ["--expect-proto", str(pins.client_protocol.value)]
    return argv + endpoints


def _up_vars(
    fleet: Fleet,
    host: Host,
    pins: SdPins,
    builds: Optional[Mapping[str, Manifest]],
    wheelhouse: Path,
    payload_dir: Optional[Path],
    cfg: Optional[Path],
    replace: bool,
) -> dict[str, Any]:
    """The host vars of up.yml; without ``builds`` (not provided yet) those of prepare.yml."""
    bind = bind_address(fleet, host)
    v: dict[str, Any] = {
        **host_vars(host, cfg),
        "sdrpc_root": str(INSTALL_ROOT),
        "sdrpc_wheelhouse": str(wheelhouse),
        "sdrpc_wheelhouse_digest": wheelhouse.stem,
        "sdrpc_host_args": {
            "root": str(INSTALL_ROOT),
            "units": [s.unit for s in host.servers],
            "ports": [s.port for s in host.servers],
            "allowed": [[str(pins.llama_commit.value), pins.max_name.value]],
            "replace": replace,
        },
        "sdrpc_check_argv": _check_argv(pins, [f"{bind}:{s.port}" for s in host.servers]),
        "sdrpc_ready_retries": READY_RETRIES,
    }
    if builds is None or payload_dir is None:
        return v
    members: dict[str, Member] = {}
    units = []
    for s in host.servers:
        m = builds[s.backend]
        binary = PurePosixPath("servers", m.key, "bin", m.binary.name)
        units.append(ServerUnit(s, INSTALL_ROOT / binary, bind, _build_line(m)))
        text = render_unit(units[-1])
        members[f"units/{s.unit}"] = Member(f"units/{s.unit}", text.encode())
        members[str(binary)] = Member(str(binary), m.binary.read_bytes(), 0o755)
        man = f"servers/{m.key}/manifest.json"
        members[man] = Member(man, (m.path / "manifest.json").read_bytes())
    detach = render_servers_toml(units, DETACH_CACHE)  # for a host without systemd
    members[DETACH_CONFIG] = Member(DETACH_CONFIG, detach.encode())
    payload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = payload_dir / f"{host.name}.tar"
    v["sdrpc_payload"] = str(payload)
    v["sdrpc_payload_sha256"] = write_payload(payload, list(members.values()))
    return v


def tunnel_instance(fleet: Fleet) -> str:
    """The detached instance (sdrpc-launch status --instance NAME) holding this fleet's
    tunnels: one per fleet.toml (its resolved path)."""
    digest = hashlib.sha256(str(fleet.path.resolve()).encode()).hexdigest()[:10]
    return f"fleet-{digest}"


def local_instance(fleet: Fleet) -> str:
    """The detached instance running the servers of the fleet's ``ssh = "local"`` host."""
    return f"{tunnel_instance(fleet)}-local"


def _tunnel_spec(h: Host, cfg: Optional[Path]) -> TunnelSpec:
    target = f"{h.ssh.user}@{h.ssh.host}" if h.ssh.user else str(h.ssh.host)
    options = ("-o", f"Port={h.ssh.port}") if h.ssh.port else ()
    return TunnelSpec(h.name, target, tuple(s.port for s in h.servers), options, cfg)


def _open_tunnels(
    fleet: Fleet, hosts: list[Host], env: Mapping[str, str], cache_root: Path
) -> dict[str, tuple[str, ...]]:
    """Under ssh: one supervised ``ssh -N -L`` per remote host; host -> local endpoints
    (a host on this machine, ``ssh = "local"``, needs no tunnel: its 127.0.0.1 is ours)."""
    cfg = ssh_config(fleet, env)
    remote = [h for h in hosts if not h.ssh.local]
    out = {h.name: tuple(f"127.0.0.1:{s.port}" for s in h.servers) for h in hosts if h.ssh.local}
    if remote:
        state = open_tunnels(
            [_tunnel_spec(h, cfg) for h in remote],
            cache_root=cache_root,
            instance=tunnel_instance(fleet),
            env=env,
        )
        for t in state.tunnels:
            out[t.spec.host] = tuple(f"127.0.0.1:{f.local}" for f in t.forwards)
    return out


def _client_check(
    fleet: Fleet, pins: SdPins, hosts: list[Host], endpoints: Mapping[str, tuple[str, ...]]
) -> dict[str, str]:
    """Every server of ``hosts`` probed from here (at ``endpoints``: the host's address
    under lan, the tunnel under ssh) against the pins, once, at ``up``; host -> why."""
    spec = ClientSpec(
        protocol=pins.client_protocol.value, max_name=pins.max_name.value, source="fleet.toml"
    )
    targets = [
        (h, s, ep) for h in hosts for s, ep in zip(h.servers, endpoints[h.name], strict=True)
    ]

    def one(t: tuple[Host, FleetServer, str]) -> tuple[str, Optional[str]]:
        h, s, ep = t
        address, _, port = ep.rpartition(":")
        r = probe(address, int(port), timeout=CHECK_TIMEOUT, expect_max_name=spec.max_name)
        v = judge(r, spec)
        return h.name, None if v.kind == "compatible" else f"{s.name}: " + "; ".join(v.reasons)

    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as pool:
        for name, why in pool.map(one, targets):
            if why:
                bad[name] = f"{bad[name]}; {why}" if name in bad else why
    return bad


def _report(fleet: Fleet, h: Host, o: HostOutcome) -> HostReport:
    bind = bind_address(fleet, h)
    eps = tuple(f"{bind}:{s.port}" for s in h.servers)
    return HostReport(h.name, o.ok, o.changed, eps, o.task, o.reason)


def _host_key(fleet: Fleet, h: Host, cfg: Optional[Path]) -> str:
    """A host's identity for the platform record: how ssh reaches it."""
    return f"{cfg or ''}|{h.ssh}" if not h.ssh.local else "local"


def _load_platforms(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(k): [str(x) for x in v] for k, v in data.items() if isinstance(v, list) and len(v) == 4
    }


def _facts_of(out: str) -> Optional[list[str]]:
    try:
        facts = json.loads(out)["platform"]
    except (ValueError, KeyError, TypeError):
        return None
    return [str(x) for x in facts] if isinstance(facts, list) and len(facts) == 4 else None


class _Provider:
    """The servers of each (backend, platform) group, from here, the cache or a host."""

    def __init__(self, fleet: Fleet, pins: SdPins, env: Mapping[str, str], cache_root: Path):
        self.fleet, self.pins, self.env, self.cache_root = fleet, pins, env, cache_root
        self.here = client_platform()

    def cached(self, backend: str, platform: str) -> bool:
        return cached_server(self.cache_root, server_key(self.pins, backend, platform)) is not None

    def needs_host_build(self, backend: str, platform: str) -> bool:
        here = self.fleet.client.build_on == CLIENT and platform == self.here
        return not here and not self.cached(backend, platform)

    def provide(self, g: Group) -> Optional[Manifest]:
        if g.builder == CLIENT:
            opts = build_options(self.fleet.client, g.backend, self.cache_root)
            return build(self.pins, opts, self.env).manifest
        if g.builder == "cache":
            return cached_server(self.cache_root, server_key(self.pins, g.backend, g.platform))
        return None


def _prepare_vars(h: Host, up_vars: Mapping[str, Any]) -> dict[str, Any]:
    v = {k: val for k, val in up_vars.items() if not k.startswith("sdrpc_payload")}
    v["sdrpc_payload_sha256"] = ""
    args = dict(v["sdrpc_host_args"])
    args.pop("platform", None)  # not known yet: this play learns it
    v["sdrpc_host_args"] = args
    backends = sorted({s.backend for s in h.servers})
    v["sdrpc_doctor_argv"] = [
        str(INSTALL_ROOT / "venv/bin/sdrpc"),
        "doctor",
        "--json",
        "--cache-dir",
        str(INSTALL_ROOT / BUILD_ROOT / "cache"),
        *[w for b in backends for w in ("--backend", b)],
    ]
    return v


def _build_on_hosts(
    fleet: Fleet,
    pins: SdPins,
    groups: list[Group],
    base_vars: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str],
    cache_root: Path,
    work: Path,
    timeout: float,
) -> tuple[dict[tuple[str, str], Manifest], dict[tuple[str, str], str]]:
    """Each group's builder builds its server with its own sdrpc-build; the wheels come back
    and are unpacked here. (backend, platform) -> server, and -> why it failed."""
    if fleet.client.exact:  # the sd.cpp tree's ggml is here, not on the hosts
        why = (
            "'exact = true' builds only on the client, and this group's platform is not "
            f"the client's ({client_platform()})"
        )
        return {}, {(g.backend, g.platform): why for g in groups}
    opts = build_options(fleet.client, groups[0].backend, cache_root)
    source = source_tree(pins, opts, env)
    tar = source_tar(source, cache_root)
    fetched = work / "wheels"
    fetched.mkdir(mode=0o700)
    by_builder: dict[str, list[Group]] = {}
    for g in groups:
        assert g.builder is not None
        by_builder.setdefault(g.builder, []).append(g)
    hv = {}
    for who, mine in by_builder.items():
        hv[who] = {
            **{k: v for k, v in base_vars[who].items() if k in _CONNECTION_VARS},
            "sdrpc_root": str(INSTALL_ROOT),
            "sdrpc_source_tar": str(tar),
            "sdrpc_commit": source.commit,
            "sdrpc_fetch_dir": str(fetched),
            "sdrpc_builds": [
                {
                    "backend": g.backend,
                    "argv": build_argv(
                        str(INSTALL_ROOT / "venv/bin/sdrpc-build"),
                        pins,
                        g.backend,
                        str(INSTALL_ROOT / BUILD_ROOT / "cache"),
                        str(INSTALL_ROOT / BUILD_ROOT / "out"),
                        fleet.client.llama_sdist,
                    ),
                }
                for g in mine
            ],
        }
    play = run_playbook("build.yml", hv, work, timeout=timeout)
    built: dict[tuple[str, str], Manifest] = {}
    failed: dict[tuple[str, str], str] = {}
    for g in groups:
        gk = (g.backend, g.platform)
        who = str(g.builder)
        o = play.host(who)
        if not o.ok:
            failed[gk] = f"the build on {who} failed ({o.task}): {o.reason}"
            continue
        try:
            built[gk] = install_wheel(
                fetched / f"{who}-{g.backend}.whl",
                cache_root,
                server_key(pins, g.backend, g.platform),
                pins,
                g.backend,
                who,
            )
        except (SdrpcError, OSError, zipfile.BadZipFile) as exc:
            failed[gk] = f"the server wheel {who} built is unusable: {exc}"
    return built, failed


_CONNECTION_VARS = (
    "ansible_python_interpreter",
    "ansible_connection",
    "ansible_host",
    "ansible_user",
    "ansible_port",
    "ansible_ssh_common_args",
)


def _learn(
    fleet: Fleet,
    hosts: list[Host],
    base: Mapping[str, Mapping[str, Any]],
    work: Path,
    timeout: float,
) -> tuple[dict[str, list[str]], dict[str, dict[str, Doctor]], dict[str, HostReport]]:
    """The prepare play: sdrpc's venv on every host, each host's platform facts and its build
    preflight (sdrpc doctor). Facts, doctor verdicts, and the hosts that failed."""
    prep = run_playbook(
        "prepare.yml",
        {h.name: _prepare_vars(h, base[h.name]) for h in hosts},
        work,
        timeout=timeout,
        want_outputs=[STATE_TASK, DOCTOR_TASK],
    )
    facts: dict[str, list[str]] = {}
    doctor: dict[str, dict[str, Doctor]] = {}
    failed: dict[str, HostReport] = {}
    for h in hosts:
        o = prep.host(h.name)
        outs = dict(o.outputs)
        got = _facts_of(outs.get(STATE_TASK, ""))
        if got is not None:
            facts[h.name] = got
        if not o.ok:
            failed[h.name] = _report(fleet, h, o)
        elif DOCTOR_TASK in outs:
            doctor[h.name] = parse_doctor(outs[DOCTOR_TASK], sorted({s.backend for s in h.servers}))
    return facts, doctor, failed


def _up_remote(  # noqa: PLR0915 (the phases of up on remote hosts, in order)
    fleet: Fleet,
    hosts: list[Host],
    pins: SdPins,
    env: Mapping[str, str],
    cache_root: Path,
    timeout: float,
    replace: bool,
) -> tuple[dict[str, HostReport], tuple[BuildReport, ...]]:
    """Learn the hosts' platforms (once), provide each (backend, platform) group's server
    (here, from the cache, or built on a host), install and start them: a report per host."""
    t0 = time.monotonic()
    wheelhouse = build_wheelhouse(cache_root, env)
    cfg = ssh_config(fleet, env)
    prov = _Provider(fleet, pins, env, cache_root)
    record = cache_root / "fleet" / "platforms.json"
    facts = _load_platforms(record)
    known = {
        h.name: facts[_host_key(fleet, h, cfg)] for h in hosts if _host_key(fleet, h, cfg) in facts
    }
    failed: dict[str, HostReport] = {}
    doctor: dict[str, dict[str, Doctor]] = {}
    reports_b: list[BuildReport] = []

    def remaining() -> float:
        return max(1.0, timeout - (time.monotonic() - t0))

    with work_dir(cache_root) as work:
        base = {
            h.name: _up_vars(fleet, h, pins, None, wheelhouse, None, cfg, replace) for h in hosts
        }
        must_build = any(
            prov.needs_host_build(s.backend, platform_tag(*known[h.name]))
            for h in hosts
            if h.name in known
            for s in h.servers
        )
        if must_build or any(h.name not in known for h in hosts):
            learned, doctor, failed = _learn(fleet, hosts, base, work, remaining())
            known.update(learned)
            facts.update((_host_key(fleet, fleet.host(n), cfg), f) for n, f in learned.items())
            _save_platforms(record, facts)
        tags = {n: platform_tag(*f) for n, f in known.items()}
        healthy = {h.name: tags[h.name] for h in hosts if h.name not in failed and h.name in tags}
        groups = plan_groups(fleet, healthy, prov.here, doctor, prov.cached)
        manifests: dict[tuple[str, str], Manifest] = {}
        group_failed: dict[tuple[str, str], str] = {}
        for g in groups:
            tb = time.monotonic()
            m = prov.provide(g)  # this machine cannot build its group: up stops, as sdrpc-build
            if m is not None:
                manifests[(g.backend, g.platform)] = m
            secs = round(time.monotonic() - tb, 2)
            reports_b.append(BuildReport(g.backend, g.platform, g.hosts, g.builder, secs))
        on_hosts = [g for g in groups if g.builder not in (None, CLIENT, "cache")]
        if on_hosts:
            tb = time.monotonic()
            built, group_failed = _build_on_hosts(
                fleet, pins, on_hosts, base, env, cache_root, work, remaining()
            )
            manifests.update(built)
            secs = round(time.monotonic() - tb, 2)
            reports_b = [
                dataclasses.replace(
                    r, seconds=secs, reason=group_failed.get((r.backend, r.platform))
                )
                if r.builder not in (None, CLIENT, "cache")
                else r
                for r in reports_b
            ]
        for g in groups:
            for name, why in g.failed.items():
                failed.setdefault(name, HostReport(name, False, 0, (), "preflight", why))
            for name in g.hosts if (g.backend, g.platform) in group_failed else ():
                why = group_failed[(g.backend, g.platform)]
                failed.setdefault(name, HostReport(name, False, 0, (), "build", why))
        hv = {}
        for h in hosts:
            if h.name in failed:
                continue
            per = {s.backend: manifests[(s.backend, tags[h.name])] for s in h.servers}
            hv[h.name] = _up_vars(fleet, h, pins, per, wheelhouse, work / "payload", cfg, replace)
            hv[h.name]["sdrpc_host_args"]["platform"] = known[h.name]
        if hv:
            play = run_playbook("up.yml", hv, work, timeout=remaining(), want_outputs=[STATE_TASK])
            for o in play.hosts:  # a host whose platform changed: learned for the next up
                failed[o.name] = _report(fleet, fleet.host(o.name), o)
                got = _facts_of(dict(o.outputs).get(STATE_TASK, ""))
                if got is not None:
                    facts[_host_key(fleet, fleet.host(o.name), cfg)] = got
            _save_platforms(record, facts)
    return failed, tuple(reports_b)


def up(
    fleet: Fleet,
    env: Mapping[str, str],
    cache_root: Path,
    *,
    timeout: float = 1800.0,
    replace: bool = False,
) -> UpResult:
    """Provide the servers for [client]'s pins (built here, found, or built on one host per
    (backend, platform) group), install and start them everywhere.

    A host where a port is taken by a process sdrpc did not start, or where an sdrpc server
    built for other pins runs (unless ``replace``), fails alone and is left as it was; so does
    a host whose preflight says it cannot build the server it must build."""
    t0 = time.monotonic()
    pins = client_pins(fleet.client, env)
    remote = [h for h in fleet.hosts if not h.ssh.local]  # "local": the launch wing, here
    done: dict[str, HostReport] = {
        h.name: _report(
            fleet,
            h,
            local_host.up(
                fleet,
                h,
                pins,
                env,
                cache_root,
                instance=local_instance(fleet),
                bind=bind_address(fleet, h),
                replace=replace,
            ),
        )
        for h in fleet.hosts
        if h.ssh.local
    }
    builds: tuple[BuildReport, ...] = ()
    if remote:
        remaining = max(1.0, timeout - (time.monotonic() - t0))
        got, builds = _up_remote(fleet, remote, pins, env, cache_root, remaining, replace)
        done.update(got)
    reports = [done[h.name] for h in fleet.hosts]
    healthy_hosts = [h for h, r in zip(fleet.hosts, reports, strict=True) if r.ok]
    if fleet.client.transport == "ssh":  # reached through tunnels: their local ports
        local = _open_tunnels(fleet, healthy_hosts, env, cache_root)
        reports = [
            dataclasses.replace(r, endpoints=local.get(r.name, r.endpoints)) for r in reports
        ]
    endpoints = {r.name: r.endpoints for r in reports}
    # a host that changed nothing was checked when it changed; it may be serving sd-cli now
    changed = [h for h, r in zip(fleet.hosts, reports, strict=True) if r.ok and r.changed]
    bad = _client_check(fleet, pins, changed, endpoints)
    reports = [
        HostReport(r.name, False, r.changed, r.endpoints, "client check", bad[r.name])
        if r.name in bad
        else r
        for r in reports
    ]
    ok = all(r.ok for r in reports)
    rpc = ",".join(e for r in reports for e in r.endpoints) if ok else None
    return UpResult(tuple(reports), fleet.client.transport, rpc, time.monotonic() - t0, builds)


def _save_platforms(path: Path, facts: Mapping[str, list[str]]) -> None:
    write_private(path, json.dumps(dict(sorted(facts.items())), indent=1) + "\n")


def _plain_vars(fleet: Fleet, env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    cfg = ssh_config(fleet, env)
    return {
        h.name: {**host_vars(h, cfg), "sdrpc_root": str(INSTALL_ROOT)}
        for h in fleet.hosts
        if not h.ssh.local  # local.py's
    }


def down(
    fleet: Fleet, env: Mapping[str, str], cache_root: Path, *, timeout: float = 600.0
) -> tuple[HostOutcome, ...]:
    """Close this fleet's tunnels; stop and remove every sdrpc unit and /opt/sdrpc on every
    host (the local host's instance and files)."""
    close_tunnels(tunnel_instance(fleet), cache_root)
    done = {
        h.name: local_host.down(h, cache_root, instance=local_instance(fleet))
        for h in fleet.hosts
        if h.ssh.local
    }
    hv = _plain_vars(fleet, env)
    if hv:
        with work_dir(cache_root) as work:
            done.update(
                (o.name, o) for o in run_playbook("down.yml", hv, work, timeout=timeout).hosts
            )
    return tuple(done[h.name] for h in fleet.hosts)


def tunnels(fleet: Fleet, cache_root: Path) -> TunnelStatus:
    """The client side of ``status`` under ssh: per host, its tunnel (never the RPC port)."""
    return tunnel_status(tunnel_instance(fleet), cache_root)


def parse_show(host: str, text: str) -> list[ServerState]:
    """``systemctl show --property=...`` of several units (blank-line separated)."""
    out = []
    for block in text.strip().split("\n\n"):
        kv = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" not in kv:
            continue
        restarts = kv.get("NRestarts", "")
        pid = kv.get("MainPID", "")
        out.append(
            ServerState(
                host,
                kv["Id"],
                kv.get("ActiveState", "?"),
                kv.get("SubState", "?"),
                int(restarts) if restarts.isdigit() else None,
                int(pid) if pid.isdigit() and int(pid) > 0 else None,
            )
        )
    return out


def parse_status(host: str, out: str) -> list[ServerState]:
    """The host side's ``status`` JSON: state from ``systemctl show``, busy/idle from the lines
    the server logged since its last start (a server that is not running: unknown)."""
    try:
        obj = json.loads(out)
        servers = obj["servers"]
    except (ValueError, KeyError, TypeError):
        return []
    states = []
    for srv in servers:
        for st in parse_show(host, str(srv.get("show", ""))):
            running = st.active == "active" and st.sub == "running"
            act = parse_activity(str(x) for x in srv.get("log", [])).state if running else "unknown"
            states.append(dataclasses.replace(st, activity=act))
    # a host without systemd: its sdrpc-launch instance (sdrpc-launch status --json)
    return states + [ServerState(host, *row) for row in local_host.launch_rows(obj.get("launch"))]


def status(
    fleet: Fleet, env: Mapping[str, str], cache_root: Path, *, timeout: float = 300.0
) -> tuple[list[ServerState], tuple[HostOutcome, ...]]:
    """Each server's unit state, restarts and busy/idle; no server is probed."""
    states: list[ServerState] = []
    done: dict[str, HostOutcome] = {}
    for h in fleet.hosts:
        if h.ssh.local:
            rows, done[h.name] = local_host.status(h, cache_root, instance=local_instance(fleet))
            states += [ServerState(h.name, *row) for row in rows]
    hv = _plain_vars(fleet, env)
    if hv:
        with work_dir(cache_root) as work:
            play = run_playbook("status.yml", hv, work, timeout=timeout, want_outputs=[STATUS_TASK])
        done.update((o.name, o) for o in play.hosts)
        states += [
            st
            for o in play.hosts
            for task, out in o.outputs
            if task == STATUS_TASK
            for st in parse_status(o.name, out)
        ]
    order = [h.name for h in fleet.hosts]
    states.sort(key=lambda st: order.index(st.host))  # fleet order, servers in host order
    return states, tuple(done[n] for n in order)
