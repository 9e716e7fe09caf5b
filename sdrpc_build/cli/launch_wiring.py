"""What ``sdrpc-launch`` injects into launch/: sdrpc's builds and the readiness check.

launch/ imports neither the build wing nor the protocol. Here the build locator is made from
build/'s store, installed server wheels and toolchain, and the readiness check from protocol's
probe, judged by protocol.compat's name-length rule.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

from sdrpc_build.build import store
from sdrpc_build.build.toolchain import current_platform
from sdrpc_build.build.wheel import installed_servers
from sdrpc_build.errors import SdrpcError
from sdrpc_build.launch.readiness import Readiness, RemoteDevice
from sdrpc_build.launch.resolve import Build, BuildLocator
from sdrpc_build.launch.spec import ServerSpec, client_host
from sdrpc_build.protocol.compat import name_length_problem
from sdrpc_build.protocol.layouts import format_version
from sdrpc_build.protocol.probe import probe

__all__ = ["BUILDS", "PROBE_TIMEOUT", "readiness_check", "server_build"]

PROBE_TIMEOUT = 3.0  # seconds per exchange of one readiness probe


def server_build(m: store.Manifest) -> Build:
    """A store manifest as launch sees it (a protocol written "unknown" is not known)."""
    protocol = m.protocol if m.protocol and m.protocol != "unknown" else None
    return Build(m.binary, m.backend, m.max_name, protocol, m.key, m.created, m.platform)


def _platform() -> str:
    return f"{current_platform()}-{platform.machine().lower()}"


def _entry_of(binary: Path) -> Optional[Build]:
    entry = binary.parent.parent  # <entry>/bin/<binary>
    if not (entry / store.MANIFEST).is_file():
        return None
    try:
        return server_build(store.Manifest.load(entry))
    except SdrpcError:
        return None


def _find(artifacts_root: Path, selector: str) -> Build:
    return server_build(store.find_manifest(artifacts_root, selector))


def _available(artifacts_root: Path) -> list[Build]:
    stored = store.list_manifests(artifacts_root)  # OSError first: installed wheels need none
    return [server_build(m) for m in (*stored, *installed_servers())]


#: the build locator sdrpc-launch gives launch/
BUILDS = BuildLocator(platform=_platform, entry_of=_entry_of, find=_find, available=_available)


def readiness_check(spec: ServerSpec, timeout: float = PROBE_TIMEOUT) -> Readiness:
    """Probe a starting server: ready when it answers HELLO (and, when the build says which
    GGML_MAX_NAME it has, that one: protocol.compat's name-length rule)."""
    result = probe(
        client_host(spec.host),
        spec.port,
        timeout=timeout,
        expect_max_name=spec.max_name,
        detect_max_name=spec.max_name is not None,
    )
    protocol = format_version(result.protocol) if result.protocol else None
    devices = tuple(RemoteDevice(d.index, d.free, d.total) for d in result.devices)
    problems = tuple(result.problems)
    if result.status == "ok":
        if spec.max_name is not None:
            # only the name-length rule: the device values are sdrpc-check's business here
            why = name_length_problem(result.max_name, spec.max_name)
            if why is not None and result.max_name is not None:
                return Readiness("fail", why, protocol, result.max_name, devices, problems)
        return Readiness("ready", None, protocol, result.max_name, devices, problems)
    if result.status in ("unreachable", "busy", "slow", "error"):
        return Readiness("retry", "; ".join(problems) or result.status)
    return Readiness("fail", "; ".join(problems) or f"probe: {result.status}", protocol)
