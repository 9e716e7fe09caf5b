"""Vulkan headers for a Vulkan build: ``sdrpc-build --vulkan-headers auto|PATH``.

Debian 12 (1.3.239) and Ubuntu 22.04 (1.3.204) ship Vulkan headers older than what 2026
llama.cpp trees need (the recipe's ``min_version``); the loader, glslc and SPIR-V headers
they ship are fine. So newer headers alone are enough, without touching the system:

- ``PATH``: an include directory (holding ``vulkan/vulkan_core.h``), a Vulkan-Headers
  checkout or an SDK (``$VULKAN_SDK``, as the LunarG SDK sets it: its ``include``);
- ``auto``: KhronosGroup/Vulkan-Headers at :data:`PINNED_TAG`, shallow-fetched with
  :func:`sdrpc_build.build.source.shallow_checkout` (URL from ``--vulkan-headers-repo``,
  credentials never shown), header-only (``include/`` is kept), cached per tag and
  repository, installed atomically under a file lock, and verified: the header's
  ``VK_HEADER_VERSION`` must be :data:`PINNED_VERSION` and, on reuse, the content digest
  the one recorded at install.

The chosen include dir becomes ``-D Vulkan_INCLUDE_DIR`` (a resolved define); the cache
key holds the headers' version and content digest (:meth:`Headers.key_input`), and the
manifest records which headers were used (:func:`headers_record`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from filelock import FileLock

from sdrpc_build.build.doctor.probes import system_probes
from sdrpc_build.build.doctor.requires import check_requirement
from sdrpc_build.build.doctor.versions import parse_vulkan_header_version, vstr
from sdrpc_build.build.recipes import Recipe, Requirement
from sdrpc_build.build.scratch import scratch_path
from sdrpc_build.build.source import shallow_checkout
from sdrpc_build.build.toolchain import current_platform
from sdrpc_build.build.url import SecretUrl
from sdrpc_build.errors import SourceError, UsageError

__all__ = [
    "AUTO",
    "DEFAULT_HEADERS_REPO",
    "INCLUDE_DEFINE",
    "PINNED_TAG",
    "PINNED_VERSION",
    "REQUIREMENT",
    "Headers",
    "HeadersChoice",
    "auto_dir",
    "cached_auto",
    "content_digest",
    "fetch_auto",
    "from_path",
    "headers_record",
    "include_dir_of",
    "prepare",
]

AUTO = "auto"
DEFAULT_HEADERS_REPO = SecretUrl("https://github.com/KhronosGroup/Vulkan-Headers.git")
#: the Vulkan-Headers release ``auto`` fetches (Debian trixie ships the same headers);
#: pinned by tag, verified by the VK_HEADER_VERSION of the fetched vulkan_core.h
PINNED_TAG = "v1.4.309"
PINNED_VERSION = (1, 4, 309)
#: the recipe requirement these headers satisfy, and the CMake variable that points at them
REQUIREMENT = "vulkan-headers"
INCLUDE_DEFINE = "Vulkan_INCLUDE_DIR"
CORE_HEADER = Path("vulkan") / "vulkan_core.h"
#: the include dir's subtrees a Vulkan build reads: their content is the headers' identity
_SUBTREES = ("vulkan", "vk_video")
_MARKER = ".sdrpc-headers.json"
_KEEP = ("include", "LICENSE.md", "LICENSE.txt", "LICENSE")


@dataclass(frozen=True)
class HeadersChoice:
    """What the user asked for: ``--vulkan-headers auto|PATH`` and ``--vulkan-headers-repo``."""

    value: str  # "auto" or a path
    repo: SecretUrl = DEFAULT_HEADERS_REPO

    @property
    def auto(self) -> bool:
        return self.value == AUTO


@dataclass(frozen=True)
class Headers:
    """Vulkan headers a build uses."""

    include_dir: Path
    version: tuple[int, ...]
    source: str  # "auto", "path", "VULKAN_SDK" (or, recorded only: "system", "-D ...")
    origin: str  # the URL (without credentials) or the path given
    digest: str = ""  # "sha256:..." of vulkan/ and vk_video/
    tag: str = ""
    commit: str = ""

    def defines(self) -> tuple[tuple[str, str], ...]:
        return ((INCLUDE_DEFINE, str(self.include_dir)),)

    def key_input(self) -> tuple[str, str]:
        return ("vulkan_headers", f"{vstr(self.version)} {self.digest}")

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "version": vstr(self.version),
            "source": self.source,
            "origin": self.origin,
            "include_dir": str(self.include_dir),
        }
        if self.digest:
            d["digest"] = self.digest
        if self.tag:
            d["tag"] = self.tag
        if self.commit:
            d["commit"] = self.commit
        return d


def content_digest(include_dir: Path) -> str:
    """A hash of the Vulkan headers under ``include_dir`` (``vulkan/``, ``vk_video/``)."""
    h = hashlib.sha256()
    for sub in _SUBTREES:
        root = include_dir / sub
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(include_dir).as_posix().encode() + b"\0")
                h.update(p.read_bytes())
                h.update(b"\0")
    return "sha256:" + h.hexdigest()[:32]


def include_dir_of(path: Path) -> Optional[Path]:
    """The include dir of an include dir, a Vulkan-Headers checkout or an SDK; else None."""
    for cand in (path, path / "include", path / "Include"):
        if (cand / CORE_HEADER).is_file():
            return cand
    return None


def _version_of(include_dir: Path) -> Optional[tuple[int, int, int]]:
    try:
        return parse_vulkan_header_version((include_dir / CORE_HEADER).read_text(errors="replace"))
    except OSError:
        return None


def from_path(raw: str, env: Mapping[str, str]) -> Headers:
    """``--vulkan-headers PATH``: the include dir found there, its version and digest."""
    path = Path(raw).expanduser()
    try:
        inc = include_dir_of(path)
    except OSError:
        inc = None
    if inc is None:
        raise UsageError(
            f"--vulkan-headers {raw}: no {CORE_HEADER.as_posix()} in it or in its include/",
            hint="give an include dir, a Vulkan-Headers checkout or a Vulkan SDK ($VULKAN_SDK); "
            "or --vulkan-headers auto to fetch them",
        )
    inc = inc.resolve()
    version = _version_of(inc)
    if version is None:
        raise UsageError(
            f"--vulkan-headers {raw}: no VK_HEADER_VERSION in {inc / CORE_HEADER}",
            hint="point it at real Vulkan headers, or use --vulkan-headers auto",
        )
    sdk = env.get("VULKAN_SDK")
    sdk_inc = include_dir_of(Path(sdk).expanduser()) if sdk else None
    source = "VULKAN_SDK" if sdk_inc is not None and sdk_inc.resolve() == inc else "path"
    return Headers(inc, version, source, str(path), content_digest(inc))


def auto_dir(cache_root: Path, repo: SecretUrl, tag: str = PINNED_TAG) -> Path:
    """Where ``auto`` keeps the headers of ``tag`` from ``repo`` (one per tag and repository)."""
    origin = hashlib.sha256(repo.shown.encode()).hexdigest()[:10]
    return cache_root / "vulkan-headers" / f"{tag}-{origin}"


def _read_marker(root: Path) -> Optional[dict[str, str]]:
    try:
        data = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_auto(
    cache_root: Path,
    repo: SecretUrl,
    tag: str = PINNED_TAG,
    version: tuple[int, ...] = PINNED_VERSION,
) -> Optional[Headers]:
    """Headers ``auto`` fetched before, verified again (tag, version, digest); no network."""
    root = auto_dir(cache_root, repo, tag)
    marker = _read_marker(root)
    inc = root / "include"
    if marker is None or marker.get("tag") != tag or _version_of(inc) != version:
        return None
    digest = content_digest(inc)
    if marker.get("digest") != digest:
        return None
    return Headers(inc, version, AUTO, str(repo), digest, tag, str(marker.get("commit", "")))


def fetch_auto(
    cache_root: Path,
    repo: SecretUrl,
    *,
    tag: str = PINNED_TAG,
    version: tuple[int, ...] = PINNED_VERSION,
    retries: int = 3,
    log: Callable[[str], None] = lambda _m: None,
) -> Headers:
    """``--vulkan-headers auto``: the cached headers, else a shallow fetch of ``tag``."""
    dest = auto_dir(cache_root, repo, tag)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f"{dest.name}.lock")):
        hit = cached_auto(cache_root, repo, tag, version)
        if hit is not None:
            return hit
        tmp = scratch_path(dest.parent, dest.name)
        try:
            commit = shallow_checkout(
                tmp,
                repo,
                f"refs/tags/{tag}",
                retries=retries,
                log=log,
                what=f"Vulkan-Headers tag {tag}",
                not_there_hint="check --vulkan-headers-repo: it must have the tag "
                f"{tag} (KhronosGroup/Vulkan-Headers or a mirror of it)",
                fallback_hint="check the network, pass --vulkan-headers-repo PATH/URL (a "
                "mirror), or --vulkan-headers PATH with headers you have",
            )
            got = _version_of(tmp / "include")
            if got != version:
                raise SourceError(
                    f"{repo} tag {tag} has Vulkan headers "
                    f"{vstr(got) if got else '(no vulkan/vulkan_core.h)'}, not {vstr(version)}",
                    hint="--vulkan-headers-repo must be KhronosGroup/Vulkan-Headers or a "
                    "faithful mirror",
                )
            for entry in tmp.iterdir():  # header-only: the include dir (and the license)
                if entry.name not in _KEEP:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            digest = content_digest(tmp / "include")
            (tmp / _MARKER).write_text(
                json.dumps(
                    {
                        "tag": tag,
                        "commit": commit,
                        "origin": repo.shown,
                        "version": vstr(version),
                        "digest": digest,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                )
            )
            if dest.exists():  # a damaged entry (its digest or version no longer matches)
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"fetched Vulkan headers {tag} ({commit[:12]}) from {repo}")
    return Headers(dest / "include", version, AUTO, str(repo), digest, tag, commit)


def _requirement(recipe: Recipe) -> Optional[Requirement]:
    return next(
        (r for r in recipe.requires if r.name == REQUIREMENT and r.define == INCLUDE_DEFINE), None
    )


def prepare(
    choice: Optional[HeadersChoice],
    recipe: Recipe,
    user_defines: Sequence[tuple[str, str]],
    env: Mapping[str, str],
    cache_root: Path,
) -> Optional[Headers]:
    """Before the preflight (no network): check the choice and resolve a PATH, or ``auto``
    headers already cached. None when none was asked for, or ``auto`` must fetch them."""
    if choice is None:
        return None
    if _requirement(recipe) is None:
        raise UsageError(
            f"--vulkan-headers is for Vulkan builds, not --backend {recipe.name}",
            hint="add --backend vulkan, or drop --vulkan-headers",
        )
    if any(k == INCLUDE_DEFINE for k, _ in user_defines):
        raise UsageError(
            f"--vulkan-headers and -D {INCLUDE_DEFINE} both say where the headers are",
            hint="give one of them",
        )
    if choice.auto:
        return cached_auto(cache_root, choice.repo)
    return from_path(choice.value, env)


def headers_record(
    recipe: Recipe,
    headers: Optional[Headers],
    user_defines: Sequence[tuple[str, str]],
    env: Mapping[str, str],
) -> Optional[dict[str, object]]:
    """For the manifest: which Vulkan headers the build used (None for other backends)."""
    if headers is not None:
        return headers.as_dict()
    req = _requirement(recipe)
    if req is None:
        return None
    defines = dict(user_defines)
    probes = system_probes(env, current_platform())
    found = check_requirement(req, probes, defines)
    path = Path(found.path) if found is not None and found.path else None
    inc = path.parent.parent if path is not None else None
    version = _version_of(inc) if inc is not None else None
    source = f"-D {INCLUDE_DEFINE}" if INCLUDE_DEFINE in defines else "system"
    return {
        "version": vstr(version) if version else None,
        "source": source,
        "origin": str(inc) if inc is not None else None,
        "include_dir": str(inc) if inc is not None else None,
    }
