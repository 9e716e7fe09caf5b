"""A lab of real hosts on this machine, for tests of multi-host features (needs root).

Each host is a ``systemd-nspawn`` container with systemd as PID 1 and sshd (key auth, host key
checking on), booted from the machine's own ``/`` (bound read-only, non-recursively) with
per-host overlays for /etc, /var, /opt, /srv and /home and a fresh /root. Hosts live in their own
network namespaces on a private bridge; an nftables table makes the bridge a dead end: hosts reach
nothing of the machine except the ports a test opens with :meth:`Lab.allow_from_hosts`, and nothing
is forwarded out of the bridge. The project's verified facts (section 9, "Hosts without a second
machine") say why each piece is there.

    with Lab(n=3) as lab:
        lab.ssh("lab1", "systemctl", "is-system-running")
        subprocess.run(["ssh", "-F", str(lab.ssh_config_path), "lab2", "true"])
        lab.reboot("lab2"); lab.link_down("lab3"); lab.link_up("lab3")

    Lab(n=2, no_systemd=["lab2"])   # lab2 without systemd: nspawn's stub init as PID 1 (no
                                    # /run/systemd/system), sshd its only service; same keys

Every host also has an operator who is not root, ``sdrpc-op`` (:data:`OPERATOR`; same key, sudo
without a password through ``/etc/sudoers.d/sdrpc-op``, which a test may remove):
``ssh -F CONFIG sdrpc-op@lab1 sudo -n true``.

Everything a lab creates is named after its id (``sdl`` + 5 hex digits) and recorded under
``/run/sdrpc-lab/<id>/`` with the owner's PID; :meth:`Lab.close` (also run on errors and Ctrl-C)
removes it all, and a new lab first removes the labs of owners that died (``cleanup_stale``).
The machine needs ``.ci/lab-setup`` (systemd-nspawn, sshd, ssh, nftables, iproute2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "OPERATOR",
    "STATE_ROOT",
    "Lab",
    "LabError",
    "cleanup_stale",
    "lab_unavailable_reason",
]

STATE_ROOT = Path("/run/sdrpc-lab")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SUBNET_POOL = ipaddress.IPv4Network("10.231.0.0/16")  # one /24 per lab: 10.231.K.0/24
OVERLAID = ("/etc", "/var", "/opt", "/srv", "/home")
OPERATOR = "sdrpc-op"  # a user who is not root, with passwordless sudo, on every host
OPERATOR_ID = 1500
PROPAGATE = Path("/run/systemd/nspawn/propagate")
LOCK = STATE_ROOT / ".lock"
ID_PREFIX = "sdl"
ID_RE = re.compile(ID_PREFIX + "[0-9a-f]{5}")
# Units the hosts must not run even if something wants them statically; whatever the machine
# enabled in its own /etc is hidden anyway (hosts' /etc/systemd/system is an opaque overlay dir).
MASKED = (
    "getty.target",
    "getty-static.service",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "systemd-timesyncd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "logrotate.timer",
    "systemd-tmpfiles-clean.timer",
    "postgresql.service",
    "postgresql@.service",
    "redis-server.service",
    "redis.service",
    "mysql.service",
    "mariadb.service",
    "docker.service",
    "docker.socket",
    "containerd.service",
    "cron.service",
    "anacron.timer",
    "unattended-upgrades.service",
)
# Generators that would bring back the machine's own services (SysV scripts, rc.local, gettys,
# partitions, a postgresql cluster per /etc/postgresql entry): none run in the hosts.
GENERATOR_DIRS = (
    "/lib/systemd/system-generators",
    "/usr/lib/systemd/system-generators",
    "/usr/local/lib/systemd/system-generators",
    "/etc/systemd/system-generators",
)
KEPT_GENERATORS = frozenset(
    {"systemd-fstab-generator", "systemd-debug-generator", "systemd-run-generator"}
)
SSHD_DROPIN = """\
# sdrpc lab host: this host's own key only, keys only
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
"""
# A host without systemd (``Lab(no_systemd=...)``): nspawn's stub init is PID 1 (it reaps
# orphans, as any init does), sshd runs in the foreground as its only child; the same host key,
# key auth and known_hosts as the other hosts.
NO_SYSTEMD_INIT = "mkdir -p -m 0755 /run/sshd && exec /usr/sbin/sshd -D -e"
# The wrapper: joins the host's cgroups, then boots the container again each time it reboots
# (a reboot from inside makes systemd-nspawn exit 133 instead of restarting).
WRAPPER = r"""
set -u
for procs in $LAB_CGROUP_PROCS; do echo $$ > "$procs" || exit 90; done
n=0
while :; do
  n=$((n + 1)); echo "$n" > "$LAB_BOOTS.tmp" && mv -f "$LAB_BOOTS.tmp" "$LAB_BOOTS"
  "$@"
  rc=$?
  echo "lab: systemd-nspawn exited $rc" >&2
  [ "$rc" -eq 133 ] || exit "$rc"
done
"""


class LabError(RuntimeError):
    """The lab could not be set up, a wait ran past its bound, or teardown left something."""


def lab_unavailable_reason() -> str | None:
    """Why a lab cannot run here (None when it can): the only two reasons tests skip for."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, cgroups, containers)"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is missing (run .ci/lab-setup as root)"
    return None


# ---------------------------------------------------------------------------------------- helpers


def _run(
    argv: Sequence[str], *, timeout: float = 20.0, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{shlex.join(argv)}: no answer within {timeout}s") from exc
    if check and cp.returncode != 0:
        tail = (cp.stderr or cp.stdout).strip()[-2000:]
        raise LabError(f"{shlex.join(argv)} exited {cp.returncode}: {tail}")
    return cp


def _start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks (None when gone): tells a PID from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    found = []
    prefix = str(path).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = _unescape(line.split()[4])
        if target == str(path) or target.startswith(prefix):
            found.append(Path(target))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline, backslash as octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _fstype(path: Path) -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if _unescape(left.split()[4]) == str(path):
            return right.split()[0]
    return None


def _cgroup_roots() -> list[Path]:
    """Where a container gets its own cgroup: cgroup2, plus name=systemd on hybrid/legacy hosts."""
    if _fstype(CGROUP_ROOT) == "cgroup2":
        return [CGROUP_ROOT]
    roots = []
    for sub in ("unified", "systemd"):
        if _fstype(CGROUP_ROOT / sub) in {"cgroup", "cgroup2"}:
            roots.append(CGROUP_ROOT / sub)
    if not roots:
        raise LabError(f"no cgroup2 or name=systemd hierarchy under {CGROUP_ROOT}")
    return roots


def _cgroup_dirs(cg: Path) -> list[Path]:
    """``cg`` and the cgroups below it, deepest first (tolerates cgroups that come and go)."""
    found = [Path(top) for top, _, _ in os.walk(cg)]  # os.walk ignores vanished dirs
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(cg: Path) -> list[int]:
    pids: list[int] = []
    for d in _cgroup_dirs(cg):
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(x) for x in (d / "cgroup.procs").read_text().split())
    return pids


def _kill_cgroup(cg: Path, timeout: float = 10.0) -> None:
    """SIGKILL every process in the cgroup tree ``cg`` (all started by the lab) and wait."""
    if not cg.is_dir():
        return
    kill = cg / "cgroup.kill"
    deadline = time.monotonic() + timeout
    while True:
        pids = _cgroup_pids(cg)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise LabError(f"processes {pids[:10]} outlived SIGKILL in {cg}")
        if kill.exists():
            with contextlib.suppress(OSError):
                kill.write_text("1")
        else:  # cgroup v1 or an old kernel: the PIDs it lists, by PID
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _remove_cgroup(cg: Path, timeout: float = 5.0) -> None:
    if not cg.is_dir():
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            for d in _cgroup_dirs(cg):
                with contextlib.suppress(FileNotFoundError):
                    d.rmdir()
            return
        except OSError as exc:  # EBUSY while the last process is being reaped
            if time.monotonic() > deadline:
                raise LabError(f"cannot remove cgroup {cg}: {exc}") from exc
            time.sleep(0.02)


def _ssh_banner(address: str, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=timeout) as s:
            return s.recv(8).startswith(b"SSH-2.0-")
    except OSError:
        return False


def _upper_dir(upper: Path, lower: Path, rel: str) -> Path:
    """``upper/rel``, each new directory with the mode of its counterpart in ``lower`` (in an
    overlay the upper directory's mode wins; 0755 where ``lower`` has none), whatever the umask."""
    path, below = upper, lower
    for part in Path(rel).parts:
        path, below = path / part, below / part
        if not path.is_dir():
            path.mkdir()
            path.chmod(below.stat().st_mode & 0o7777 if below.is_dir() else 0o755)
    return path


def _add_operator(etc: Path, home_upper: Path, key: str) -> None:
    """:data:`OPERATOR` in a host's /etc (passwd, group, shadow: ``*``, no password but not
    locked, so sshd takes the key) with ``key`` authorized and passwordless sudo."""
    n = OPERATOR_ID
    for name, line, mode in (
        ("passwd", f"{OPERATOR}:x:{n}:{n}:sdrpc lab operator:/home/{OPERATOR}:/bin/sh", 0o644),
        ("group", f"{OPERATOR}:x:{n}:", 0o644),
        ("shadow", f"{OPERATOR}:*:19000:0:99999:7:::", 0o600),
    ):
        _write(etc / name, Path("/etc", name).read_text() + line + "\n", mode)
    sudoers = _upper_dir(etc, Path("/etc"), "sudoers.d")
    _write(sudoers / OPERATOR, f"{OPERATOR} ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    home = _upper_dir(home_upper, Path("/home"), OPERATOR)
    ssh = home / ".ssh"
    _write(ssh / "authorized_keys", key, 0o600)
    for path in (home, ssh, ssh / "authorized_keys"):
        os.chown(path, n, n)
    home.chmod(0o755)
    ssh.chmod(0o700)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(mode)


@contextlib.contextmanager
def _global_lock(timeout: float = 60.0) -> Iterator[None]:
    """Serialises lab creation and stale cleanup between processes (subnets, names)."""
    _private_dir(STATE_ROOT)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"{LOCK} held by another lab for over {timeout}s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ the record


@dataclass(frozen=True)
class _Record:
    """What a lab owns, enough for anyone to tear it down (written before anything is created)."""

    lab_id: str
    n: int
    subnet: str
    owner_pid: int
    owner_start: int | None
    cgroups: tuple[str, ...]

    @property
    def dir(self) -> Path:
        return STATE_ROOT / self.lab_id

    @property
    def bridge(self) -> str:
        return f"{self.lab_id}-br"

    @property
    def table(self) -> str:
        return f"sdrpc_lab_{self.lab_id}"

    def veth(self, i: int) -> str:
        return f"{self.lab_id}-h{i}"

    def netns(self, i: int) -> str:
        return f"{self.lab_id}-h{i}"

    def machine(self, i: int) -> str:
        return f"{self.lab_id}-h{i}"

    def cgroup(self, root: str, i: int | None = None) -> Path:
        base = Path(root) / "sdrpc-lab" / self.lab_id
        return base if i is None else base / f"h{i}"

    def save(self) -> None:
        _write(self.dir / "owner.json", json.dumps(self.__dict__, indent=1) + "\n", 0o600)

    @classmethod
    def load(cls, lab_dir: Path) -> _Record:
        """The record in ``lab_dir``; ValueError unless it names exactly that lab (it says what
        to delete: a damaged record must not point anywhere else)."""
        data = json.loads((lab_dir / "owner.json").read_text())
        data["cgroups"] = tuple(data["cgroups"])
        rec = cls(**data)
        if not (ID_RE.fullmatch(rec.lab_id) and lab_dir == STATE_ROOT / rec.lab_id):
            raise ValueError(f"{lab_dir}: record of another lab ({rec.lab_id!r})")
        if not all(Path(r).parent in {CGROUP_ROOT.parent, CGROUP_ROOT} for r in rec.cgroups):
            raise ValueError(f"{lab_dir}: cgroups outside {CGROUP_ROOT}: {rec.cgroups}")
        return rec

    def owner_alive(self) -> bool:
        return self.owner_pid > 0 and _start_time(self.owner_pid) == self.owner_start


def _teardown(rec: _Record, procs: Sequence[subprocess.Popen[bytes]] = ()) -> list[str]:  # noqa: C901 (one independent try per resource kind)
    """Remove everything ``rec`` names; idempotent, tries every step; returns what failed."""
    errors: list[str] = []

    def step(what: str, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except Exception as exc:
            errors.append(f"{what}: {exc}")

    # 1. containers: every process in the hosts' cgroups (wrappers, nspawn, the hosts' systemd)
    for root in rec.cgroups:
        step(f"kill {rec.cgroup(root)}", _kill_cgroup, rec.cgroup(root))
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
    for root in rec.cgroups:
        step(f"rmdir {rec.cgroup(root)}", _remove_cgroup, rec.cgroup(root))
        with contextlib.suppress(OSError):
            rec.cgroup(root).parent.rmdir()  # sdrpc-lab/, when no other lab uses it
    # 2. network: namespaces (their veth ends go with them), veths, bridge, firewall
    for i in range(1, rec.n + 1):  # a veth first: deleting a netns frees its devices later
        if Path("/sys/class/net", rec.veth(i)).exists():
            step(f"veth {rec.veth(i)}", _delete_link, rec.veth(i))
        if Path("/run/netns", rec.netns(i)).exists():
            step(f"netns {rec.netns(i)}", _run, ["ip", "netns", "delete", rec.netns(i)])
    if Path("/sys/class/net", rec.bridge).exists():
        step(f"bridge {rec.bridge}", _delete_link, rec.bridge)
    if shutil.which("nft") and (
        _run(["nft", "list", "table", "inet", rec.table], check=False).returncode == 0
    ):
        step(f"nft table {rec.table}", _run, ["nft", "delete", "table", "inet", rec.table])
    # 3. files: nspawn's per-machine propagation dirs, then the lab's own dir (never across a mount)
    for i in range(1, rec.n + 1):
        step(f"rm {PROPAGATE / rec.machine(i)}", shutil.rmtree, PROPAGATE / rec.machine(i), True)
    step("nspawn's image lock", _release_image_lock)
    for mount in _mounts_under(rec.dir):
        if _run(["umount", str(mount)], check=False).returncode != 0:
            step(f"umount {mount}", _run, ["umount", "--lazy", str(mount)])
    if _mounts_under(rec.dir):
        errors.append(f"still mounted under {rec.dir}: not removing it")
    elif rec.dir.exists():
        step(f"rm {rec.dir}", shutil.rmtree, rec.dir)
    return errors


def cleanup_stale() -> list[str]:
    """Tear down the labs whose owner process is dead; returns their ids."""
    with _global_lock():
        return _cleanup_stale_locked()


def _cleanup_stale_locked() -> list[str]:
    removed: list[str] = []
    failed: list[str] = []
    if not STATE_ROOT.is_dir():
        return removed
    for lab_dir in sorted(STATE_ROOT.glob(f"{ID_PREFIX}*")):
        try:
            rec = _Record.load(lab_dir)
        except (OSError, ValueError, TypeError, KeyError):
            # no record: its creator died before writing it (a record is written under the lock,
            # before anything else is created), so there is nothing but the directory
            if not _mounts_under(lab_dir):
                shutil.rmtree(lab_dir, ignore_errors=True)
            continue
        if rec.owner_alive():
            continue
        errors = _teardown(rec)
        if errors:
            failed.append(f"{rec.lab_id}: " + "; ".join(errors))
        else:
            removed.append(rec.lab_id)
    if failed:
        raise LabError("cannot remove stale labs: " + " | ".join(failed))
    return removed


# --------------------------------------------------------------------------------------- the lab


class Lab:
    """N booted hosts ``lab1..labN`` reachable over ssh; a context manager (see module doc)."""

    def __init__(
        self, n: int = 3, *, boot_timeout: float = 60.0, no_systemd: Collection[str] = ()
    ) -> None:
        if not 1 <= n <= 200:
            raise ValueError("a lab has 1 to 200 hosts")
        self.n = n
        self.boot_timeout = boot_timeout
        self.no_systemd = frozenset(self._index(h) for h in no_systemd)
        self._rec: _Record | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self.boot_seconds: float | None = None

    # -- context manager
    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- names and addresses
    @property
    def hosts(self) -> list[str]:
        return [f"lab{i}" for i in range(1, self.n + 1)]

    def _index(self, host: str | int) -> int:
        i = host if isinstance(host, int) else int(str(host).removeprefix("lab") or "0")
        if not 1 <= i <= self.n:
            raise ValueError(f"no host {host!r} in this lab (lab1..lab{self.n})")
        return i

    @property
    def record(self) -> _Record:
        if self._rec is None:
            raise LabError("the lab is not started")
        return self._rec

    @property
    def lab_id(self) -> str:
        return self.record.lab_id

    @property
    def dir(self) -> Path:
        return self.record.dir

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.record.subnet)

    @property
    def gateway(self) -> str:
        """The machine's address on the lab bridge (what hosts connect to for allowed ports)."""
        return str(self.network.network_address + 1)

    def address(self, host: str | int) -> str:
        return str(self.network.network_address + 10 + self._index(host))

    @property
    def bridge(self) -> str:
        return self.record.bridge

    def veth(self, host: str | int) -> str:
        """The host's veth end on the machine's side (on the bridge)."""
        return self.record.veth(self._index(host))

    def netns(self, host: str | int) -> str:
        return self.record.netns(self._index(host))

    @property
    def nft_table(self) -> str:
        """``inet <name>``: the lab's firewall table."""
        return self.record.table

    @property
    def ssh_config_path(self) -> Path:
        return self.dir / "ssh" / "config"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "ssh" / "known_hosts"

    @property
    def identity(self) -> Path:
        return self.dir / "ssh" / "id_ed25519"

    @property
    def inventory_path(self) -> Path:
        """An Ansible INI inventory (group ``lab``) that goes through :attr:`ssh_config_path`."""
        return self.dir / "ssh" / "inventory.ini"

    def host_dir(self, host: str | int) -> Path:
        """The host's state on the machine: ``etc``/``var``/... upper dirs, ``root``, ``log``."""
        return self.dir / f"h{self._index(host)}"

    def log(self, host: str | int) -> str:
        try:
            return (self.host_dir(host) / "log").read_text(errors="replace")
        except OSError:
            return ""

    def boots(self, host: str | int) -> int:
        """How many times the host has booted (1 after start, +1 per reboot)."""
        try:
            return int((self.host_dir(host) / "boots").read_text())
        except (OSError, ValueError):
            return 0

    # -- life cycle
    def start(self) -> None:
        if self._rec is not None:
            raise LabError("the lab is already started")
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        missing = [
            t
            for t in ("systemd-nspawn", "ip", "nft", "ssh", "ssh-keygen", "nsenter")
            if shutil.which(t) is None
        ]
        if missing or not Path("/usr/sbin/sshd").exists():
            raise LabError(f"missing {missing or ['sshd']}: run .ci/lab-setup as root")
        with _global_lock():
            _cleanup_stale_locked()
            lab_id = self._new_id()
            rec = _Record(
                lab_id=lab_id,
                n=self.n,
                subnet=str(self._free_subnet()),
                owner_pid=os.getpid(),
                owner_start=_start_time(os.getpid()),
                cgroups=tuple(str(r) for r in _cgroup_roots()),
            )
            _private_dir(rec.dir)
            rec.save()
            self._rec = rec
            self._make_network()  # the bridge claims the subnet: under the lock
        self._make_files()
        for i in range(1, self.n + 1):
            self._make_host_net(i)
        t0 = time.monotonic()
        for i in range(1, self.n + 1):
            self._spawn(i)
        self._wait_ssh(range(1, self.n + 1), t0 + self.boot_timeout)
        self.boot_seconds = time.monotonic() - t0

    def close(self) -> None:
        """Remove everything the lab created; raises LabError listing what could not be removed."""
        rec, self._rec = self._rec, None
        if rec is None:
            return
        errors = _teardown(rec, list(self._procs.values()))
        self._procs.clear()
        if errors:
            if rec.dir.is_dir():  # let the next cleanup_stale() retry, although we live on
                with contextlib.suppress(OSError):
                    dataclasses.replace(rec, owner_pid=0, owner_start=None).save()
            raise LabError("lab teardown left: " + "; ".join(errors))

    @staticmethod
    def _new_id() -> str:
        for _ in range(100):
            lab_id = ID_PREFIX + secrets.token_hex(3)[:5]
            if not (STATE_ROOT / lab_id).exists():
                return lab_id
        raise LabError("no free lab id")

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout)
        for r in routes:
            dst = r.get("dst", "default")
            if dst != "default":
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.ip_network(dst, strict=False))
        for a in json.loads(_run(["ip", "-j", "-4", "addr"]).stdout):
            for info in a.get("addr_info", []):
                used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", False))
        for lab_dir in STATE_ROOT.glob(f"{ID_PREFIX}*"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                used.append(ipaddress.ip_network(_Record.load(lab_dir).subnet))
        for net in SUBNET_POOL.subnets(new_prefix=24):
            if not any(net.overlaps(u) for u in used):
                return net
        raise LabError(f"no free /24 left in {SUBNET_POOL}")

    # -- network
    def _make_network(self) -> None:
        rec = self.record
        br = rec.bridge
        # A dead end, in place before the bridge exists: from the bridge only replies and the
        # ports a test opens (at the gateway address) reach the machine, the rest is rejected (a
        # blocked connect fails at once); nothing is routed into or out of the bridge, while hosts
        # still talk to each other (bridged traffic crosses the forward hook with br_netfilter).
        _run(
            ["nft", "-f", "-"],
            input=f"""
table inet {rec.table} {{
  set tcp_ports {{ type inet_service; }}
  set udp_ports {{ type inet_service; }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname "{br}" ct state established,related accept
    iifname "{br}" ip daddr {self.gateway} tcp dport @tcp_ports accept
    iifname "{br}" ip daddr {self.gateway} udp dport @udp_ports accept
    iifname "{br}" meta l4proto tcp reject with tcp reset
    iifname "{br}" reject with icmpx type admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    iifname "{br}" oifname "{br}" accept
    iifname "{br}" drop
    oifname "{br}" drop
  }}
}}
""",
        )
        _run(["ip", "link", "add", br, "type", "bridge"])
        _disable_ipv6(br)
        _run(["ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", br])
        _run(["ip", "link", "set", br, "up"])

    def _make_host_net(self, i: int) -> None:
        rec = self.record
        ns, veth = rec.netns(i), rec.veth(i)
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _disable_ipv6(veth)
        _run(["ip", "link", "set", veth, "master", rec.bridge, "up"])
        addr = f"{self.address(i)}/{self.network.prefixlen}"
        _run(["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def allow_from_hosts(self, port: int, proto: str = "tcp") -> None:
        """Let the hosts reach ``port`` (``tcp`` or ``udp``) of the machine at :attr:`gateway`
        (a listener on 0.0.0.0 or on the gateway address)."""
        self._ports("add", port, proto)

    def deny_from_hosts(self, port: int, proto: str = "tcp") -> None:
        """Close again a port opened with :meth:`allow_from_hosts`."""
        self._ports("delete", port, proto)

    def _ports(self, verb: str, port: int, proto: str) -> None:
        if proto not in {"tcp", "udp"} or not 0 < int(port) < 65536:
            raise ValueError(f"not a tcp/udp port: {proto} {port}")
        set_name = f"{proto}_ports"
        _run(["nft", verb, "element", "inet", self.nft_table, set_name, f"{{ {int(port)} }}"])

    def link_down(self, host: str | int) -> None:
        """Cut the host's cable (its veth on the bridge side): no packet in or out."""
        _run(["ip", "link", "set", self.veth(host), "down"])

    def link_up(self, host: str | int) -> None:
        _run(["ip", "link", "set", self.veth(host), "up"])

    # -- files of the lab and of each host
    def _make_files(self) -> None:
        sshdir = _private_dir(self.dir / "ssh")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.lab_id}-client",
              "-f", str(self.identity)])  # fmt: skip
        client_pub = self.identity.with_suffix(".pub").read_text()
        generators = _generators()
        known, config, inventory = [], [], ["[lab]"]
        for i in range(1, self.n + 1):
            name, addr = f"lab{i}", self.address(i)
            hdir = _private_dir(self.dir / f"h{i}")
            for d in OVERLAID:
                _private_dir(hdir / d.strip("/")).chmod(Path(d).stat().st_mode & 0o7777)
            etc = hdir / "etc"

            def etc_dir(rel: str, etc: Path = etc) -> Path:
                return _upper_dir(etc, Path("/etc"), rel)

            system = etc_dir("systemd/system")
            os.setxattr(system, "trusted.overlay.opaque", b"y")  # hide the machine's enablings
            wants = etc_dir("systemd/system/multi-user.target.wants")
            (wants / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
            for unit in MASKED:
                (system / unit).symlink_to("/dev/null")
            gens = etc_dir("systemd/system-generators")
            for g in generators - KEPT_GENERATORS:
                (gens / g).symlink_to("/dev/null")
            journald = etc_dir("systemd/journald.conf.d")
            _write(journald / "sdrpc-lab.conf", "[Journal]\nStorage=volatile\n")
            _write(etc / "hostname", f"{name}\n")
            _write(etc / "machine-id", uuid.uuid4().hex + "\n", 0o444)
            _write(etc / "hosts", f"127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost\n")
            _write(etc / "fstab", "# sdrpc lab host: nothing to mount\n")
            sshd = etc_dir("ssh")
            _write(etc_dir("ssh/sshd_config.d") / "00-sdrpc-lab.conf", SSHD_DROPIN)
            key = sshd / "ssh_host_ed25519_key"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)])
            host_pub = " ".join(key.with_suffix(".pub").read_text().split()[:2])
            for other in Path("/etc/ssh").glob("ssh_host_*"):  # the machine's keys: whiteouts
                if not os.path.lexists(sshd / other.name):
                    os.mknod(sshd / other.name, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            if Path("/var/lib/dbus").is_dir():  # D-Bus's copy of the machine id, per host too
                dbus = _upper_dir(hdir / "var", Path("/var"), "lib/dbus")
                (dbus / "machine-id").symlink_to("/etc/machine-id")
            known.append(f"{name},{addr} {host_pub}")
            root = _private_dir(hdir / "root")
            _write(_private_dir(root / ".ssh") / "authorized_keys", client_pub, 0o600)
            _add_operator(etc, hdir / "home", client_pub)
            config.append(f"Host {name}\n  HostName {addr}\n")
            inventory.append(f"{name} ansible_host={addr}")
        _write(self.known_hosts, "\n".join(known) + "\n", 0o600)
        config.append(
            "Host *\n"
            "  User root\n"
            f"  IdentityFile {self.identity}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  UpdateHostKeys no\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 5\n"
            "  LogLevel ERROR\n"
        )
        _write(self.ssh_config_path, "".join(config), 0o600)
        inventory += [
            "",
            "[lab:vars]",
            "ansible_user=root",
            f"ansible_ssh_common_args=-F {self.ssh_config_path}",
            # no ControlPersist masters outliving the run (on a machine whose PID 1 does not reap,
            # they stay as zombies); pipelining: one ssh connection per task
            "ansible_ssh_args=-o ControlMaster=no -o ControlPath=none",
            "ansible_pipelining=true",
            "ansible_python_interpreter=/usr/bin/python3",
        ]
        _write(self.inventory_path, "\n".join(inventory) + "\n", 0o600)
        assert sshdir.is_dir()
        # the machine's / once, read-only and without anything mounted below it
        root = _private_dir(self.dir / "rootfs")
        _run(["mount", "--bind", "/", str(root)])
        _run(["mount", "-o", "remount,bind,ro", str(root)])
        _run(["mount", "--make-private", str(root)])

    # -- containers
    def _spawn(self, i: int) -> None:
        rec = self.record
        hdir = self.dir / f"h{i}"
        procs = []
        for root in rec.cgroups:
            cg = rec.cgroup(root, i)
            cg.mkdir(parents=True, exist_ok=True)
            (cg / "exec").mkdir(exist_ok=True)  # for exec(): outside the host's own tree
            procs.append(str(cg / "cgroup.procs"))
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--settings=no",
            f"--directory={self.dir / 'rootfs'}",
            "--read-only",
            *(["--as-pid2"] if i in self.no_systemd else ["--boot"]),
            "--register=no",
            "--keep-unit",
            f"--machine={rec.machine(i)}",
            f"--hostname=lab{i}",
            f"--network-namespace-path=/run/netns/{rec.netns(i)}",
            "--capability=CAP_NET_ADMIN",  # its own netns only (nspawn omits it with a netns path)
            f"--bind={hdir / 'root'}:/root",
            "--console=pipe",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--suppress-sync=yes",
        ]
        for d in OVERLAID:
            if Path(d).is_dir():
                argv.append(f"--overlay={d}:{hdir / d.strip('/')}:{d}")
        if i in self.no_systemd:  # no init: nspawn's stub reaps, sshd is the only service
            argv += ["/bin/sh", "-c", NO_SYSTEMD_INIT]
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LAB_CGROUP_PROCS": " ".join(procs),
            "LAB_BOOTS": str(hdir / "boots"),
        }
        with (hdir / "log").open("ab") as log:
            self._procs[i] = subprocess.Popen(
                ["bash", "-c", WRAPPER, "lab-host", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _wait_ssh(self, indices: Sequence[int] | range, deadline: float) -> None:
        waiting = set(indices)
        while waiting:
            for i in sorted(waiting):
                proc = self._procs[i]
                if proc.poll() is not None:
                    raise LabError(
                        f"lab{i} exited with {proc.returncode} while booting:\n"
                        + self.log(i)[-3000:]
                    )
                if _ssh_banner(self.address(i)):
                    waiting.discard(i)
            if waiting and time.monotonic() > deadline:
                hosts = ", ".join(f"lab{i}" for i in sorted(waiting))
                raise LabError(f"{hosts}: sshd did not answer in time")
            if waiting:
                time.sleep(0.02)

    def leader_pid(self, host: str | int) -> int:
        """The host's PID 1 (its systemd) as the machine sees it."""
        i = self._index(host)
        cg = self.record.cgroup(self.record.cgroups[0], i)
        for pid in _cgroup_pids(cg):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) >= 2 and ids[-1] == "1":
                            return pid
        raise LabError(f"lab{i} is not running")

    # -- talking to hosts
    def ssh_argv(self, host: str | int, *cmd: str, options: Sequence[str] = ()) -> list[str]:
        """``ssh -F <config> [options] -- labN [cmd]``: one string is a shell command line,
        several are an argv (quoted for the remote shell)."""
        name = f"lab{self._index(host)}"
        remote = [] if not cmd else [cmd[0] if len(cmd) == 1 else shlex.join(cmd)]
        return ["ssh", "-F", str(self.ssh_config_path), *options, "--", name, *remote]

    def ssh(
        self,
        host: str | int,
        *cmd: str,
        timeout: float = 60.0,
        input: str | None = None,
        check: bool = False,
        options: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on the host over ssh (host key checked); text output captured."""
        argv = self.ssh_argv(host, *cmd, options=options)
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=check,
        )

    def exec(
        self, host: str | int, cmd: str | Sequence[str], *, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the host without ssh (nsenter into its PID 1's namespaces), e.g. to
        look at a host whose network is down. A string is a ``sh -c`` command line."""
        i = self._index(host)
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        join = " && ".join(
            f"echo $$ > {shlex.quote(str(self.record.cgroup(r, i) / 'exec' / 'cgroup.procs'))}"
            for r in self.record.cgroups
        )
        nsenter = ["nsenter", f"--target={self.leader_pid(i)}", "--all", "--root", "--wd"]
        nsenter += ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]
        return subprocess.run(
            ["sh", "-c", f'{join} && exec "$@"', "lab-exec", *nsenter, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def reboot(self, host: str | int, timeout: float = 60.0) -> float:
        """``systemctl reboot`` inside the host; returns once sshd answers after the new boot
        (its enabled units start again). Returns the seconds it took."""
        i = self._index(host)
        if i in self.no_systemd:
            raise LabError(f"lab{i} runs without systemd: it has no systemctl reboot")
        t0 = time.monotonic()
        deadline = t0 + timeout
        before = self.boots(i)
        with subprocess.Popen(
            self.ssh_argv(i, "systemctl reboot"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as req:
            while self.boots(i) <= before:
                if self._procs[i].poll() is not None:
                    raise LabError(f"lab{i} stopped instead of rebooting:\n{self.log(i)[-3000:]}")
                if time.monotonic() > deadline:
                    req.kill()
                    raise LabError(f"lab{i} did not reboot within {timeout}s")
                time.sleep(0.02)
            with contextlib.suppress(subprocess.TimeoutExpired):
                req.wait(timeout=max(0.1, deadline - time.monotonic()))
            if req.poll() is None:
                req.kill()
        self._wait_ssh([i], deadline)
        return time.monotonic() - t0


def _release_image_lock() -> None:
    """What systemd-nspawn does at exit, which a killed one cannot: remove the lock file of the
    root image (the machine's /, shared by every lab) unless some container still holds it."""
    st = os.stat("/")
    path = Path("/run/systemd/nspawn/locks", f"inode-{st.st_dev}:{st.st_ino}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another lab's container uses it
    else:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _delete_link(ifname: str) -> None:
    cp = _run(["ip", "link", "delete", ifname], check=False)
    if cp.returncode != 0 and Path("/sys/class/net", ifname).exists():
        raise LabError(f"ip link delete {ifname}: {cp.stderr.strip()}")


def _disable_ipv6(ifname: str) -> None:
    knob = Path("/proc/sys/net/ipv6/conf", ifname, "disable_ipv6")
    if knob.exists():
        knob.write_text("1")


def _generators() -> frozenset[str]:
    names: set[str] = set()
    for d in GENERATOR_DIRS:
        with contextlib.suppress(OSError):
            names.update(p.name for p in Path(d).iterdir())
    return frozenset(names)
