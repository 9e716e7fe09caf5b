"""Run one of the packaged playbooks on the fleet's hosts through ansible-runner.

Ansible goes over the user's own OpenSSH (``-F`` with a given ssh config, else ~/.ssh/config),
known_hosts checking on, pipelining on. One ssh connection per host for the whole run: sdrpc
starts a ControlMaster per host itself (``ssh -M -N``, its own child, socket in the run's 0700
work dir) and Ansible's ssh calls share it (``ControlMaster=no``: a host whose master did not
start is reached directly). At the end each master is told ``ssh -O exit`` and reaped: no
``ControlPersist`` daemon is left behind (where PID 1 does not reap, it would stay a zombie).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sdrpc_build.fleet.errors import FleetToolError
from sdrpc_build.fleet.model import Host

__all__ = [
    "PLAYBOOK_DIR",
    "HostOutcome",
    "PlayOutcome",
    "ansible_env",
    "host_vars",
    "run_playbook",
    "ssh_masters",
    "work_dir",
]

PLAYBOOK_DIR = Path(__file__).resolve().parent / "ansible"
SSH_ARGS = "-o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o BatchMode=yes"
CONNECT_TIMEOUT = 10  # seconds, ssh's ConnectTimeout (Ansible's timeout too)
MASTER_WAIT = 15.0  # seconds for all masters to come up (unreachable hosts: ConnectTimeout)
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; ssh appends a suffix while it binds


@dataclass(frozen=True)
class HostOutcome:
    name: str
    ok: bool
    unreachable: bool = False
    changed: int = 0
    task: Optional[str] = None  # the task that failed
    reason: Optional[str] = None  # why, one line (plus a short tail)
    outputs: tuple[tuple[str, str], ...] = ()  # (task name, stdout) of tasks asked for


@dataclass(frozen=True)
class PlayOutcome:
    hosts: tuple[HostOutcome, ...]
    seconds: float

    def host(self, name: str) -> HostOutcome:
        return next(h for h in self.hosts if h.name == name)


@contextmanager
def work_dir(cache_root: Path) -> Iterator[Path]:
    """A private (0700) scratch directory for one run, removed afterwards."""
    base = cache_root / "fleet"
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="run-", dir=base))  # mkdtemp: 0700 whatever the umask
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def host_vars(host: Host, ssh_config: Optional[Path]) -> dict[str, Any]:
    v: dict[str, Any] = {"ansible_python_interpreter": "/usr/bin/python3"}
    if host.ssh.local:
        v["ansible_connection"] = "local"
        return v
    v["ansible_host"] = host.ssh.host
    if host.ssh.user:
        v["ansible_user"] = host.ssh.user
    if host.ssh.port:
        v["ansible_port"] = host.ssh.port
    if ssh_config is not None:
        v["ansible_ssh_common_args"] = f"-F {ssh_config}"
    return v


def ansible_env(work: Path, forks: int) -> dict[str, str]:
    return {
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": SSH_ARGS,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_TIMEOUT": str(CONNECT_TIMEOUT),
        "ANSIBLE_FORKS": str(max(1, forks)),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_ROLES_PATH": str(PLAYBOOK_DIR / "roles"),
    }


def _socket_dir(work: Path) -> Path:
    d = work / "ssh"
    if len(str(d / "0000")) <= SOCKET_PATH_MAX:
        d.mkdir(mode=0o700, exist_ok=True)
        return d
    return Path(tempfile.mkdtemp(prefix="sdrpc-ssh-"))  # a long cache path: a short 0700 dir


def _master_argv(v: Mapping[str, Any], sock: Path) -> list[str]:
    argv = ["ssh", "-M", "-N", "-o", f"ControlPath={sock}", "-o", "ControlPersist=no"]
    argv += [w for w in str(v.get("ansible_ssh_common_args", "")).split() if w]
    argv += [*SSH_ARGS.split(), "-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]
    if v.get("ansible_user"):
        argv += ["-l", str(v["ansible_user"])]
    if v.get("ansible_port"):
        argv += ["-p", str(v["ansible_port"])]
    return [*argv, "--", str(v["ansible_host"])]


def _die_with_parent() -> None:  # pragma: no cover (runs in the child)
    if sys.platform == "linux":
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_master(proc: subprocess.Popen[bytes], sock: Path) -> None:
    if proc.poll() is None:
        subprocess.run(
            ["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}", "-O", "exit", "sdrpc-master"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextmanager
def ssh_masters(
    hosts: Mapping[str, Mapping[str, Any]], work: Path
) -> Iterator[dict[str, dict[str, Any]]]:
    """One ssh ControlMaster per remote host for the run; yields the host vars that use them.
    Every master is ended and reaped on the way out, whatever happened."""
    remote = [n for n, v in hosts.items() if v.get("ansible_connection") != "local"]
    if not remote:
        yield {n: dict(v) for n, v in hosts.items()}
        return
    d = _socket_dir(work)
    masters: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for i, n in enumerate(remote):
            sock = d / f"{i:04d}"
            masters[n] = (
                subprocess.Popen(
                    _master_argv(hosts[n], sock),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 (prctl only, no locks)
                ),
                sock,
            )
        deadline = time.monotonic() + MASTER_WAIT
        while time.monotonic() < deadline and any(
            p.poll() is None and not s.exists() for p, s in masters.values()
        ):
            time.sleep(0.05)
        out = {n: dict(v) for n, v in hosts.items()}
        for n, (p, sock) in masters.items():
            ready = p.poll() is None and sock.exists()
            mux = f"-o ControlMaster=no -o ControlPath={sock if ready else 'none'}"
            common = str(out[n].get("ansible_ssh_common_args", ""))
            out[n]["ansible_ssh_common_args"] = f"{common} {mux}".strip()
        yield out
    finally:
        for p, sock in masters.values():
            _stop_master(p, sock)
        if d.parent != work:
            shutil.rmtree(d, ignore_errors=True)


def _ansible_playbook() -> str:
    near = Path(sys.executable).parent / "ansible-playbook"
    found = str(near) if near.is_file() else shutil.which("ansible-playbook")
    if not found:
        raise FleetToolError(
            "ansible-playbook is not installed",
            hint="install the fleet extra: python -m pip install 'sdrpc[fleet]'",
        )
    return found


def _reason(res: Mapping[str, Any]) -> str:
    msg = str(res.get("msg") or "").strip()
    out = "\n".join(
        str(res.get(k) or "").strip() for k in ("stderr", "stdout") if res.get(k)
    ).strip()
    if isinstance(res.get("results"), list):  # a loop: the first failed item says why
        for item in res["results"]:
            if isinstance(item, dict) and item.get("failed"):
                return _reason(item)
    tail = "\n".join(out.splitlines()[-8:])
    text = f"{msg}: {tail}" if msg and tail else (msg or tail or "failed")
    return text[:1500]


def _outcomes(runner: Any, names: Sequence[str], want: Sequence[str]) -> tuple[HostOutcome, ...]:
    failed: dict[str, tuple[str, str, bool]] = {}
    outputs: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
    for ev in runner.events:
        data = ev.get("event_data") or {}
        host = data.get("host")
        if host not in outputs:
            continue
        kind = ev.get("event")
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            failed.setdefault(
                host,
                (
                    str(data.get("task", "")),
                    _reason(data.get("res") or {}),
                    kind == "runner_on_unreachable",
                ),
            )
        elif kind == "runner_on_ok" and data.get("task") in want:
            outputs[host].append(
                (str(data["task"]), str((data.get("res") or {}).get("stdout", "")))
            )
    stats = runner.stats or {}
    tail = ""
    if not stats.get("processed"):  # ansible stopped before any host: say why
        try:
            text = runner.stdout.read()
        except (OSError, AttributeError):
            text = ""
        tail = ": " + " | ".join(text.strip().splitlines()[-6:])[-1200:]
    out = []
    for n in names:
        changed = int((stats.get("changed") or {}).get(n, 0))
        if n in failed:
            task, reason, dark = failed[n]
            out.append(HostOutcome(n, False, dark, changed, task, reason, tuple(outputs[n])))
        elif n not in (stats.get("processed") or {}):
            why = f"ansible ended before this host finished ({runner.status}){tail}"
            out.append(HostOutcome(n, False, False, changed, None, why))
        else:
            out.append(HostOutcome(n, True, False, changed, None, None, tuple(outputs[n])))
    return tuple(out)


def run_playbook(
    playbook: str,
    hosts: Mapping[str, Mapping[str, Any]],
    work: Path,
    *,
    timeout: float,
    want_outputs: Sequence[str] = (),
) -> PlayOutcome:
    """Run ``playbook`` (a file of PLAYBOOK_DIR) on ``hosts`` (inventory name -> host vars)."""
    try:
        import ansible_runner  # noqa: PLC0415 (the optional sdrpc[fleet] extra)
    except ImportError:
        raise FleetToolError(
            "ansible-runner is not installed",
            hint="install the fleet extra: python -m pip install 'sdrpc[fleet]'",
        ) from None
    binary = _ansible_playbook()
    t0 = time.monotonic()
    with ssh_masters(hosts, work) as muxed:
        r = _run(ansible_runner, binary, playbook, muxed, work, timeout - (time.monotonic() - t0))
    return PlayOutcome(_outcomes(r, list(hosts), want_outputs), time.monotonic() - t0)


def _run(
    ansible_runner: Any,
    binary: str,
    playbook: str,
    hosts: Mapping[str, Mapping[str, Any]],
    work: Path,
    timeout: float,
) -> Any:
    inv = work / "inventory.json"
    inv.write_text(json.dumps({"all": {"hosts": dict(hosts)}}), encoding="utf-8")
    os.chmod(inv, 0o600)
    (work / "runner").mkdir(mode=0o700, exist_ok=True)
    return ansible_runner.run(
        private_data_dir=str(work / "runner"),
        project_dir=str(PLAYBOOK_DIR),
        playbook=playbook,
        inventory=str(inv),
        # ansible-runner's binary= drops the playbook: find ansible-playbook through PATH
        envvars={
            **ansible_env(work, len(hosts)),
            "PATH": os.pathsep.join([str(Path(binary).parent), os.environ.get("PATH", "")]),
        },
        quiet=True,
        timeout=max(1, int(timeout)),
    )
