"""Artifact store: ``<cache>/artifacts/<key>/{bin/<server>, manifest.json, build.log}``.

Entries are assembled in a temporary directory next to their final place and
renamed into it in one step, so a crash or Ctrl-C never leaves a half-written
entry; leftovers of killed runs (:mod:`sdrpc_build.build.scratch` paths whose owner is
gone) are removed by the next write. A cache that cannot be read or written (a
file, read-only, a path too long) is a :class:`StoreError` (exit 9).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sdrpc_build.build.scratch import clean_stale, scratch_path
from sdrpc_build.errors import StoreError
from sdrpc_build.paths import shown_path

__all__ = [
    "MANIFEST",
    "Manifest",
    "cache_error",
    "find_manifest",
    "install_entry",
    "list_manifests",
    "lookup",
    "prepare_cache",
    "sha256_file",
]

MANIFEST = "manifest.json"
_CACHE_HINT = (
    "pass --cache-dir DIR (or set SDRPC_CACHE_DIR) to a writable directory with free space"
)


def cache_error(exc: OSError, what: str) -> StoreError:
    """A file-system error in the cache as a StoreError naming the path (exit 9)."""
    where = f" {shown_path(exc.filename)}" if exc.filename else ""
    return StoreError(f"cannot {what}{where}: {exc.strerror or exc}", hint=_CACHE_HINT)


def prepare_cache(root: Path, subdirs: tuple[str, ...] = ()) -> None:
    """Create the cache root (and ``subdirs``) and prove it is writable, or raise StoreError."""
    try:
        for d in (root, *(root / s for s in subdirs)):
            d.mkdir(parents=True, exist_ok=True)
        probe = scratch_path(root, ".write-probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise cache_error(exc, "use the cache directory") from None


@dataclass(frozen=True)
class Manifest:
    key: str
    path: Path  # the entry directory
    binary: Path  # absolute path of the server binary
    backend: str
    commit: str
    max_name: int
    protocol: str
    target: str
    created: str
    platform: str
    verified: bool
    data: Mapping[str, Any]  # the whole manifest.json

    @classmethod
    def load(cls, entry: Path) -> Manifest:
        try:
            data = json.loads((entry / MANIFEST).read_text())
            return cls(
                key=str(data["key"]),
                path=entry,
                binary=entry / str(data["binary"]),
                backend=str(data["backend"]),
                commit=str(data["commit"]),
                max_name=int(data["max_name"]),
                protocol=str(data.get("protocol") or "unknown"),
                target=str(data["target"]),
                created=str(data["created"]),
                platform=str(data.get("platform", "")),
                verified=bool((data.get("verify") or {}).get("ok", False)),
                data=data,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"corrupt store entry {entry}: {exc}", hint=f"delete {entry} and build again"
            ) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lookup(artifacts_root: Path, key: str) -> Optional[Manifest]:
    """The complete entry for ``key``, or None. A damaged entry counts as absent."""
    entry = artifacts_root / key
    if not (entry / MANIFEST).is_file():
        return None
    try:
        m = Manifest.load(entry)
    except StoreError:
        return None
    return m if m.binary.is_file() else None


def list_manifests(artifacts_root: Path) -> list[Manifest]:
    """Every complete entry, newest first."""
    try:
        if not artifacts_root.is_dir():
            # absent is an empty store; a file where a folder should be is not
            existing = next(p for p in (artifacts_root, *artifacts_root.parents) if p.exists())
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(existing))
            return []
        out = []
        for entry in artifacts_root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            m = lookup(artifacts_root, entry.name)
            if m is not None:
                out.append(m)
    except OSError as exc:
        raise cache_error(exc, "read the store") from None
    return sorted(out, key=lambda m: m.created, reverse=True)


def find_manifest(artifacts_root: Path, selector: str) -> Manifest:
    """An entry by key (or unique key prefix), or by a manifest.json / entry path."""
    p = Path(selector).expanduser()
    if p.name == MANIFEST and p.is_file():
        return Manifest.load(p.parent)
    if (p / MANIFEST).is_file():
        return Manifest.load(p)
    matches = [m for m in list_manifests(artifacts_root) if m.key.startswith(selector)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(
            f"no build {selector!r} in {artifacts_root}",
            hint="list builds with: sdrpc-build --list",
        )
    raise StoreError(
        f"{selector!r} matches {len(matches)} builds",
        hint="give more of the key (sdrpc-build --list)",
    )


def install_entry(
    artifacts_root: Path,
    key: str,
    binary: Path,
    manifest: Mapping[str, Any],
    log_file: Optional[Path] = None,
) -> Manifest:
    """Copy ``binary`` (and the log) into a new entry and write its manifest, atomically."""
    tmp = scratch_path(artifacts_root, f".{key}")
    try:
        artifacts_root.mkdir(parents=True, exist_ok=True)
        clean_stale([artifacts_root])
        (tmp / "bin").mkdir(parents=True)
        dest_bin = tmp / "bin" / binary.name
        shutil.copy2(binary, dest_bin)
        dest_bin.chmod(dest_bin.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        if log_file is not None and log_file.is_file():
            shutil.copy2(log_file, tmp / "build.log")
        doc = dict(manifest)
        doc["key"] = key
        doc["binary"] = f"bin/{binary.name}"
        doc["binary_sha256"] = sha256_file(dest_bin)
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        final = artifacts_root / key
        if final.exists():
            shutil.rmtree(final)  # --force rebuild replaces the old entry
        os.replace(tmp, final)
    except OSError as exc:
        raise cache_error(exc, f"write store entry {key}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Manifest.load(artifacts_root / key)


def update_manifest(entry: Manifest, changes: Mapping[str, Any]) -> Manifest:
    """Rewrite an entry's manifest atomically (write temp file, rename)."""
    doc = dict(entry.data)
    doc.update(changes)
    tmp = scratch_path(entry.path, f".{MANIFEST}")
    try:
        clean_stale([entry.path])
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, entry.path / MANIFEST)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise cache_error(exc, f"update {entry.path / MANIFEST}") from None
    return Manifest.load(entry.path)


__all__ += ["update_manifest"]
