"""sdrpc's host side of ``sdrpc up``: run by Ansible as ``python3 -c SOURCE CMD JSON``.

Standard library only (the host may not have sdrpc yet); one JSON object on stdout.

* ``state``: what is on the host, in one pass: the wheelhouse installed in the venv, the digest
  of the payload (servers + units), whether every wanted unit is installed, enabled and active,
  the host's platform (``sys.platform``, ``platform.machine()``, ``platform.libc_ver()``), and
  what to refuse: a foreign process on a configured port (sdrpc never stops what it did not
  start), an sdrpc server built for other pins than the client's, or a payload built for
  another platform than this host's.
* ``status``: each installed sdrpc unit's ``systemctl show`` block and the last lines its server
  logged since its last start (its journal of the current invocation): busy/idle is read from
  them on the client, never by probing the port.
* ``apply``: install the payload: server files, unit files (changed ones restarted), stale sdrpc
  units stopped and removed, every wanted unit enabled and started.

A host whose PID 1 is not systemd (no ``/run/systemd/system``; ``state`` says ``"systemd"``) runs
its servers as one ``sdrpc-launch --detach`` instance from the host's venv instead (instance
``sdrpc-fleet``, its state and logs under ``ROOT/launch``) with the payload's
``detach/servers.toml``: ``detach`` installs and (re)starts it, ``state`` judges it (running, no
server given up; its processes, known by the PIDs in its state file, are sdrpc's own listeners),
``status`` is its ``sdrpc-launch status --json``, ``stop`` ends it (``sdrpc down``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

UNIT_DIR = Path("/etc/systemd/system")
UNIT_PREFIX = "sdrpc-server-"
UNIT_CGROUP = re.compile(r"/(sdrpc-server-[^/]+\.service)$")
EXEC_KEY = re.compile(r"^ExecStart=\S*/servers/([^/\s]+)/bin/", re.M)
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(): PID 1 is systemd
INSTANCE = "sdrpc-fleet"  # the sdrpc-launch --detach instance of a host without systemd
DETACH_CONFIG = "detach/servers.toml"  # in the payload; installed as ROOT/servers.toml
SERVER_BLOCK = re.compile(r'^name = "([^"]+)"$.*?^binary = "\S*/servers/([^/"]+)/bin/', re.M | re.S)


def sha256(path: Path) -> Optional[str]:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def listen_inodes(tables: Iterable[str], ports: Iterable[int]) -> dict[int, list[int]]:
    """port -> socket inodes listening on it, from /proc/net/tcp{,6} texts."""
    want = set(ports)
    found: dict[int, list[int]] = {}
    for text in tables:
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) < 10 or f[3] != LISTEN:
                continue
            port = int(f[1].rsplit(":", 1)[1], 16)
            if port in want:
                found.setdefault(port, []).append(int(f[9]))
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def socket_owners(inodes: Iterable[int], proc: Path = Path("/proc")) -> dict[int, list[int]]:
    """inode -> pids holding it (only the processes this user may look into)."""
    want = {f"socket:[{i}]": i for i in inodes}
    owners: dict[int, list[int]] = {}
    if not want:
        return owners
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fds = list((d / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in want:
                owners.setdefault(want[target], []).append(int(d.name))
    return owners


def sdrpc_unit_of(cgroup_text: str) -> Optional[str]:
    """The sdrpc unit a process runs in, from /proc/PID/cgroup, else None."""
    for line in cgroup_text.splitlines():
        m = UNIT_CGROUP.search(line.split(":", 2)[-1])
        if m:
            return m.group(1)
    return None


def foreign_listeners(
    ports: Iterable[int], proc: Path = Path("/proc"), ours: Iterable[int] = ()
) -> list[tuple[int, Optional[int], str]]:
    """(port, pid, process name) of every listener on ``ports`` that no sdrpc unit runs and
    that is not one of ``ours`` (the detached instance's processes)."""
    mine = set(ours)
    tables = [_read(proc / "net" / n) for n in ("tcp", "tcp6")]
    by_port = listen_inodes(tables, ports)
    owners = socket_owners([i for v in by_port.values() for i in v], proc)
    out: list[tuple[int, Optional[int], str]] = []
    for port in sorted(by_port):
        pids = sorted({p for i in by_port[port] for p in owners.get(i, [])})
        if not pids:  # a socket we may not look into: not ours either way
            out.append((port, None, "not visible"))
            continue
        for pid in pids:
            if pid not in mine and sdrpc_unit_of(_read(proc / str(pid) / "cgroup")) is None:
                out.append((port, pid, _read(proc / str(pid) / "comm").strip() or "?"))
    return out


def installed_units(unit_dir: Path = UNIT_DIR) -> list[str]:
    try:
        return sorted(p.name for p in unit_dir.glob(UNIT_PREFIX + "*.service"))
    except OSError:
        return []


def installed_keys(root: Path, unit_dir: Path = UNIT_DIR) -> list[tuple[str, str]]:
    """(unit or server name, build key) of every installed sdrpc unit, and of every server of
    the detached instance's servers.toml."""
    out = []
    for name in installed_units(unit_dir):
        m = EXEC_KEY.search(_read(unit_dir / name))
        if m:
            out.append((name, m.group(1)))
    for block in _read(root / "servers.toml").split("[[server]]")[1:]:
        m = SERVER_BLOCK.search(block)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def pin_mismatches(
    root: Path, allowed: list[tuple[str, int]], unit_dir: Path = UNIT_DIR
) -> list[str]:
    """One line per installed sdrpc unit (or detached server) built for other pins."""
    out = []
    for name, key in installed_keys(root, unit_dir):
        try:
            man = json.loads((root / "servers" / key / "manifest.json").read_text())
        except (OSError, ValueError):
            continue  # no manifest: not a build sdrpc up can judge; apply replaces the unit
        got = (str(man.get("commit", "")), int(man.get("max_name") or 0))
        if got not in allowed:
            want = ", ".join(f"llama.cpp {c[:12]} GGML_MAX_NAME {n}" for c, n in allowed)
            out.append(
                f"{name} runs a server built for llama.cpp {got[0][:12]} GGML_MAX_NAME {got[1]}, "
                f"the client needs {want}"
            )
    return out


def unit_states(names: list[str]) -> dict[str, tuple[str, str]]:
    """unit -> (ActiveState, UnitFileState)."""
    if not names:
        return {}
    r = subprocess.run(
        ["systemctl", "show", "--property=Id,ActiveState,UnitFileState", *names],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=30,
        check=False,
    )
    out = {}
    for block in r.stdout.strip().split("\n\n"):
        kv = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in kv:
            out[kv["Id"]] = (kv.get("ActiveState", ""), kv.get("UnitFileState", ""))
    return out


def platform_facts() -> list[str]:
    libc, version = platform.libc_ver()
    return [sys.platform, platform.machine(), libc, version]


def state(a: dict[str, Any]) -> dict[str, Any]:
    root = Path(a["root"])
    units: list[str] = list(a["units"])
    systemd = SYSTEMD_RUNNING.is_dir()
    inst = instance(root)
    here = platform_facts()
    want = a.get("platform")
    refuse = (
        [
            f"this host's platform is {' '.join(here)}, the servers sdrpc brought were built "
            f"for {' '.join(want)}: run sdrpc up again (it learns the host's platform anew)"
        ]
        if want and list(want) != here
        else []
    )
    refuse += [
        f"port {port} is taken by {name}"
        + (f" (pid {pid})" if pid else "")
        + ", which sdrpc did not start: sdrpc leaves it running; stop it or give the server "
        "another port in fleet.toml"
        for port, pid, name in foreign_listeners(a["ports"], ours=inst["pids"])
    ]
    if not a.get("replace"):
        refuse += [
            m + ": sdrpc does not replace it silently; run sdrpc up --replace (or sdrpc down)"
            for m in pin_mismatches(root, [(str(c), int(n)) for c, n in a["allowed"]])
        ]
    if systemd:
        installed = installed_units()
        states = unit_states(units)
        units_ok = installed == sorted(units) and all(
            states.get(u, ("", "")) == ("active", "enabled") for u in units
        )
    else:  # the detached instance runs the installed servers.toml, no server given up
        units_ok = inst["healthy"] and (root / "servers.toml").is_file()
    return {
        "venv": _read(root / "venv" / ".sdrpc-wheelhouse").strip() or None,
        "payload": sha256(root / "payload.tar"),
        "units_ok": units_ok,
        "refuse": refuse,
        "platform": here,
        "systemd": systemd,
    }


# -- a host without systemd: the sdrpc-launch --detach instance ---------------------------------
def _start_token(pid: int, proc: Path) -> Optional[str]:
    """``<start ticks>@<boot id>`` of a live process, as sdrpc-launch records it (None: no
    such process, or a zombie)."""
    text = _read(proc / str(pid) / "stat")
    fields = text.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X", "x"):
        return None
    boot = _read(proc / "sys" / "kernel" / "random" / "boot_id").strip() or "?"
    return f"{fields[19]}@{boot}"


def _same(ident: Any, proc: Path) -> bool:
    """A process recorded in the state file is still that process (PID + start time)."""
    if not isinstance(ident, dict) or not isinstance(ident.get("pid"), int):
        return False
    now = _start_token(ident["pid"], proc)
    return now is not None and (ident.get("method") != "proc" or ident.get("start") == now)


def instance(root: Path, proc: Path = Path("/proc")) -> dict[str, Any]:
    """The detached instance: ``pids`` (its live supervisor and servers: sdrpc's listeners),
    ``running`` (its supervisor lives), ``healthy`` (running, no server given up)."""
    try:
        st = json.loads((root / "launch" / "run" / f"{INSTANCE}.json").read_text())
        servers = [s for s in st["servers"] if isinstance(s, dict)]
        sup = st["supervisor"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"pids": [], "running": False, "healthy": False}
    live = [s["process"]["pid"] for s in servers if _same(s.get("process"), proc)]
    running = _same(sup, proc)
    pids = ([sup["pid"]] if running else []) + live
    healthy = running and all(s.get("phase") != "fatal" for s in servers)
    return {"pids": pids, "running": running, "healthy": healthy}


def _launch(root: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """The host venv's ``sdrpc-launch ARGS --instance sdrpc-fleet --cache-dir ROOT/launch``."""
    return subprocess.run(
        [str(root / "venv" / "bin" / "sdrpc-launch"), *args, "--instance", INSTANCE,
         "--cache-dir", str(root / "launch")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip


def stop(a: dict[str, Any]) -> dict[str, Any]:
    """End the detached instance (sdrpc-launch stop; without a venv, its recorded processes
    are signalled directly, identities checked). Nothing running: nothing to do."""
    root = Path(a.get("root") or "/opt/sdrpc")
    inst = instance(root)
    if not inst["pids"]:
        return {"changed": False}
    if (root / "venv" / "bin" / "sdrpc-launch").is_file():
        r = _launch(root, "stop", timeout=120)
        if r.returncode not in (0, 27):  # 27: not running
            raise SystemExit(f"sdrpc-launch stop failed ({r.returncode}): {r.stderr.strip()}")
    else:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in instance(root)["pids"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for _ in range(100):
                if not instance(root)["pids"]:
                    break
                time.sleep(0.1)
    return {"changed": True}


def detach(a: dict[str, Any]) -> dict[str, Any]:
    """Install the payload's servers and servers.toml, then (re)start the instance unless it
    runs that servers.toml unharmed already."""
    root = Path(a["root"])
    before = _read(root / "servers.toml")
    keys = set()
    config = None
    for parts, data, mode in payload_members(root):
        if "/".join(parts) == DETACH_CONFIG:
            config = data
        elif parts[0] == "servers":
            keys.add(parts[1])
            _put(root.joinpath(*parts), data, mode)
    if config is None:
        raise SystemExit(f"sdrpc_host: the payload has no {DETACH_CONFIG}")
    _put(root / "servers.toml", config, 0o600)
    inst = instance(root)
    venv = _read(root / "venv" / ".sdrpc-wheelhouse")  # a new sdrpc: a new supervisor too
    started = root / "launch" / "started-with"
    if inst["healthy"] and before == config.decode() and _read(started) == venv:
        return {"changed": False}
    if inst["pids"]:
        stop(a)
    _remove_stale_servers(root, keys)
    r = _launch(root, "--config", str(root / "servers.toml"), "--detach", "--json", timeout=600)
    if r.returncode != 0:
        try:
            why = str(json.loads(r.stdout.strip().splitlines()[-1]).get("error"))
        except (ValueError, IndexError, AttributeError):
            why = ""
        tail = " | ".join(r.stderr.strip().splitlines()[-6:])
        raise SystemExit(f"sdrpc-launch --detach failed ({r.returncode}): {why} {tail}".strip())
    _put(started, venv.encode(), 0o600)
    return {"changed": True}


SHOW = "Id,ActiveState,SubState,NRestarts,MainPID,Result,InvocationID"
LOG_LINES = 400


def _out(argv: list[str]) -> str:
    r = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=60,
        check=False,
    )
    return r.stdout


def status(a: dict[str, Any]) -> dict[str, Any]:
    root = Path(a.get("root") or "/opt/sdrpc")
    if not SYSTEMD_RUNNING.is_dir():  # the detached instance's own status
        if not (root / "venv" / "bin" / "sdrpc-launch").is_file():
            return {"servers": [], "launch": None}
        r = _launch(root, "status", "--json", timeout=60)
        try:
            return {"servers": [], "launch": json.loads(r.stdout)}
        except ValueError:
            return {"servers": [], "launch": None}
    servers = []
    for u in installed_units():
        show = _out(["systemctl", "show", "--property=" + SHOW, u])
        kv = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        inv = kv.get("InvocationID", "")
        log = (
            _out(
                [
                    "journalctl",
                    "--no-pager",
                    "-o",
                    "cat",
                    "-n",
                    str(LOG_LINES),
                    "_SYSTEMD_INVOCATION_ID=" + inv,
                ]
            )
            if inv
            else ""
        )
        servers.append({"show": show, "log": log.splitlines()})
    return {"servers": servers}


def _systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], check=True, timeout=120, stdout=subprocess.DEVNULL)


def _put(dest: Path, data: bytes, mode: int) -> bool:
    """Write ``dest`` when its content differs (through a rename: a running binary is busy)."""
    try:
        if dest.read_bytes() == data:
            if dest.stat().st_mode & 0o777 != mode:
                os.chmod(dest, mode)
            return False
    except OSError:
        pass
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = dest.with_name(f".{dest.name}.sdrpc-new")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)
    return True


def payload_members(root: Path) -> Iterator[tuple[tuple[str, ...], bytes, int]]:
    """(path parts, data, mode) of every member of ROOT/payload.tar, checked."""
    with tarfile.open(root / "payload.tar") as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if not m.isfile() or m.name.startswith("/") or ".." in parts or len(parts) < 2:
                raise SystemExit(f"sdrpc_host: bad payload member {m.name!r}")
            f = tar.extractfile(m)
            assert f is not None
            yield parts, f.read(), m.mode & 0o777


def _remove_stale_servers(root: Path, keys: set[str]) -> None:
    servers = root / "servers"
    for d in sorted(servers.iterdir()) if servers.is_dir() else []:
        if d.name not in keys:  # a build no server uses any more
            for p in sorted(d.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            d.rmdir()


def apply(a: dict[str, Any]) -> dict[str, Any]:
    root = Path(a["root"])
    units: list[str] = list(a["units"])
    changed_units: list[str] = []
    keys = set()
    for parts, data, mode in payload_members(root):
        if parts[0] == "units":
            if _put(UNIT_DIR / parts[1], data, 0o644):
                changed_units.append(parts[1])
        elif parts[0] == "servers":
            keys.add(parts[1])
            _put(root.joinpath(*parts), data, mode)
    stale = [u for u in installed_units() if u not in units]
    for u in stale:
        subprocess.run(["systemctl", "disable", "--now", u], timeout=120, check=False)
        (UNIT_DIR / u).unlink()
    _remove_stale_servers(root, keys)
    if changed_units or stale:
        _systemctl("daemon-reload")
    states = unit_states(units)
    started = []
    for u in units:
        if u in changed_units:
            _systemctl("enable", u)
            _systemctl("restart", u)
            started.append(u)
        elif states.get(u, ("", "")) != ("active", "enabled"):
            _systemctl("enable", "--now", u)
            _systemctl("start", u)  # a unit waiting to restart: now
            started.append(u)
    return {
        "changed": bool(changed_units or stale or started),
        "units_changed": changed_units,
        "units_removed": stale,
        "units_started": started,
    }


def main(argv: list[str]) -> int:
    cmd, args = argv[1], json.loads(argv[2])
    commands = {"state": state, "apply": apply, "status": status, "detach": detach, "stop": stop}
    out = commands[cmd](args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
