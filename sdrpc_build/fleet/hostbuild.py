"""The client's side of a build on a host (``build-on = "host"``, or a group of another
platform than this machine's): what it ships, what the host runs, what comes back.

* The host is offline: the llama.cpp sources come from the client, as a tar of the tree
  sdrpc-build would use (the cache's tree for the commit, with its marker, so the host's
  sdrpc-build finds it cached and fetches nothing). Never ``.git`` (an sdist's config may hold
  a credential), never what a server build does not read (models, docs, media).
* The host runs its own ``sdrpc-build`` (from the venv sdrpc installed) with the client's pins
  given explicitly (a host never decides its own), ``--portable`` (the binary goes to other
  machines) and ``--wheel``: the verified server comes back as its server wheel.
* The wheel is unpacked on the client under ``<cache>/fleet/servers/KEY/`` (a store entry's
  layout), checked against the pins, and shipped to every host of the group like a server
  built here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Optional

from sdrpc_build.build.pins import SdPins
from sdrpc_build.build.recipes import load_recipe
from sdrpc_build.build.source import MARKER, Source
from sdrpc_build.build.store import MANIFEST, Manifest, lookup
from sdrpc_build.fleet.errors import FleetHostsError

__all__ = [
    "BUILD_ROOT",
    "SHIP_EXCLUDE",
    "build_argv",
    "cached_server",
    "install_wheel",
    "server_key",
    "source_tar",
]

BUILD_ROOT = PurePosixPath("build")  # under the host's install root: cache/, out/, src.tar.gz
SHIP_EXCLUDE = frozenset({".git", ".github", "models", "docs", "media"})  # top-level entries


def server_key(pins: SdPins, backend: str, platform: str) -> str:
    """The name of a host-built server on the client: the pins, the backend (and its recipe's
    digest: a changed recipe builds again) and the platform it runs on."""
    recipe = load_recipe(backend)
    commit = str(pins.llama_commit.value)
    digest = hashlib.sha256(
        json.dumps([commit, pins.max_name.value, backend, recipe.sha256, platform]).encode()
    ).hexdigest()[:12]
    return f"{backend}-{commit[:10]}-n{pins.max_name.value}-{platform}-{digest}"


def _servers_dir(cache_root: Path) -> Path:
    return cache_root / "fleet" / "servers"


def cached_server(cache_root: Path, key: str) -> Optional[Manifest]:
    """A server a host built at an earlier up (a store entry's layout), or None."""
    return lookup(_servers_dir(cache_root), key)


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def source_tar(source: Source, cache_root: Path) -> Path:
    """A deterministic ``.tar.gz`` of ``source``'s tree as ``sources/COMMIT/`` (made once per
    commit, under ``<cache>/fleet/sources/``)."""
    out_dir = cache_root / "fleet" / "sources"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.commit}.tar.gz"
    if target.is_file():
        return target
    marker = json.dumps({"commit": source.commit, "method": "sdrpc-up", "origin": "the client"})
    root = f"sources/{source.commit}"
    fd, tmp_name = tempfile.mkstemp(prefix=".src-", suffix=".tmp", dir=out_dir)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for dirpath, dirnames, filenames in os.walk(source.tree):
                rel = Path(dirpath).relative_to(source.tree)
                skip = SHIP_EXCLUDE | {MARKER} if rel == Path(".") else frozenset()
                dirnames[:] = sorted(d for d in dirnames if d not in skip)
                for name in [*sorted(f for f in filenames if f not in skip), *dirnames]:
                    path = Path(dirpath) / name
                    tar.add(path, f"{root}/{(rel / name).as_posix()}", False, filter=_reset)
            data = marker.encode()
            info = _reset(tarfile.TarInfo(f"{root}/{MARKER}"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def build_argv(
    sdrpc_build: str, pins: SdPins, backend: str, cache_dir: str, out_dir: str, sdist: Optional[str]
) -> list[str]:
    """The host's sdrpc-build command line: the client's pins, given explicitly."""
    argv = [
        sdrpc_build,
        "--llama-commit",
        str(pins.llama_commit.value),
        "--max-name",
        str(pins.max_name.value),
        "--backend",
        backend,
        "--portable",
        "--cache-dir",
        cache_dir,
        "--wheel",
        "--out",
        out_dir,
        "--json",
    ]
    if sdist:  # the tree is in the host's cache: named so the preflight needs no git
        argv += ["--llama-sdist", sdist]
    return argv


def install_wheel(
    wheel: Path, cache_root: Path, key: str, pins: SdPins, backend: str, host: str
) -> Manifest:
    """Unpack a server wheel a host built into ``<cache>/fleet/servers/KEY/``, after checking
    it is what was asked for (the pins, the backend, a verified server)."""
    dest = _servers_dir(cache_root) / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            man = [n for n in names if n.count("/") == 1 and n.endswith("/" + MANIFEST)]
            if len(man) != 1:
                raise FleetHostsError(
                    f"{host}: the server wheel {wheel.name} holds no manifest",
                    hint="run sdrpc up again; if it persists, build on the client",
                )
            pkg = man[0].split("/")[0] + "/"
            for n in names:
                if not n.startswith(pkg) or n.endswith("/"):
                    continue
                rel = PurePosixPath(n[len(pkg) :])
                if rel.is_absolute() or ".." in rel.parts:
                    raise FleetHostsError(
                        f"{host}: bad member {n!r} in {wheel.name}",
                        hint="run sdrpc up again",
                    )
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(n))
        m = Manifest.load(tmp)
        (m.binary).chmod(0o755)
        got = (m.commit, m.max_name, m.backend, bool(m.verify.get("ok")))
        want = (str(pins.llama_commit.value), pins.max_name.value, backend, True)
        if got != want:
            raise FleetHostsError(
                f"{host} built a server for {got[:3]} (verified: {got[3]}), not {want[:3]}",
                hint="the host's sdrpc differs from this one: run sdrpc up again",
            )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Manifest.load(dest)
