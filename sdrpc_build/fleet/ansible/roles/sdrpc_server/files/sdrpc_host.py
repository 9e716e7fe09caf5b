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
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

UNIT_DIR = Path("/etc/systemd/system")
UNIT_PREFIX = "sdrpc-server-"
UNIT_CGROUP = re.compile(r"/(sdrpc-server-[^/]+\.service)$")
EXEC_KEY = re.compile(r"^ExecStart=\S*/servers/([^/\s]+)/bin/", re.M)
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


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
    ports: Iterable[int], proc: Path = Path("/proc")
) -> list[tuple[int, Optional[int], str]]:
    """(port, pid, process name) of every listener on ``ports`` that no sdrpc unit runs."""
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
            if sdrpc_unit_of(_read(proc / str(pid) / "cgroup")) is None:
                out.append((port, pid, _read(proc / str(pid) / "comm").strip() or "?"))
    return out


def installed_units(unit_dir: Path = UNIT_DIR) -> list[str]:
    try:
        return sorted(p.name for p in unit_dir.glob(UNIT_PREFIX + "*.service"))
    except OSError:
        return []


def pin_mismatches(
    root: Path, allowed: list[tuple[str, int]], unit_dir: Path = UNIT_DIR
) -> list[str]:
    """One line per installed sdrpc unit whose server was built for other pins."""
    out = []
    for name in installed_units(unit_dir):
        m = EXEC_KEY.search(_read(unit_dir / name))
        if not m:
            continue
        try:
            man = json.loads((root / "servers" / m.group(1) / "manifest.json").read_text())
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
        for port, pid, name in foreign_listeners(a["ports"])
    ]
    if not a.get("replace"):
        refuse += [
            m + ": sdrpc does not replace it silently; run sdrpc up --replace (or sdrpc down)"
            for m in pin_mismatches(root, [(str(c), int(n)) for c, n in a["allowed"]])
        ]
    installed = installed_units()
    states = unit_states(units)
    units_ok = installed == sorted(units) and all(
        states.get(u, ("", "")) == ("active", "enabled") for u in units
    )
    return {
        "venv": _read(root / "venv" / ".sdrpc-wheelhouse").strip() or None,
        "payload": sha256(root / "payload.tar"),
        "units_ok": units_ok,
        "refuse": refuse,
        "platform": here,
    }


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


def apply(a: dict[str, Any]) -> dict[str, Any]:
    root = Path(a["root"])
    units: list[str] = list(a["units"])
    changed_units: list[str] = []
    keys = set()
    with tarfile.open(root / "payload.tar") as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if not m.isfile() or m.name.startswith("/") or ".." in parts:
                raise SystemExit(f"sdrpc_host: bad payload member {m.name!r}")
            f = tar.extractfile(m)
            assert f is not None
            data = f.read()
            if parts[0] == "units":
                if _put(UNIT_DIR / parts[1], data, 0o644):
                    changed_units.append(parts[1])
            else:
                keys.add(parts[1])
                _put(root / m.name, data, m.mode & 0o777)
    stale = [u for u in installed_units() if u not in units]
    for u in stale:
        subprocess.run(["systemctl", "disable", "--now", u], timeout=120, check=False)
        (UNIT_DIR / u).unlink()
    servers = root / "servers"
    for d in sorted(servers.iterdir()) if servers.is_dir() else []:
        if d.name not in keys:  # a build no unit uses any more
            for p in sorted(d.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            d.rmdir()
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
    out = {"state": state, "apply": apply, "status": status}[cmd](args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
