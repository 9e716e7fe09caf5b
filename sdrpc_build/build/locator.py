"""sdrpc's builds as launch/ sees them: the :class:`BuildLocator` made from the store, the
installed server wheels and this machine's platform. sdrpc-launch (cli/launch_wiring.py) and the
fleet's local host (fleet/local.py) give it to launch/, which imports no build code itself."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

from sdrpc_build.build import store
from sdrpc_build.build.toolchain import current_platform
from sdrpc_build.build.wheel import installed_servers
from sdrpc_build.errors import SdrpcError
from sdrpc_build.launch.resolve import Build, BuildLocator

__all__ = ["BUILDS", "server_build"]


def server_build(m: store.Manifest) -> Build:
    """A store manifest as launch sees it (a protocol written "unknown" is not known)."""
    protocol = m.protocol if m.protocol and m.protocol != "unknown" else None
    return Build(
        m.binary,
        m.backend,
        m.max_name,
        protocol,
        m.key,
        m.created,
        m.platform,
        commit=m.commit or None,
        exact=m.exact.ggml_digest if m.exact else None,
    )


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
