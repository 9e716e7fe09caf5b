"""Artifact store: ``<cache>/artifacts/<key>/{bin/<server>, manifest.json, build.log}``.

Entries are assembled in a temporary directory next to their final place and
renamed into it in one step, so a crash or Ctrl-C never leaves a half-written
entry; leftovers of killed runs (:mod:`sdrpc_build.build.scratch` paths whose owner is
gone) are removed by the next write. A cache that cannot be read or written (a
file, read-only, a path too long) is a :class:`StoreError` (exit 9).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, TypeVar

from sdrpc_build.build.scratch import clean_stale, scratch_path
from sdrpc_build.errors import StoreError
from sdrpc_build.paths import shown_path

__all__ = [
    "MANIFEST",
    "UNKNOWN",
    "ExactRef",
    "Manifest",
    "RecipeRef",
    "SourceRef",
    "ToolVersions",
    "WheelRef",
    "cache_error",
    "find_manifest",
    "install_entry",
    "list_manifests",
    "lookup",
    "prepare_cache",
    "sha256_file",
]

MANIFEST = "manifest.json"
UNKNOWN = "unknown"  # a protocol version the tree did not say
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
class RecipeRef:
    """The recipe a server was built with: its name, file and the hash of its bytes."""

    name: str
    source: str
    sha256: str


@dataclass(frozen=True)
class SourceRef:
    """Where the llama.cpp tree came from: ``git``, ``cache``, ``local`` or ``sdist``."""

    method: str
    origin: str  # URL (credentials masked), path or sdist spec
    state: str = "clean"  # or "dirty:<hash>"


@dataclass(frozen=True)
class ExactRef:
    """``--exact``: the sd.cpp tree's ggml the server was built against."""

    ggml_dir: str
    ggml_digest: str


@dataclass(frozen=True)
class ToolVersions:
    cmake: str
    ninja: Optional[str]
    compiler: str
    ccache: bool


@dataclass(frozen=True)
class WheelRef:
    """Set in the copy of the manifest a server wheel carries."""

    name: str
    version: str


@dataclass(frozen=True)
class Manifest:
    """One store entry's ``manifest.json``: the pipeline writes it (:meth:`to_json`), the
    store, the wheel builder and sdrpc-launch read it (:meth:`from_json`, :meth:`load`).

    ``path`` (the entry directory) is where it was read from, not part of the JSON;
    ``binary_path`` is the server relative to it (``bin/<name>``); keys this version
    does not know are kept in ``extra`` and written back unchanged.
    """

    backend: str
    commit: str
    max_name: int
    target: str
    created: str
    protocol: str = UNKNOWN  # "X.Y.Z"; null in the JSON when unknown
    platform: str = ""  # "linux-x86_64"
    key: str = ""
    binary_path: str = ""
    binary_sha256: str = ""
    sdrpc_version: str = ""
    recipe: Optional[RecipeRef] = None
    server_dir: str = ""
    pins: Mapping[str, Any] = field(default_factory=dict)  # SdPins.as_dict()
    pins_origin: str = ""
    source: Optional[SourceRef] = None
    exact: Optional[ExactRef] = None
    defines: tuple[tuple[str, str], ...] = ()
    portable: bool = False
    notes: tuple[str, ...] = ()
    tools: Optional[ToolVersions] = None
    build_seconds: float = 0.0
    verify: Mapping[str, Any] = field(default_factory=dict)  # VerifyResult.as_dict()
    wheel: Optional[WheelRef] = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    path: Path = Path()

    @property
    def binary(self) -> Path:
        """The server binary (absolute when ``path`` is)."""
        return self.path / self.binary_path

    @property
    def verified(self) -> bool:
        return bool(self.verify.get("ok", False))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name not in ("path", "extra", "binary_path"):
                doc[f.name] = _plain(getattr(self, f.name))
        doc["binary"] = self.binary_path
        doc["defines"] = dict(self.defines)
        doc["protocol"] = None if self.protocol == UNKNOWN else self.protocol
        return doc

    def to_json(self) -> str:
        """The text of ``manifest.json``."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path = Path()) -> Manifest:
        """Raises KeyError, TypeError or ValueError for a document that is no manifest."""
        if not isinstance(data, Mapping):
            raise TypeError("not a JSON object")
        known = {f.name for f in fields(cls)} | {"binary"}
        return cls(
            key=str(data["key"]),
            binary_path=str(data["binary"]),
            backend=str(data["backend"]),
            commit=str(data["commit"]),
            max_name=int(data["max_name"]),
            target=str(data["target"]),
            created=str(data["created"]),
            protocol=str(data.get("protocol") or UNKNOWN),
            platform=str(data.get("platform") or ""),
            binary_sha256=str(data.get("binary_sha256") or ""),
            sdrpc_version=str(data.get("sdrpc_version") or ""),
            recipe=_record(RecipeRef, data.get("recipe")),
            server_dir=str(data.get("server_dir") or ""),
            pins=_table(data.get("pins")),
            pins_origin=str(data.get("pins_origin") or ""),
            source=_record(SourceRef, data.get("source")),
            exact=_record(ExactRef, data.get("exact")),
            defines=tuple((str(k), str(v)) for k, v in _table(data.get("defines")).items()),
            portable=bool(data.get("portable", False)),
            notes=tuple(str(n) for n in data.get("notes") or ()),
            tools=_record(ToolVersions, data.get("tools")),
            build_seconds=float(data.get("build_seconds") or 0.0),
            verify=_table(data.get("verify")),
            wheel=_record(WheelRef, data.get("wheel")),
            extra={k: v for k, v in data.items() if k not in known},
            path=path,
        )

    @classmethod
    def from_json(cls, text: str, path: Path = Path()) -> Manifest:
        return cls.from_dict(json.loads(text), path)

    @classmethod
    def load(cls, entry: Path) -> Manifest:
        """The manifest of the entry (or installed wheel package) ``entry``, or StoreError."""
        try:
            return cls.from_json((entry / MANIFEST).read_text(), entry)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"corrupt store entry {entry}: {exc}", hint=f"delete {entry} and build again"
            ) from None


_Record = TypeVar("_Record", RecipeRef, SourceRef, ExactRef, ToolVersions, WheelRef)


def _table(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{type(value).__name__} where an object belongs")
    return dict(value)


def _record(cls: type[_Record], value: object) -> Optional[_Record]:
    """A nested record from its JSON object (missing fields take their defaults)."""
    if value is None:
        return None
    table = _table(value)
    return cls(**{f.name: table[f.name] for f in fields(cls) if f.name in table})


def _plain(value: object) -> Any:
    """A field's JSON value: records become objects, tuples lists."""
    if isinstance(value, (RecipeRef, SourceRef, ExactRef, ToolVersions, WheelRef)):
        return asdict(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


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
    manifest: Manifest,
    log_file: Optional[Path] = None,
) -> Manifest:
    """Copy ``binary`` (and the log) into a new entry and write its manifest, atomically.

    The manifest is written with ``key``, the binary's place and its SHA-256 filled in.
    """
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
        final = replace(
            manifest,
            key=key,
            binary_path=f"bin/{binary.name}",
            binary_sha256=sha256_file(dest_bin),
        )
        (tmp / MANIFEST).write_text(final.to_json())
        dest = artifacts_root / key
        if dest.exists():
            shutil.rmtree(dest)  # --force rebuild replaces the old entry
        os.replace(tmp, dest)
    except OSError as exc:
        raise cache_error(exc, f"write store entry {key}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Manifest.load(artifacts_root / key)
