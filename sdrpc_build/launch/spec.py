"""What one supervised server is, and the pure functions that turn it into argv/env."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdrpc_build.errors import HostError, UsageError
from sdrpc_build.launch.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_RESTART,
    RESTART_POLICIES,
    RestartPolicy,
)

__all__ = [
    "RESTART_POLICIES",
    "VISIBLE_DEVICES_VARS",
    "Resolver",
    "RestartPolicy",
    "ServerSpec",
    "backend_from_devices",
    "build_argv",
    "build_env",
    "check_host",
    "client_host",
    "is_loopback",
    "valid_name",
    "visible_devices_env",
]

Resolver = Callable[[str], Optional[str]]

# backend -> the variable that hides devices from it
VISIBLE_DEVICES_VARS: dict[str, str] = {
    "cuda": "CUDA_VISIBLE_DEVICES",
    "hip": "HIP_VISIBLE_DEVICES",
    "rocm": "HIP_VISIBLE_DEVICES",
    "musa": "MUSA_VISIBLE_DEVICES",
    "sycl": "ONEAPI_DEVICE_SELECTOR",
    "vulkan": "GGML_VK_VISIBLE_DEVICES",
    "cann": "ASCEND_RT_VISIBLE_DEVICES",
}

# ggml device name prefix -> backend
_DEVICE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("CUDA", "cuda"),
    ("ROCm", "hip"),
    ("HIP", "hip"),
    ("Vulkan", "vulkan"),
    ("SYCL", "sycl"),
    ("MUSA", "musa"),
    ("CANN", "cann"),
    ("MTL", "metal"),
    ("Metal", "metal"),
    ("GPUOpenCL", "opencl"),
    ("OpenCL", "opencl"),
    ("BLAS", "blas"),
    ("CPU", "cpu"),
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ServerSpec:
    """One rpc-server instance, fully resolved (binary found, host checked, port fixed)."""

    name: str
    binary: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    devices: tuple[str, ...] = ()
    threads: int | None = None
    cache_dir: Path | None = None  # set = ``-c`` with LLAMA_CACHE=cache_dir
    cache_max_size: int | None = None  # bytes; pruned by sdrpc (LRU)
    visible_devices: str | None = None
    backend: str | None = None  # from the manifest or --backend; maps visible-devices
    env: tuple[tuple[str, str], ...] = ()
    restart: RestartPolicy = DEFAULT_RESTART
    max_name: int | None = None  # known GGML_MAX_NAME (from the manifest) -> probed
    protocol: str | None = None  # expected protocol from the manifest, "X.Y.Z"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def cache_files_dir(self) -> Path | None:
        """Where rpc-server writes its cache files (``$LLAMA_CACHE/rpc``)."""
        return self.cache_dir / "rpc" if self.cache_dir is not None else None


def valid_name(name: str) -> bool:
    """Server names become file names (logs, cache dirs): keep them plain."""
    return bool(_NAME_RE.match(name))


def build_argv(spec: ServerSpec, line_buffer: Sequence[str] = ()) -> list[str]:
    """The server's command line; ``line_buffer`` is a prefix such as ``["stdbuf", "-oL"]``."""
    argv = [*line_buffer, str(spec.binary), "-H", spec.host, "-p", str(spec.port)]
    if spec.devices:
        argv += ["-d", ",".join(spec.devices)]
    if spec.threads is not None:
        argv += ["-t", str(spec.threads)]
    if spec.cache_dir is not None:
        argv.append("-c")
    return argv


def visible_devices_env(backend: str | None, value: str) -> tuple[str, str]:
    """``--visible-devices 0,1`` -> the backend's own variable (CUDA_VISIBLE_DEVICES=0,1, ...)."""
    key = (backend or "").lower()
    var = VISIBLE_DEVICES_VARS.get(key)
    if var is None:
        known = ", ".join(sorted(VISIBLE_DEVICES_VARS))
        what = f"the {backend} backend" if backend else "an unknown backend"
        raise UsageError(
            f"--visible-devices has no meaning for {what}",
            hint=f"give --backend (one of: {known}), or use -d/--device to pick devices",
        )
    if var == "ONEAPI_DEVICE_SELECTOR" and ":" not in value:
        value = f"level_zero:{value}"
    return var, value


def build_env(spec: ServerSpec, base: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: base + cache dir + visible devices + ``--env`` (last wins)."""
    env = dict(base)
    if spec.cache_dir is not None:
        env["LLAMA_CACHE"] = str(spec.cache_dir)
    if spec.visible_devices is not None:
        var, value = visible_devices_env(spec.backend, spec.visible_devices)
        env[var] = value
    env.update(dict(spec.env))
    return env


def backend_from_devices(names: Sequence[str]) -> str | None:
    """Guess the backend from ggml device names (first non-CPU device wins)."""
    found: list[str] = []
    for name in names:
        for prefix, backend in _DEVICE_PREFIXES:
            if name.startswith(prefix):
                found.append(backend)
                break
    gpu = [b for b in found if b not in ("cpu", "blas")]
    if gpu:
        return gpu[0]
    return found[0] if found else None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, resolve: Resolver | None = None) -> tuple[str, str | None]:
    """Return ``(ipv4, note)``: a literal IPv4 as is, a name resolved (note says so).

    rpc-server passes the host to ``inet_addr``: names (even ``localhost``) and IPv6 fail there.
    """
    try:
        ipaddress.IPv4Address(host)
        return host, None
    except ValueError:
        pass
    try:
        ipaddress.IPv6Address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise HostError(
            f"rpc-server cannot bind IPv6 address {host!r}",
            hint="use an IPv4 address such as 127.0.0.1 or 0.0.0.0",
        )
    if resolve is None:
        raise HostError(f"{host!r} is not an IPv4 address", hint="use e.g. 127.0.0.1")
    addr = resolve(host)
    if addr is None:
        raise HostError(
            f"host {host!r} does not resolve to an IPv4 address",
            hint="rpc-server binds literal IPv4 addresses only; give one (e.g. 127.0.0.1)",
        )
    return addr, f"host {host!r} resolved to {addr} (rpc-server needs a literal IPv4 address)"


def client_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    return "127.0.0.1" if host == "0.0.0.0" else host
