"""``fleet.toml``: the client's pins once, then hosts and their servers; validated strictly.

[client]
sd-cpp = "~/src/stable-diffusion.cpp"   # or sd-ref = "OWNER/REPO@REF", or llama-commit + max-name
transport = "ssh"                       # or "lan": servers bind the host's address
build-on = "client"                     # build here (a group of another platform: on its
                                        # first host); "host": the first host of each
                                        # (backend, platform) group builds; shipped to the rest

[[host]]
name = "gpu1"
ssh = "me@192.168.1.10"                 # anything ssh accepts; "local" = this machine
  [[host.server]]                       # the keys of servers.toml's [[server]], but
  backend = "cuda"                      # binary/build/host/restart: the fleet decides those
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sdrpc_build.build.pins import is_full_sha
from sdrpc_build.errors import LaunchConfigError, SdrpcError
from sdrpc_build.fleet.errors import FleetConfigError
from sdrpc_build.launch.config import SERVER_KEYS, ServerOptions, did_you_mean, parse_server
from sdrpc_build.launch.settings import DEFAULT_PORT
from sdrpc_build.launch.spec import valid_name, visible_devices_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10
    import tomli as tomllib

__all__ = [
    "BUILD_ON",
    "CLIENT_KEYS",
    "FLEET_SERVER_KEYS",
    "HOST_KEYS",
    "TRANSPORTS",
    "ClientConfig",
    "Fleet",
    "FleetServer",
    "Host",
    "SshTarget",
    "load_fleet",
    "parse_fleet",
    "parse_ssh",
]

CLIENT_KEYS = (
    "sd-cpp",
    "sd-ref",
    "llama-commit",
    "max-name",
    "exact",
    "llama-repo",
    "llama-src",
    "llama-sdist",
    "transport",
    "build-on",
    "ssh-config",
    "vulkan-headers",
)
HOST_KEYS = ("name", "ssh", "address", "server")
# servers.toml keys the fleet decides itself, and why
_FLEET_DECIDES = {
    "binary": "the fleet installs the server built for [client]'s pins",
    "build": "the fleet installs the server built for [client]'s pins",
    "host": "[client] transport decides the bind address (127.0.0.1, or the host's address)",
    "restart": "systemd restarts servers (Restart=on-failure with backoff)",
    "cache-max-size": "not supported in a fleet yet; 'cache = true' keeps the cache in the "
    "unit's CacheDirectory",
}
FLEET_SERVER_KEYS = tuple(k for k in SERVER_KEYS if k not in _FLEET_DECIDES)
TRANSPORTS = ("ssh", "lan")
BUILD_ON = ("client", "host")
_TOP_KEYS = ("client", "host")
_SSH_RE = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)


@dataclass(frozen=True)
class SshTarget:
    """Where ssh goes: ``host`` may be a ~/.ssh/config alias; None for ``ssh = "local"``."""

    host: Optional[str]
    user: Optional[str] = None
    port: Optional[int] = None

    @property
    def local(self) -> bool:
        return self.host is None

    def __str__(self) -> str:
        if self.host is None:
            return "local"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{'ssh://' if port else ''}{user}{self.host}{port}"


@dataclass(frozen=True)
class ClientConfig:
    """[client]: where the pins come from and how the fleet is built and reached."""

    sd_cpp: Optional[Path] = None
    sd_ref: Optional[str] = None
    llama_commit: Optional[str] = None
    max_name: Optional[int] = None
    exact: bool = False
    llama_repo: Optional[str] = None
    llama_src: Optional[Path] = None
    llama_sdist: Optional[str] = None
    transport: str = "ssh"
    build_on: str = "client"
    ssh_config: Optional[Path] = None
    vulkan_headers: Optional[str] = None  # "auto" or a path: sdrpc-build --vulkan-headers


@dataclass(frozen=True)
class FleetServer:
    """One server on a host: its name (unit name), backend, port and servers.toml options."""

    name: str
    backend: str
    port: int
    options: ServerOptions

    @property
    def unit(self) -> str:
        return f"sdrpc-server-{self.name}.service"


@dataclass(frozen=True)
class Host:
    name: str
    ssh: SshTarget
    servers: tuple[FleetServer, ...]
    address: Optional[str] = None  # the address servers bind under transport = "lan"


@dataclass(frozen=True)
class Fleet:
    client: ClientConfig
    hosts: tuple[Host, ...]
    path: Path

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)


def _fail(where: str, msg: str, hint: Optional[str] = None) -> FleetConfigError:
    return FleetConfigError(
        f"{where}: {msg}", hint=hint or "fix fleet.toml; the README lists its keys"
    )


def _unknown(where: str, table: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in table:
        if key not in keys:
            raise _fail(
                where,
                f"unknown key {key!r}{did_you_mean(str(key), keys)}",
                hint="valid keys: " + ", ".join(keys),
            )


def _str(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _fail(where, f"{key!r} must be a non-empty string, not {v!r}")
    if "\0" in v or "\n" in v:
        raise _fail(where, f"{key!r} contains a control character", hint="remove it")
    return v.strip()


def _path(where: str, key: str, v: Any, base: Path) -> Path:
    return base / Path(_str(where, key, v)).expanduser()


def _choice(where: str, key: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise _fail(
            where,
            f"{key!r} must be one of {', '.join(repr(c) for c in choices)}, not {v!r}"
            f"{did_you_mean(str(v), choices)}",
        )
    return str(v)


def parse_ssh(where: str, v: Any) -> SshTarget:
    """``local``, ``[user@]host`` or ``ssh://[user@]host[:port]`` (host may be an alias)."""
    text = _str(where, "ssh", v)
    if text == "local":
        return SshTarget(None)
    m = _SSH_RE.match(text)
    if not m or m.group("host").startswith("-"):
        raise _fail(
            where,
            f"'ssh' = {text!r} is not an ssh destination",
            hint='give [user@]host, ssh://[user@]host:port, a ~/.ssh/config alias, or "local"',
        )
    port = int(m.group("port")) if m.group("port") else None
    if port is not None and not 1 <= port <= 65535:
        raise _fail(where, f"'ssh' port {port} is not 1-65535")
    return SshTarget(m.group("host").strip("[]"), m.group("user"), port)


def _client(t: Any, base: Path) -> ClientConfig:  # noqa: C901, PLR0912 (one branch per key)
    where = "[client]"
    if not isinstance(t, dict):
        raise _fail(where, "must be a table")
    _unknown(where, t, CLIENT_KEYS)
    c: dict[str, Any] = {}
    if "sd-cpp" in t:
        c["sd_cpp"] = _path(where, "sd-cpp", t["sd-cpp"], base)
    if "sd-ref" in t:
        c["sd_ref"] = _str(where, "sd-ref", t["sd-ref"])
    if "llama-commit" in t:
        commit = _str(where, "llama-commit", t["llama-commit"])
        if not is_full_sha(commit):
            raise _fail(
                where,
                f"'llama-commit' {commit[:60]!r} is not a full 40-hex commit",
                hint="pinned means a full SHA; abbreviations and branch names are refused",
            )
        c["llama_commit"] = commit
    if "max-name" in t:
        n = t["max-name"]
        if isinstance(n, bool) or not isinstance(n, int) or not 8 <= n <= 4096 or n % 8:
            raise _fail(where, f"'max-name' must be a multiple of 8 such as 160, not {n!r}")
        c["max_name"] = n
    if "exact" in t:
        if not isinstance(t["exact"], bool):
            raise _fail(where, f"'exact' must be true or false, not {t['exact']!r}")
        c["exact"] = t["exact"]
    if "llama-repo" in t:
        c["llama_repo"] = _str(where, "llama-repo", t["llama-repo"])
    if "llama-src" in t:
        c["llama_src"] = _path(where, "llama-src", t["llama-src"], base)
    if "llama-sdist" in t:
        c["llama_sdist"] = _str(where, "llama-sdist", t["llama-sdist"])
    if "transport" in t:
        c["transport"] = _choice(where, "transport", t["transport"], TRANSPORTS)
    if "build-on" in t:
        c["build_on"] = _choice(where, "build-on", t["build-on"], BUILD_ON)
    if "ssh-config" in t:
        c["ssh_config"] = _path(where, "ssh-config", t["ssh-config"], base)
    if "vulkan-headers" in t:
        v = _str(where, "vulkan-headers", t["vulkan-headers"])
        c["vulkan_headers"] = "auto" if v.lower() == "auto" else str(base / Path(v).expanduser())
    cfg = ClientConfig(**c)
    _check_client(cfg)
    return cfg


def _check_client(c: ClientConfig) -> None:
    where = "[client]"
    if c.sd_cpp and c.sd_ref:
        raise _fail(where, "give 'sd-cpp' or 'sd-ref', not both")
    if not (c.sd_cpp or c.sd_ref or c.llama_commit):
        raise _fail(
            where,
            "no pins: give 'sd-cpp', 'sd-ref', or 'llama-commit' with 'max-name'",
            hint='e.g. sd-cpp = "~/src/stable-diffusion.cpp"',
        )
    if c.llama_commit and not (c.sd_cpp or c.sd_ref) and c.max_name is None:
        raise _fail(
            where,
            "'llama-commit' without an sd.cpp tree needs 'max-name'",
            hint="give the client's GGML_MAX_NAME: 160 for sd.cpp since 2026-07 (128 before)",
        )
    if c.exact and not c.sd_cpp:
        raise _fail(where, "'exact = true' needs a local tree: 'sd-cpp'")
    if c.llama_src and c.llama_sdist:
        raise _fail(where, "'llama-src' and 'llama-sdist' are exclusive", hint="pick one source")
    if c.build_on == "host" and c.exact:
        raise _fail(
            where,
            "'exact = true' builds on the client (against its sd.cpp tree's ggml)",
            hint='use build-on = "client" with exact = true',
        )


def _server(t: Any, where: str, index: int, base: Path) -> FleetServer:
    if not isinstance(t, dict):
        raise _fail(where, "must be a table")
    for key, why in _FLEET_DECIDES.items():
        if key in t:
            raise _fail(where, f"{key!r} is not a fleet.toml key: {why}", hint=f"remove {key!r}")
    _unknown(where, t, FLEET_SERVER_KEYS)
    if isinstance(t.get("cache"), str):
        raise _fail(
            where,
            "'cache' must be true or false in a fleet (the unit's CacheDirectory holds it)",
            hint="cache = true",
        )
    try:
        opts = parse_server(t, where, base)
    except LaunchConfigError as exc:
        raise FleetConfigError(exc.message, hint=exc.hint) from None
    backend = opts.backend or "cpu"
    port = opts.port if "port" in t else DEFAULT_PORT + index
    if port == 0:
        raise _fail(where, "'port' 0 (a free port) cannot be used in a fleet", hint="give a port")
    name = opts.name or f"{backend}-{port}"
    if opts.visible_devices is not None:
        try:
            visible_devices_env(backend, opts.visible_devices)
        except SdrpcError as exc:
            raise _fail(
                where, exc.message.replace("--visible-devices", "'visible-devices'")
            ) from None
    return FleetServer(name=name, backend=backend, port=port, options=opts)


def _ipv4(where: str, text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise _fail(where, f"'address' {text!r} is not an IPv4 address") from None


def _host(t: Any, where: str, client: ClientConfig, base: Path) -> Host:
    if not isinstance(t, dict):
        raise _fail(where, "must be a table")
    _unknown(where, t, HOST_KEYS)
    if "name" not in t:
        raise _fail(where, "'name' is missing", hint='e.g. name = "gpu1"')
    name = _str(where, "name", t["name"])
    if not valid_name(name):
        raise _fail(where, f"name {name!r} must be letters, digits, '.', '_' or '-'")
    where = f"[[host]] {name!r}"
    if "ssh" not in t:
        raise _fail(where, "'ssh' is missing", hint='give user@host, an alias, or "local"')
    ssh = parse_ssh(where, t["ssh"])
    address = _ipv4(where, _str(where, "address", t["address"])) if "address" in t else None
    # this machine under lan: 127.0.0.1 unless an address is given (the client is here)
    if address is None and client.transport == "lan" and not ssh.local:
        try:
            address = str(ipaddress.IPv4Address(ssh.host or ""))
        except ValueError:
            raise _fail(
                where,
                'transport = "lan" needs the host\'s address',
                hint='add address = "192.168.1.10" (the address servers bind and the '
                "client connects to)",
            ) from None
    raw = t.get("server", [])
    if not isinstance(raw, list) or not raw:
        raise _fail(where, "has no [[host.server]]", hint='add [[host.server]] backend = "cpu"')
    servers = tuple(_server(s, f"{where} server {i + 1}", i, base) for i, s in enumerate(raw))
    seen_names: set[str] = set()
    seen_ports: set[int] = set()
    for s in servers:
        if s.name in seen_names:
            raise _fail(where, f"two servers are named {s.name!r}", hint="give each a 'name'")
        if s.port in seen_ports:
            raise _fail(where, f"two servers use port {s.port}", hint="give each a 'port'")
        seen_names.add(s.name)
        seen_ports.add(s.port)
    return Host(name=name, ssh=ssh, servers=servers, address=address)


def parse_fleet(data: Mapping[str, Any], path: Path) -> Fleet:
    """A parsed TOML document -> a validated :class:`Fleet` (relative paths: to ``path``)."""
    base = path.parent
    _unknown(path.name, data, _TOP_KEYS)
    if "client" not in data:
        raise _fail(path.name, "no [client] table", hint='add [client] sd-cpp = "PATH"')
    client = _client(data["client"], base)
    raw = data.get("host", [])
    if not isinstance(raw, list) or not raw:
        raise _fail(path.name, "no [[host]]", hint='add [[host]] name = "gpu1" ssh = "me@gpu1"')
    hosts = tuple(_host(h, f"[[host]] {i + 1}", client, base) for i, h in enumerate(raw))
    names = [h.name for h in hosts]
    for n in names:
        if names.count(n) > 1:
            raise _fail(path.name, f"two hosts are named {n!r}", hint="host names are unique")
    locals_ = [h.name for h in hosts if h.ssh.local]
    if len(locals_) > 1:
        raise _fail(path.name, f'more than one host is ssh = "local": {", ".join(locals_)}')
    return Fleet(client=client, hosts=hosts, path=path)


def load_fleet(path: Path) -> Fleet:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FleetConfigError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="give the path of a fleet.toml (default: ./fleet.toml)",
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FleetConfigError(
            f"{path.name}: not valid TOML: {exc}", hint="fleet.toml must be UTF-8 TOML"
        ) from None
    return parse_fleet(data, path.resolve())
