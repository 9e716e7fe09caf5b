"""The state file of a detached ``sdrpc-launch`` instance: ``<sdrpc cache>/run/<name>.json``.

The detached supervisor writes it (atomically: temp file + fsync + rename) when it starts and
whenever a server becomes ready or exits, and removes it when it ends; ``status`` and ``stop``
read it. Every process in it is a :class:`ProcessIdentity` (PID + start time), so a file left
behind by a killed supervisor, whose PID now names another process, is recognised as stale.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Optional, cast

from sdrpc_build.errors import StateFileError, UsageError
from sdrpc_build.launch import settings
from sdrpc_build.launch.identity import ProcessIdentity
from sdrpc_build.launch.private import show_path, write_private
from sdrpc_build.launch.spec import valid_name
from sdrpc_build.launch.supervisor import DeviceRow

__all__ = [
    "DEFAULT_INSTANCE",
    "STATE_FORMAT",
    "InstancePhase",
    "InstanceState",
    "ServerPhase",
    "ServerRecord",
    "StateFileError",
    "check_instance_name",
    "instance_flag",
    "list_instances",
    "read_state",
    "remove_state",
    "state_from_json",
    "state_path",
    "state_to_json",
    "supervisor_log",
    "write_state",
]

STATE_FORMAT = 1
DEFAULT_INSTANCE = "default"
InstancePhase = Literal["starting", "running"]
ServerPhase = Literal["starting", "ready", "restarting", "fatal", "stopped"]
_INSTANCE_PHASES: tuple[InstancePhase, ...] = ("starting", "running")
_SERVER_PHASES: tuple[ServerPhase, ...] = ("starting", "ready", "restarting", "fatal", "stopped")


@dataclass(frozen=True)
class ServerRecord:
    """One supervised server as the supervisor last saw it."""

    name: str
    endpoint: str  # host:port as bound
    log: Path
    phase: ServerPhase = "starting"
    process: Optional[ProcessIdentity] = None  # set while it runs (READY)
    ready_at: Optional[float] = None  # wall clock (time.time()) when it became ready
    log_offset: int = 0  # log size when it became ready: client lines after it are real
    restarts: int = 0


@dataclass(frozen=True)
class InstanceState:
    """Everything ``status`` and ``stop`` need, with no access to the supervisor."""

    instance: str
    supervisor: ProcessIdentity
    started_at: float  # wall clock
    log_dir: Path
    supervisor_log: Path
    stop_timeout: float  # the supervisor's SIGTERM -> SIGKILL delay for its servers
    phase: InstancePhase = "starting"
    rpc_servers: str = ""
    devices: tuple[DeviceRow, ...] = ()
    servers: tuple[ServerRecord, ...] = ()

    def server(self, name: str) -> Optional[ServerRecord]:
        return next((s for s in self.servers if s.name == name), None)

    def with_server(self, record: ServerRecord) -> InstanceState:
        """This state with ``record`` replacing the server of the same name (or appended)."""
        if self.server(record.name) is None:
            return replace(self, servers=(*self.servers, record))
        return replace(
            self, servers=tuple(record if s.name == record.name else s for s in self.servers)
        )


def check_instance_name(name: str) -> str:
    """Instance names become file names: the same rule as server names."""
    if not valid_name(name):
        raise UsageError(
            f"invalid instance name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (at most 64, not starting with . - _)",
        )
    return name


def instance_flag(instance: str) -> str:
    """`` --instance NAME`` for commands shown to the user; empty for the default instance."""
    return "" if instance == DEFAULT_INSTANCE else f" --instance {instance}"


def state_path(run_dir: Path, instance: str) -> Path:
    return run_dir / f"{check_instance_name(instance)}.json"


def supervisor_log(log_dir: Path, instance: str) -> Path:
    """The detached supervisor's own output (next to the per-server logs)."""
    return log_dir / f"sdrpc-launch-{check_instance_name(instance)}.log"


def list_instances(run_dir: Path) -> list[str]:
    """Names that have a state file (live or stale)."""
    try:
        return sorted(p.stem for p in run_dir.glob("*.json") if valid_name(p.stem))
    except OSError:
        return []


# -- JSON ---------------------------------------------------------------------------------------
def _identity_json(ident: Optional[ProcessIdentity]) -> Optional[dict[str, Any]]:
    return None if ident is None else asdict(ident)


def state_to_json(state: InstanceState) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "instance": state.instance,
        "phase": state.phase,
        "supervisor": _identity_json(state.supervisor),
        "started_at": state.started_at,
        "log_dir": str(state.log_dir),
        "supervisor_log": str(state.supervisor_log),
        "stop_timeout": state.stop_timeout,
        "rpc_servers": state.rpc_servers,
        "devices": [asdict(d) for d in state.devices],
        "servers": [
            {
                "name": s.name,
                "endpoint": s.endpoint,
                "log": str(s.log),
                "phase": s.phase,
                "process": _identity_json(s.process),
                "ready_at": s.ready_at,
                "log_offset": s.log_offset,
                "restarts": s.restarts,
            }
            for s in state.servers
        ],
    }


def _get(obj: Any, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise StateFileError(f"missing {key!r}")
    value = obj[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):  # no field is a bool
        raise StateFileError(f"{key!r} has the wrong type")
    return value


def _identity(obj: Any) -> ProcessIdentity:
    method = _get(obj, "method", str)
    if method not in ("proc", "ps", "pid"):
        raise StateFileError(f"unknown identity method {method!r}")
    pid = _get(obj, "pid", int)
    if pid <= 0:
        raise StateFileError(f"invalid pid {pid}")
    return ProcessIdentity(pid, _get(obj, "start", str, optional=True), method)


def _device(obj: Any) -> DeviceRow:
    if not isinstance(obj, dict):
        raise StateFileError("a device entry is not an object")
    values: dict[str, Any] = {}
    for f in fields(DeviceRow):
        values[f.name] = _get(obj, f.name, int if f.type in ("int", int) else str)
    return DeviceRow(**values)


def _server(obj: Any) -> ServerRecord:
    phase = _get(obj, "phase", str)
    if phase not in _SERVER_PHASES:
        raise StateFileError(f"unknown server phase {phase!r}")
    process = _get(obj, "process", dict, optional=True)
    ready_at = _get(obj, "ready_at", (int, float), optional=True)
    name = _get(obj, "name", str)
    if not valid_name(name):
        raise StateFileError(f"invalid server name {name!r}")
    return ServerRecord(
        name=name,
        endpoint=_get(obj, "endpoint", str),
        log=Path(_get(obj, "log", str)),
        phase=cast(ServerPhase, phase),
        process=None if process is None else _identity(process),
        ready_at=None if ready_at is None else float(ready_at),
        log_offset=_get(obj, "log_offset", int),
        restarts=_get(obj, "restarts", int),
    )


def state_from_json(obj: Any) -> InstanceState:
    """Validate a decoded state file; raise :class:`StateFileError` naming what is wrong."""
    fmt = _get(obj, "format", int)
    if fmt != STATE_FORMAT:
        raise StateFileError(f"state file format {fmt} (this sdrpc reads {STATE_FORMAT})")
    phase = _get(obj, "phase", str)
    if phase not in _INSTANCE_PHASES:
        raise StateFileError(f"unknown phase {phase!r}")
    return InstanceState(
        instance=_check_name(_get(obj, "instance", str)),
        supervisor=_identity(_get(obj, "supervisor", dict)),
        started_at=float(_get(obj, "started_at", (int, float))),
        log_dir=Path(_get(obj, "log_dir", str)),
        supervisor_log=Path(_get(obj, "supervisor_log", str)),
        stop_timeout=_stop_timeout(_get(obj, "stop_timeout", (int, float))),
        phase=cast(InstancePhase, phase),
        rpc_servers=_get(obj, "rpc_servers", str),
        devices=tuple(_device(d) for d in _get(obj, "devices", list)),
        servers=tuple(_server(s) for s in _get(obj, "servers", list)),
    )


def _stop_timeout(value: float) -> float:
    try:
        return settings.stop_timeout(value, "'stop_timeout'")
    except settings.SettingError as exc:
        raise StateFileError(exc.message) from None


def _check_name(name: str) -> str:
    if not valid_name(name):
        raise StateFileError(f"invalid instance name {name!r}")
    return name


# -- files --------------------------------------------------------------------------------------
def write_state(path: Path, state: InstanceState) -> None:
    """Atomically replace ``path``: readers see the old file or the new one, never half."""
    write_private(path, json.dumps(state_to_json(state), indent=2) + "\n")


def _check_private(path: Path, st: os.stat_result) -> None:
    """Trust a state file only if nobody else could have written it (it names PIDs to signal)."""
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise StateFileError(f"{path} belongs to another user (uid {st.st_uid}); not trusted")
    if st.st_mode & 0o022:
        raise StateFileError(
            f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); not trusted"
        )


def read_state(path: Path) -> Optional[InstanceState]:
    """The state in ``path``; None when there is none; :class:`StateFileError` when corrupt."""
    try:
        with open(path, "rb") as f:
            _check_private(path, os.fstat(f.fileno()))
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read {show_path(path)}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StateFileError(f"{path} is not UTF-8 text") from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"{path} is not JSON: {exc}") from None
    try:
        return state_from_json(obj)
    except StateFileError as exc:
        raise StateFileError(f"{path}: {exc}") from None


def remove_state(path: Path, owner_pid: Optional[int] = None) -> bool:
    """Remove ``path``; with ``owner_pid``, only while it names that supervisor."""
    if owner_pid is not None:
        try:
            current = read_state(path)
        except StateFileError:
            current = None
        if current is not None and current.supervisor.pid != owner_pid:
            return False  # another instance took the name over
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
