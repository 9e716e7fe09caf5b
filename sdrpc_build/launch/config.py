"""``servers.toml``: one ``[[server]]`` table per rpc-server, validated strictly.

[supervise]               # optional; the command line's flags win over it
ready-timeout = 120       # the keys, defaults and ranges: settings.SUPERVISE
max-failures = 3

[[server]]
name = "cuda"
backend = "cuda"
port = 50052
visible-devices = "0"

[[server]]
name = "vulkan"
backend = "vulkan"
port = 50053
device = "Vulkan1,Vulkan2"
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, TypeVar

from sdrpc_build.errors import LaunchConfigError
from sdrpc_build.launch import settings
from sdrpc_build.launch.private import show_path
from sdrpc_build.launch.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_RESTART,
    RESTART_POLICIES,
    Policy,
    RestartPolicy,
)
from sdrpc_build.launch.spec import valid_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as tomllib

__all__ = [
    "SERVER_KEYS",
    "SUPERVISE_KEYS",
    "Config",
    "ServerOptions",
    "Supervision",
    "did_you_mean",
    "load_config",
    "parse_config",
    "parse_server",
    "supervision_policy",
]

SERVER_KEYS = (
    "name",
    "binary",
    "backend",
    "build",
    "host",
    "port",
    "device",
    "threads",
    "cache",
    "cache-max-size",
    "visible-devices",
    "env",
    "restart",
)
SUPERVISE_KEYS = tuple(s.key for s in settings.SUPERVISE)
_TOP_KEYS = ("server", "supervise")
T = TypeVar("T")


@dataclass(frozen=True)
class ServerOptions:
    """One server as the user asked for it (before the binary, host and port are resolved)."""

    name: Optional[str] = None
    binary: Optional[Path] = None
    backend: Optional[str] = None
    build: Optional[str] = None  # a manifest key (or unique prefix) from sdrpc-build
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    devices: tuple[str, ...] = ()
    threads: Optional[int] = None
    cache: bool = False
    cache_path: Optional[Path] = None  # explicit cache root; else sdrpc's default root
    cache_per_server: bool = True  # the server's own dir is <root>/<name>
    cache_max_size: Optional[int] = None
    visible_devices: Optional[str] = None
    env: tuple[tuple[str, str], ...] = ()
    restart: RestartPolicy = DEFAULT_RESTART
    origin: str = "command line"


@dataclass(frozen=True)
class Supervision:
    """The ``[supervise]`` table (one field per ``settings.SUPERVISE`` entry); None = not
    given (the command line or the default decides)."""

    ready_timeout: Optional[float] = None
    stop_timeout: Optional[float] = None
    max_failures: Optional[int] = None
    failure_window: Optional[float] = None


def supervision_policy(file: Supervision, given: Mapping[str, object]) -> Policy:
    """Supervision settings: the command line (``given``: raw flag values by field name, None
    = not given) > servers.toml's ``[supervise]`` > the defaults."""
    values: dict[str, Any] = {}
    for s in settings.SUPERVISE:
        raw = given.get(s.field)
        if raw is not None:
            values[s.field] = s.check(raw, s.flag)
        elif getattr(file, s.field) is not None:
            values[s.field] = getattr(file, s.field)
    return replace(Policy(), **values)


@dataclass(frozen=True)
class Config:
    """A validated servers.toml."""

    servers: tuple[ServerOptions, ...]
    supervise: Supervision = Supervision()


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fail(where: str, msg: str, hint: Optional[str] = None) -> LaunchConfigError:
    return LaunchConfigError(f"{where}: {msg}", hint=hint)


def _str(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _fail(where, f"{key!r} must be a non-empty string, not {v!r}")
    if "\0" in v:
        raise _fail(where, f"{key!r} contains a NUL character", hint="remove it")
    return v.strip()


def _number(where: str, key: str, v: Any, check: Callable[[object, str], T]) -> T:
    """A TOML number checked by the setting's validator (the one the command line uses)."""
    if isinstance(v, str):
        raise _fail(where, f"{key!r} must be a number, not the string {v!r}", "drop the quotes")
    try:
        return check(v, repr(key))
    except settings.SettingError as exc:
        raise _fail(where, exc.message, exc.hint) from None


def _list(where: str, key: str, v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, list) and v and all(isinstance(x, (str, int)) for x in v):
        return ",".join(_str(where, key, str(x)) for x in v)
    return _str(where, key, v)


def _check_table(table: Any, where: str, keys: tuple[str, ...] | list[str]) -> None:
    """``table`` is a TOML table whose keys are all in ``keys`` ("did you mean" otherwise)."""
    if not isinstance(table, dict):
        raise _fail(where, "must be a table")
    for key in table:
        if key not in keys:
            raise _fail(
                where,
                f"unknown key {key!r}{did_you_mean(key, keys)}",
                hint="valid keys: " + ", ".join(keys),
            )


def _server(table: Any, where: str, base_dir: Path) -> ServerOptions:
    _check_table(table, where, SERVER_KEYS)
    o = ServerOptions(origin=where)
    t: Mapping[str, Any] = table
    if "name" in t:
        name = _str(where, "name", t["name"])
        if not valid_name(name):
            raise _fail(where, f"name {name!r} must be letters, digits, '.', '_' or '-'")
        o = replace(o, name=name)
    if "binary" in t:
        o = replace(o, binary=(base_dir / Path(_str(where, "binary", t["binary"])).expanduser()))
    if "backend" in t:
        o = replace(o, backend=_str(where, "backend", t["backend"]).lower())
    if "build" in t:
        o = replace(o, build=_str(where, "build", t["build"]))
    if "binary" in t and "build" in t:
        raise _fail(where, "give either 'binary' or 'build', not both")
    if "host" in t:
        o = replace(o, host=_str(where, "host", t["host"]))
    if "port" in t:
        o = replace(o, port=_number(where, "port", t["port"], settings.port))
    if "device" in t:
        devs = tuple(d.strip() for d in _list(where, "device", t["device"]).split(",") if d)
        o = replace(o, devices=devs)
    if "threads" in t:
        o = replace(o, threads=_number(where, "threads", t["threads"], settings.threads))
    if "cache" in t:
        c = t["cache"]
        if isinstance(c, bool):
            o = replace(o, cache=c)
        else:
            path = base_dir / Path(_str(where, "cache", c)).expanduser()
            o = replace(o, cache=True, cache_path=path, cache_per_server=False)
    if "cache-max-size" in t:
        v = t["cache-max-size"]
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise _fail(where, f"'cache-max-size' must be a size such as \"20G\", not {v!r}")
        try:
            size = settings.parse_size(v, "'cache-max-size'")
        except settings.SettingError as exc:
            raise _fail(where, exc.message, exc.hint) from None
        o = replace(o, cache=True, cache_max_size=size)
    if "visible-devices" in t:
        o = replace(o, visible_devices=_list(where, "visible-devices", t["visible-devices"]))
    if "env" in t:
        env = t["env"]
        if not isinstance(env, dict):
            raise _fail(where, "'env' must be a table such as { GGML_RPC_DEBUG = \"1\" }")
        pairs: list[tuple[str, str]] = []
        for k, raw in env.items():
            if isinstance(raw, bool):
                value = "1" if raw else "0"
            elif isinstance(raw, (str, int, float)):
                value = str(raw)
            else:
                raise _fail(where, f"env value for {k!r} must be a string or number")
            try:
                pairs.append(settings.env_pair(k, value, "'env'"))
            except settings.SettingError as exc:
                raise _fail(where, exc.message, exc.hint) from None
        o = replace(o, env=tuple(pairs))
    if "restart" in t:
        r = t["restart"]
        if r not in RESTART_POLICIES:
            raise _fail(
                where,
                f"'restart' must be one of {', '.join(RESTART_POLICIES)}, "
                f"not {r!r}{did_you_mean(str(r), RESTART_POLICIES)}",
            )
        o = replace(o, restart=r)
    return o


def parse_server(table: Any, where: str, base_dir: Path) -> ServerOptions:
    """One ``[[server]]`` table, validated as servers.toml does (fleet.toml reuses it)."""
    return _server(table, where, base_dir)


def _supervision(table: Any, where: str) -> Supervision:
    _check_table(table, where, SUPERVISE_KEYS)
    t: Mapping[str, Any] = table
    values: dict[str, Any] = {
        s.field: _number(where, s.key, t[s.key], s.check) for s in settings.SUPERVISE if s.key in t
    }
    return Supervision(**values)


def parse_config(data: Mapping[str, Any], source: str, base_dir: Path) -> Config:
    """Validate a parsed TOML document; relative paths are relative to ``base_dir``."""
    for key in data:
        if key not in _TOP_KEYS:
            raise _fail(
                source,
                f"unknown top-level key {key!r}{did_you_mean(key, _TOP_KEYS)}",
                hint="each server is a [[server]] table; supervision settings go in [supervise]",
            )
    tables = data.get("server")
    if not isinstance(tables, list) or not tables:
        raise _fail(source, "no [[server]] tables", hint="add one [[server]] table per server")
    servers = [_server(t, f"{source}: [[server]] #{i + 1}", base_dir) for i, t in enumerate(tables)]
    names = [s.name for s in servers if s.name]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(source, f"server name {dup[0]!r} is used twice")
    supervise = _supervision(data.get("supervise", {}), f"{source}: [supervise]")
    return Config(tuple(servers), supervise)


def load_config(path: Path) -> Config:
    shown = show_path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LaunchConfigError(f"config file {shown} does not exist") from None
    except OSError as exc:
        raise LaunchConfigError(
            f"cannot read {shown}: {exc.strerror or exc}",
            hint="give --config a readable servers.toml file",
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LaunchConfigError(
            f"{shown} is not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})",
            hint="TOML files are UTF-8; save it as UTF-8",
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LaunchConfigError(f"{shown}: invalid TOML: {exc}") from None
    return parse_config(data, shown, path.parent)
