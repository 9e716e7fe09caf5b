"""The client's SSH tunnels to a fleet's hosts, supervised in the background by launch/.

One ``ssh -N -L 127.0.0.1:L:127.0.0.1:R [-L ...] HOST`` per host carries all of that host's
servers (which stay bound to the host's 127.0.0.1). The ssh processes are the "servers" of a
detached launch/ instance (``sdrpc-launch status/stop --instance NAME`` see it too): own process
group, parent-death signal, state file, logs in ``<cache>/logs/<instance>/<host>.log``.

* Ready = a real ggml RPC HELLO answered *through* the tunnel, once per (re)start; after that
  nothing touches the RPC ports (a server serves one client at a time: a probe while sd-cli is
  connected would hang). Liveness is the ssh process itself: ``ServerAliveInterval=1`` with
  ``ServerAliveCountMax=3`` makes it exit ~3-4 s after the link drops.
* Restart: always, after 0.5 s doubling to at most 5 s, and never FATAL for a dropped link (a
  host may be down for hours; :data:`TUNNEL_POLICY`). The open ends once each tunnel is up or
  has failed once (launch's "settled" start): a host down at ``open`` does not hold up the
  others, and its tunnel keeps trying.
* Stable ports: chosen once (free, below the kernel's ephemeral range), kept in a 0600 file
  ``<cache>/run/tunnels/<instance>.json``, reused by every restart and every ``open``, so the
  printed ``--rpc-servers`` stays valid until :func:`close_tunnels`.

``python -m sdrpc_build.fleet.tunnels``: the detached supervisor that :func:`open_tunnels` starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Optional

from filelock import FileLock, Timeout

from sdrpc_build.errors import LaunchError, SdrpcError, ToolError, UsageError
from sdrpc_build.launch.child import DetachedChild
from sdrpc_build.launch.control import stop_named
from sdrpc_build.launch.detach import DetachRequest, start_detached
from sdrpc_build.launch.identity import ProcessTable, system_table
from sdrpc_build.launch.instance import check_instance_name, state_path
from sdrpc_build.launch.lines import tail_line
from sdrpc_build.launch.ports import ensure_port_free, pick_stable_port
from sdrpc_build.launch.private import FILE_MODE, cannot_write, private_dir, write_private
from sdrpc_build.launch.procs import line_buffer_prefix
from sdrpc_build.launch.readiness import Readiness
from sdrpc_build.launch.runner import Runner
from sdrpc_build.launch.settings import Policy
from sdrpc_build.launch.spec import ServerSpec, valid_name
from sdrpc_build.launch.status import ServerStatus, instance_status
from sdrpc_build.launch.supervisor import Event, Supervisor
from sdrpc_build.paths import run_dir
from sdrpc_build.protocol.layouts import format_version
from sdrpc_build.protocol.probe import probe

__all__ = [
    "FAST_CIPHERS",
    "SSH_OPTIONS",
    "TUNNEL_POLICY",
    "Forward",
    "HostStatus",
    "Tunnel",
    "TunnelPhase",
    "TunnelSpec",
    "TunnelState",
    "TunnelStatus",
    "assign_ports",
    "close_tunnels",
    "open_tunnels",
    "read_tunnels",
    "rpc_servers",
    "ssh_argv",
    "tunnel_file",
    "tunnel_ready",
    "tunnel_status",
]

#: always on: fail when a forward cannot be set up, notice a dead link in ~3-4 s, never prompt,
#: and an ssh connection of its own (not multiplexed through a ControlMaster: its process is the
#: tunnel's liveness)
SSH_OPTIONS = (
    "-o", "ExitOnForwardFailure=yes",
    "-o", "ServerAliveInterval=1",
    "-o", "ServerAliveCountMax=3",
    "-o", "BatchMode=yes",
    "-o", "ControlMaster=no",
    "-o", "ControlPath=none",
)  # fmt: skip
#: after the spec's own options (ssh takes the first value given): a bound on each connect
SSH_DEFAULTS = ("-o", "ConnectTimeout=5")
#: ``-c``: AES-GCM first (AES-NI: the fastest on x86 and ARMv8; see bench/bench_tunnel.py),
#: then the rest of OpenSSH's defaults, so any OpenSSH server agrees on one
FAST_CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
    "aes128-ctr,aes192-ctr,aes256-ctr"
)
#: restart always, quickly, and never give up on a dropped link (a failure counts only within
#: 60 s, and at most ~15 fit: 1000 would be needed to go FATAL)
TUNNEL_POLICY = Policy(
    restart="always",
    backoff_initial=0.5,
    backoff_factor=2.0,
    backoff_max=5.0,
    max_failures=1000,
    failure_window=60.0,
    ready_timeout=20.0,
    stop_timeout=3.0,
    probe_interval=0.2,
)
# ssh's getopt letters (OpenSSH 9): flags, and options that take a value
_SSH_FLAGS = frozenset("1246afgknqstvxACGKMNTVXY")
_SSH_VALUED = frozenset("bcDeEFiIJlLmoOpPQRSwWB")
_SSH_BANNED = frozenset("fGMOQSVWs")
PROBE_TIMEOUT = 2.0  # per HELLO exchange through a tunnel
LOOPBACK = "127.0.0.1"
FORMAT = 1
_LOCK_TIMEOUT = 120.0  # another open/close of the same instance: at most one detached start


@dataclass(frozen=True)
class TunnelSpec:
    """What to forward to one host: its servers' ports on the host's 127.0.0.1."""

    host: str  # the fleet's name for the host: names the tunnel (log file, status)
    target: str  # what ssh connects to: "me@192.168.1.10", an ~/.ssh/config alias
    forwards: tuple[int, ...]  # remote ports, in the fleet's server order
    ssh_options: tuple[str, ...] = ()  # more ssh arguments, e.g. ("-o", "Port=2222")
    config: Optional[Path] = None  # ssh -F FILE
    ciphers: Optional[str] = FAST_CIPHERS  # ssh -c LIST; None: ssh's own choice


@dataclass(frozen=True)
class Forward:
    remote: int  # the server's port on the host's 127.0.0.1
    local: int  # its stable port on this machine's 127.0.0.1

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.local}"


@dataclass(frozen=True)
class Tunnel:
    spec: TunnelSpec
    forwards: tuple[Forward, ...]  # one per spec.forwards, same order


@dataclass(frozen=True)
class TunnelState:
    """The tunnel file (what runs and on which ports) and what ``open`` found."""

    instance: str
    path: Path
    ssh: str  # the ssh program, resolved
    tunnels: tuple[Tunnel, ...]
    reused: bool = False  # ``open`` found them running already
    failed: tuple[str, ...] = ()  # hosts not up when ``open`` returned (they keep trying)


TunnelPhase = Literal["up", "starting", "reconnecting", "failed", "closed"]


@dataclass(frozen=True)
class HostStatus:
    host: str
    phase: TunnelPhase
    pid: Optional[int]  # the ssh process while up
    restarts: int
    forwards: tuple[Forward, ...]
    uptime: Optional[float]  # seconds since it was last ready (while up)
    last_line: Optional[str]  # ssh's last output line (why it dropped) when not up


@dataclass(frozen=True)
class TunnelStatus:
    instance: str
    running: bool  # the supervisor lives
    supervisor_pid: Optional[int]
    state: Optional[TunnelState]  # None: no tunnel file
    hosts: tuple[HostStatus, ...]


def rpc_servers(state: TunnelState) -> str:
    """``127.0.0.1:L1,127.0.0.1:L2,...``: every server in fleet order (host, then its servers)."""
    return ",".join(f.endpoint for t in state.tunnels for f in t.forwards)


def ssh_argv(spec: TunnelSpec, forwards: Sequence[Forward], ssh: str = "ssh") -> list[str]:
    """The tunnel's command line (pure)."""
    argv = [ssh, "-N", *SSH_OPTIONS]
    if spec.config is not None:
        argv += ["-F", str(spec.config)]
    if spec.ciphers:
        argv += ["-c", spec.ciphers]
    argv += [*spec.ssh_options, *SSH_DEFAULTS]
    for f in forwards:
        argv += ["-L", f"{LOOPBACK}:{f.local}:{LOOPBACK}:{f.remote}"]
    return [*argv, "--", spec.target]


def check_specs(specs: Sequence[TunnelSpec]) -> tuple[TunnelSpec, ...]:
    """Refuse what ssh or the supervisor would trip over, naming the host."""
    seen: set[str] = set()
    for s in specs:
        what = f"tunnel to {s.host!r}"
        if not valid_name(s.host) or s.host in seen:
            why = "used twice" if s.host in seen else "not a valid name"
            raise UsageError(
                f"host name {s.host!r} is {why}",
                hint="host names are unique; letters, digits, '.', '_' and '-' (at most 64)",
            )
        seen.add(s.host)
        if not s.target or s.target.startswith("-") or any(c.isspace() for c in s.target):
            raise UsageError(f"{what}: invalid ssh destination {s.target!r}", hint="e.g. me@host")
        if not s.forwards or len(set(s.forwards)) != len(s.forwards):
            raise UsageError(f"{what}: give each server's port once", hint="e.g. forwards=(50052,)")
        if any(not 0 < p < 65536 for p in s.forwards):
            raise UsageError(f"{what}: a port out of range in {s.forwards}", hint="1 to 65535")
        bad = _bad_ssh_option(s.ssh_options)
        if bad is not None:
            raise UsageError(
                f"{what}: ssh option {bad!r} cannot be used for a supervised tunnel",
                hint="options such as -o KEY=VALUE, -i FILE, -p PORT, -J JUMP; "
                "nothing that backgrounds ssh, runs a command or controls a master",
            )
    if not specs:
        raise UsageError("no tunnel to open", hint="give at least one host")
    return tuple(
        s if s.config is None else replace(s, config=s.config.expanduser().absolute())
        for s in specs
    )


def _bad_ssh_option(options: Sequence[str]) -> Optional[str]:
    """The first argument that would break supervision (ssh's own option syntax): -f forks
    away from the supervisor, -M/-O/-S drive a master, -W/-s/-G/-Q/-V replace the tunnel, and a
    word that is no option's value would become the destination or a remote command."""
    i = 0
    while i < len(options):
        arg = options[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            return arg
        for j, letter in enumerate(arg[1:], 1):
            if letter in _SSH_BANNED or letter not in _SSH_FLAGS | _SSH_VALUED:
                return arg
            if letter in _SSH_VALUED:
                if j == len(arg) - 1:  # the value is the next argument
                    i += 1
                    if i == len(options):
                        return arg
                break
        i += 1
    return None


def assign_ports(
    specs: Sequence[TunnelSpec],
    previous: Optional[TunnelState],
    pick: Callable[[Collection[int]], int],
) -> tuple[Tunnel, ...]:
    """Local ports: the ones recorded for (host, remote port) stay; new ones from ``pick``."""
    known = {
        (t.spec.host, f.remote): f.local
        for t in (previous.tunnels if previous else ())
        for f in t.forwards
    }
    taken = set(known.values())
    tunnels = []
    for s in specs:
        forwards = []
        for remote in s.forwards:
            local = known.get((s.host, remote))
            if local is None:
                local = pick(taken)
                taken.add(local)
            forwards.append(Forward(remote, local))
        tunnels.append(Tunnel(s, tuple(forwards)))
    return tuple(tunnels)


# -- the tunnel file ------------------------------------------------------------------------
def tunnel_file(cache_root: Path, instance: str) -> Path:
    return run_dir(cache_root) / "tunnels" / f"{check_instance_name(instance)}.json"


def _to_json(state: TunnelState) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "instance": state.instance,
        "ssh": state.ssh,
        "tunnels": [
            {
                "host": t.spec.host,
                "target": t.spec.target,
                "ssh_options": list(t.spec.ssh_options),
                "config": None if t.spec.config is None else str(t.spec.config),
                "ciphers": t.spec.ciphers,
                "forwards": [{"remote": f.remote, "local": f.local} for f in t.forwards],
            }
            for t in state.tunnels
        ],
    }


def _from_json(obj: Any, path: Path) -> TunnelState:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"not a tunnel file of format {FORMAT}")
    tunnels = []
    for t in obj["tunnels"]:
        forwards = tuple(Forward(int(f["remote"]), int(f["local"])) for f in t["forwards"])
        spec = TunnelSpec(
            host=str(t["host"]),
            target=str(t["target"]),
            forwards=tuple(f.remote for f in forwards),
            ssh_options=tuple(str(o) for o in t["ssh_options"]),
            config=None if t["config"] is None else Path(t["config"]),
            ciphers=None if t["ciphers"] is None else str(t["ciphers"]),
        )
        tunnels.append(Tunnel(spec, forwards))
    check_specs([t.spec for t in tunnels])
    return TunnelState(str(obj["instance"]), path, str(obj["ssh"]), tuple(tunnels))


def read_tunnels(path: Path) -> Optional[TunnelState]:
    """The tunnel file; None when there is none; LaunchError when it is unreadable or could
    have been written by someone else (it says what the supervisor runs)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                mode = f"{stat.S_IMODE(st.st_mode):o}"
                raise _bad_file(path, f"not private (owner uid {st.st_uid}, mode {mode})")
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad_file(path, str(exc)) from None
    try:
        return _from_json(json.loads(text), path)
    except (ValueError, KeyError, TypeError, SdrpcError) as exc:
        raise _bad_file(path, str(exc)) from None


def _bad_file(path: Path, why: str) -> LaunchError:
    return LaunchError(
        f"cannot read the tunnel file {path}: {why}",
        hint="closing the tunnels (sdrpc down) removes it; new local ports are chosen then",
    )


def _write(state: TunnelState) -> None:
    try:
        write_private(state.path, json.dumps(_to_json(state), indent=2) + "\n")
    except OSError as exc:
        raise cannot_write(state.path, exc, "check the permissions of sdrpc's cache") from None


# -- readiness: HELLO through the tunnel ----------------------------------------------------
def tunnel_ready(ports: Sequence[int], timeout: float = PROBE_TIMEOUT) -> Readiness:
    """Ready once a server answers HELLO through one of the tunnel's ports (the ssh carries
    traffic; a server down behind another port is the fleet check's business, not a reason to
    cut this tunnel). Anything else is "retry": through ssh a closed remote port reads like a
    foreign service, and a host may still be booting."""
    problems = []
    for port in ports:
        r = probe(LOOPBACK, port, timeout=timeout, detect_max_name=False)
        if r.status == "ok":
            protocol = format_version(r.protocol) if r.protocol else None
            return Readiness("ready", None, protocol)
        problems.append(f"{r.endpoint}: {r.status}")
    return Readiness("retry", "; ".join(problems))


# -- open / close / status ------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Path]:
    """One open/close of an instance at a time; yields the lock file's path."""
    lock = path.with_suffix(".lock")
    try:
        with FileLock(str(lock), mode=FILE_MODE, timeout=_LOCK_TIMEOUT):
            yield lock
    except Timeout:
        raise LaunchError(
            f"the tunnels {path.stem!r} are being opened or closed by another sdrpc",
            hint="wait for it to finish, then try again",
        ) from None


def _log_dir(cache_root: Path, instance: str) -> Path:
    return cache_root / "logs" / instance


def open_tunnels(
    specs: Sequence[TunnelSpec],
    *,
    cache_root: Path,
    instance: str,
    env: Mapping[str, str],
    ssh: str = "ssh",
    python: str = sys.executable,
    on_event: Callable[[Event], None] = lambda e: None,
    warn: Callable[[str], None] = lambda text: None,
    table: Optional[ProcessTable] = None,
) -> TunnelState:
    """Start the tunnels in the background and return once each is up or failed once.

    Idempotent: a running instance with the same tunnels is reused as it is; with other ones it
    is replaced (ports kept per host and remote port). A local port held by another program is
    reported (PortInUseError naming it), never taken over. ``on_event``/``warn`` hear the start.
    """
    specs = check_specs(specs)
    instance = check_instance_name(instance)
    found = shutil.which(ssh, path=env.get("PATH"))
    if found is None:
        raise ToolError(
            f"ssh not found ({ssh!r})", hint="install OpenSSH's client (openssh-client)"
        )
    table = table or system_table()
    path = tunnel_file(cache_root, instance)
    rdir = run_dir(cache_root)
    try:
        private_dir(path.parent, tighten=True)
    except OSError as exc:
        raise cannot_write(path.parent, exc, "check the permissions of sdrpc's cache") from None
    with _locked(path):
        previous = read_tunnels(path)
        tunnels = assign_ports(specs, previous, lambda taken: pick_stable_port(LOOPBACK, taken))
        state = TunnelState(instance, path, found, tunnels)
        running = instance_status(rdir, instance, table)
        same = previous is not None and (previous.tunnels, previous.ssh) == (tunnels, found)
        if previous and same and running.running and _healthy(running.servers):
            down = tuple(s.record.name for s in running.servers if not _up(s))
            return replace(previous, reused=True, failed=down)
        if running.state is not None:
            stop_named(rdir, instance, table, None)  # other tunnels: replace them
        for t in tunnels:
            for f in t.forwards:
                ensure_port_free(LOOPBACK, f.local)
        _write(state)
        logs = _log_dir(cache_root, instance)
        started = start_detached(
            DetachRequest(
                instance=instance,
                command=lambda fd: _supervisor_argv(python, fd, rdir, logs, path),
                env=env,
                run_dir=rdir,
                log_dir=logs,
                policy=TUNNEL_POLICY,
            ),
            on_event=on_event,
            warn=warn,
        )
    failed = started.ready.data.get("failed")
    return replace(state, failed=tuple(str(h) for h in failed) if isinstance(failed, list) else ())


def _supervisor_argv(python: str, fd: int, rdir: Path, logs: Path, path: Path) -> list[str]:
    flags = {"--ready-fd": fd, "--run-dir": rdir, "--log-dir": logs}
    return [python, "-m", __name__, *(str(x) for kv in flags.items() for x in kv), str(path)]


def _healthy(servers: Sequence[ServerStatus]) -> bool:
    return all(s.record.phase != "fatal" for s in servers)


def _up(s: ServerStatus) -> bool:
    return s.running and s.record.phase == "ready"


def close_tunnels(instance: str, cache_root: Path, *, table: Optional[ProcessTable] = None) -> bool:
    """Stop the tunnels (SIGTERM, then SIGKILL) and remove their files; True when anything
    was there. Raises StopError when a process outlives SIGKILL (the files are kept then)."""
    path = tunnel_file(cache_root, instance)
    if not path.parent.is_dir() and not state_path(run_dir(cache_root), instance).exists():
        return False
    try:
        private_dir(path.parent)
    except OSError as exc:
        raise cannot_write(path.parent, exc, "check the permissions of sdrpc's cache") from None
    with _locked(path) as lock:
        report = stop_named(run_dir(cache_root), instance, table or system_table(), None)
        existed = path.exists()
        path.unlink(missing_ok=True)
        # launch's start lock of the instance: only our opens take it, and they hold ours
        (run_dir(cache_root) / f"{instance}.lock").unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
    return existed or report.state is not None


def tunnel_status(
    instance: str, cache_root: Path, *, table: Optional[ProcessTable] = None
) -> TunnelStatus:
    """Per host: up / starting / reconnecting / failed / closed, restarts, local ports. Reads
    files and process identities only: never touches an RPC port."""
    state = read_tunnels(tunnel_file(cache_root, instance))
    st = instance_status(run_dir(cache_root), instance, table or system_table())
    records = {s.record.name: s for s in st.servers}
    hosts = []
    for t in state.tunnels if state else ():
        s = records.get(t.spec.host)
        phase = _phase(s) if st.running and s is not None else "closed"
        pid = s.record.process.pid if s and s.record.process and phase == "up" else None
        last = _last_line(s.record.log) if s is not None and phase != "up" else None
        uptime = s.uptime if s is not None and phase == "up" else None
        restarts = s.record.restarts if s else 0
        hosts.append(HostStatus(t.spec.host, phase, pid, restarts, t.forwards, uptime, last))
    sup = st.state.supervisor.pid if st.state else None
    return TunnelStatus(instance, st.running, sup, state, tuple(hosts))


def _phase(s: ServerStatus) -> TunnelPhase:
    phase = s.record.phase
    if phase == "fatal":
        return "failed"
    if phase == "starting":
        return "starting"
    if phase == "stopped":
        return "closed"
    return "up" if _up(s) else "reconnecting"


def _last_line(log: Path, window: int = 8192) -> Optional[str]:
    """ssh's last output line in its log (not sdrpc's own ``---`` event lines)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - window))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        text = line.partition(" ")[2].strip()
        if text and not text.startswith("--- sdrpc:"):
            return tail_line(text)
    return None


# -- the detached supervisor ----------------------------------------------------------------
def _supervise(child: DetachedChild, path: Path, log_dir: Path, env: Mapping[str, str]) -> int:
    state = read_tunnels(path)
    if state is None:
        raise LaunchError(f"the tunnel file {path} is gone")
    by_host = {t.spec.host: t for t in state.tunnels}
    specs = [
        ServerSpec(t.spec.host, Path(state.ssh), port=t.forwards[0].local, restart="always")
        for t in state.tunnels
    ]
    prefix = line_buffer_prefix() or []  # a pipe rather than a pty

    def command(spec: ServerSpec) -> list[str]:
        t = by_host[spec.name]
        return [*prefix, *ssh_argv(t.spec, t.forwards, state.ssh)]

    def on_event(e: Event) -> None:
        child.on_event(e)
        detail = " ".join(f"{k}={v}" for k, v in e.data.items() if k not in ("tail", "devices"))
        print(f"{e.kind} {e.server or ''} {detail}".rstrip(), flush=True)

    sup = Supervisor(specs, TUNNEL_POLICY)
    runner = Runner(
        sup,
        base_env=env,
        on_event=on_event,
        on_output=lambda name, text: None,  # the runner logs it to <log dir>/<host>.log
        readiness=lambda spec: tunnel_ready([f.local for f in by_host[spec.name].forwards]),
        log_dir=log_dir,
        command=command,
    )
    child.attach(sup, runner)
    runner.run(restore_signals=False)
    child.raise_if_start_failed()
    return 0


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """``python -m sdrpc_build.fleet.tunnels --ready-fd N --run-dir D --log-dir D FILE``."""
    p = argparse.ArgumentParser(prog="sdrpc-tunnels", description="(started by open_tunnels)")
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--log-dir", type=Path, required=True)
    p.add_argument("file", type=Path)
    args = p.parse_args(list(argv))
    instance = args.file.stem

    def warn(text: str) -> None:
        print(f"sdrpc-tunnels: warning: {text}", file=sys.stderr, flush=True)

    child = DetachedChild.begin(
        args.ready_fd,
        args.run_dir,
        instance,
        args.log_dir,
        TUNNEL_POLICY.stop_timeout,
        warn,
        start="settled",
    )
    try:
        return child.run(lambda: _supervise(child, args.file, args.log_dir, env))
    except SdrpcError as exc:  # already reported to the waiting open_tunnels
        print(f"sdrpc-tunnels: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
