"""``servers.toml``: one ``[[server]]`` table per rpc-server, validated strictly.

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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from sdrpc_build.supervise.cache import parse_size
from sdrpc_build.supervise.errors import LaunchConfigError
from sdrpc_build.supervise.spec import RESTART_POLICIES, RestartPolicy, valid_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as tomllib

__all__ = ["SERVER_KEYS", "ServerOptions", "did_you_mean", "load_config", "parse_config"]

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


@dataclass(frozen=True)
class ServerOptions:
    """One server as the user asked for it (before the binary, host and port are resolved)."""

    name: Optional[str] = None
    binary: Optional[Path] = None
    backend: Optional[str] = None
    build: Optional[str] = None  # a manifest key (or unique prefix) from sdrpc-build
    host: str = "127.0.0.1"
    port: int = 50052
    devices: tuple[str, ...] = ()
    threads: Optional[int] = None
    cache: bool = False
    cache_path: Optional[Path] = None  # explicit cache root; else sdrpc's default root
    cache_per_server: bool = True  # the server's own dir is <root>/<name>
    cache_max_size: Optional[int] = None
    visible_devices: Optional[str] = None
    env: tuple[tuple[str, str], ...] = ()
    restart: RestartPolicy = "on-failure"
    origin: str = "command line"


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fail(where: str, msg: str, hint: Optional[str] = None) -> LaunchConfigError:
    return LaunchConfigError(f"{where}: {msg}", hint=hint)


def _str(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _fail(where, f"{key!r} must be a non-empty string, not {v!r}")
    return v.strip()


def _int(where: str, key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(where, f"{key!r} must be an integer from {lo} to {hi}, not {v!r}")
    return v


def _list(where: str, key: str, v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, list) and v and all(isinstance(x, (str, int)) for x in v):
        return ",".join(str(x).strip() for x in v)
    return _str(where, key, v)


def _server(table: Any, where: str, base_dir: Path) -> ServerOptions:
    if not isinstance(table, dict):
        raise _fail(where, "must be a table")
    for key in table:
        if key not in SERVER_KEYS:
            raise _fail(
                where,
                f"unknown key {key!r}{did_you_mean(key, SERVER_KEYS)}",
                hint="valid keys: " + ", ".join(SERVER_KEYS),
            )
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
        o = replace(o, port=_int(where, "port", t["port"], 0, 65535))
    if "device" in t:
        devs = tuple(d.strip() for d in _list(where, "device", t["device"]).split(",") if d)
        o = replace(o, devices=devs)
    if "threads" in t:
        o = replace(o, threads=_int(where, "threads", t["threads"], 1, 4096))
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
            size = parse_size(v)
        except Exception as exc:
            raise _fail(where, str(exc), hint='use a size such as "20G" or "512M"') from None
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
                pairs.append((k, "1" if raw else "0"))
            elif isinstance(raw, (str, int, float)):
                pairs.append((k, str(raw)))
            else:
                raise _fail(where, f"env value for {k!r} must be a string or number")
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


def parse_config(data: Mapping[str, Any], source: str, base_dir: Path) -> list[ServerOptions]:
    """Validate a parsed TOML document; relative paths are relative to ``base_dir``."""
    for key in data:
        if key != "server":
            raise _fail(
                source,
                f"unknown top-level key {key!r}{did_you_mean(key, ['server'])}",
                hint="each server is a [[server]] table",
            )
    tables = data.get("server")
    if not isinstance(tables, list) or not tables:
        raise _fail(source, "no [[server]] tables", hint="add one [[server]] table per server")
    servers = [_server(t, f"{source}: [[server]] #{i + 1}", base_dir) for i, t in enumerate(tables)]
    names = [s.name for s in servers if s.name]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(source, f"server name {dup[0]!r} is used twice")
    return servers


def load_config(path: Path) -> list[ServerOptions]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LaunchConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise LaunchConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LaunchConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, str(path), path.parent)
