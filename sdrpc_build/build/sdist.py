"""llama.cpp from a PyPI sdist (llama-cpp-python vendors it, with its git data).

pip downloads the sdist into ``<cache>/downloads`` (at most :data:`PIP_TIMEOUT`
seconds); a damaged archive (truncated download, bad gzip CRC) is deleted and
downloaded once more. The vendored tree is extracted (never ``.git/config``, which
may carry a CI token; never links, devices or paths outside it), its commit read
from the git data and checked against the pin, and installed in the shared
source cache like a fetched tree. pip's messages are scrubbed of the index URLs
in its ``PIP_*`` environment variables.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Optional

from sdrpc_build.build.scratch import scratch_path
from sdrpc_build.build.source import Source, cached_source, install_tree, source_lock
from sdrpc_build.build.url import SecretUrl, redact_text
from sdrpc_build.errors import SourceError, UsageError
from sdrpc_build.run import run

__all__ = ["PIP_TIMEOUT", "from_sdist", "safe_members"]

#: pip's settings that may hold an index URL with credentials
_PIP_URL_VARS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS")
_SDIST_RE = re.compile(r"^([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)$")
#: seconds one ``pip download`` (both tries) may take
PIP_TIMEOUT = 1800.0


def safe_members(tf: tarfile.TarFile, prefix: str) -> list[tarfile.TarInfo]:
    out = []
    for m in tf.getmembers():
        parts = PurePosixPath(m.name).parts
        if ".." in parts or m.name.startswith("/"):
            continue
        if ".git" in parts and parts[-1] in ("config", "config.worktree"):
            continue  # never copy credentials
        if m.issym() or m.islnk() or m.isdev():
            continue
        if not m.name.startswith(prefix):
            continue
        out.append(m)
    return out


def _sdist_commit(gitdir: Path) -> Optional[str]:
    try:
        head = (gitdir / "HEAD").read_text().strip()
    except OSError:
        return None
    if head.startswith("ref:"):
        ref = head.split(None, 1)[1]
        loose = gitdir / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = gitdir / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
        return None
    return head


def _archive_problem(archive: Path) -> Optional[str]:
    """Why a downloaded ``.tar.gz`` cannot be used (truncated, bad CRC, not a tar), or None.

    Reads the whole file: gzip checks its CRC and length at the end of the stream.
    """
    try:
        with gzip.open(archive, "rb") as f:
            while f.read(1 << 20):
                pass
        with tarfile.open(archive) as tf:
            if not tf.getmembers():
                return "an empty archive"
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _pip_download(
    spec: str, downloads: Path, archive: Path, python: str, env: Mapping[str, str]
) -> None:
    base = [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        spec,
        "-d",
        str(downloads),
    ]
    # without build isolation pip reuses the installed scikit-build-core (fast,
    # offline-friendly); fall back to an isolated metadata build if that fails
    deadline = time.monotonic() + PIP_TIMEOUT
    done = run([*base, "--no-build-isolation"], timeout=PIP_TIMEOUT, env=env)
    if not done.ok and not archive.is_file():
        done = run(base, timeout=max(deadline - time.monotonic(), 0.1), env=env)
    if not done.ok or not archive.is_file():
        secrets = [SecretUrl.parse(v) for k in _PIP_URL_VARS for v in env.get(k, "").split()]
        raise done.error(
            SourceError,
            f"pip could not download {spec}",
            hint="check that the version exists on your package index and that it is "
            "reachable (PIP_INDEX_URL); or use --llama-repo / --llama-src",
            scrub=lambda text: redact_text(text, *secrets),
        )


def _usable_archive(
    spec: str,
    downloads: Path,
    archive: Path,
    python: str,
    env: Mapping[str, str],
    log: Callable[[str], None],
) -> None:
    """Make ``archive`` a complete sdist: download it, and once more if it is damaged."""
    problem: Optional[str] = None
    for attempt in (1, 2):
        if not archive.is_file():
            log(f"downloading {spec} with pip")
            _pip_download(spec, downloads, archive, python, env)
        problem = _archive_problem(archive)
        if problem is None:
            return
        try:
            archive.unlink()
        except OSError as exc:
            raise SourceError(
                f"{archive} is damaged ({problem}) and cannot be deleted: {exc.strerror}",
                hint=f"delete {archive} by hand and run the same command again",
            ) from None
        if attempt == 1:
            log(f"{archive.name} is damaged ({problem}); deleted it, downloading it again")
    raise SourceError(
        f"{spec} is damaged even after a fresh download ({problem})",
        hint="check free disk space and your package index (PIP_INDEX_URL); the damaged "
        "file was deleted, so the next run downloads it again",
    )


def from_sdist(
    sources_root: Path,
    downloads: Path,
    spec: str,
    commit: Optional[str],
    *,
    python: str = sys.executable,
    env: Optional[Mapping[str, str]] = None,
    log: Callable[[str], None] = lambda _m: None,
) -> Source:
    """Download a llama-cpp-python sdist with pip and use its vendored llama.cpp tree."""
    m = _SDIST_RE.match(spec)
    if not m:
        raise UsageError(
            f"--llama-sdist {redact_text(spec)[:200]!r} is not NAME==VERSION",
            hint="e.g. --llama-sdist llama-cpp-python==0.3.35",
        )
    if commit is not None:
        hit = cached_source(sources_root, commit)
        if hit is not None:
            return hit
    project, version = m.group(1), m.group(2)
    stem = f"{project.replace('-', '_')}-{version}"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / f"{stem}.tar.gz"
    with source_lock(downloads, stem):
        _usable_archive(spec, downloads, archive, python, os.environ if env is None else env, log)
    gm = f"{stem}/.git/modules/vendor/llama.cpp/"
    vendor = f"{stem}/vendor/llama.cpp/"
    sources_root.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(sources_root, f"sdist-{stem}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive) as tf:
            heads = safe_members(tf, gm + "HEAD") + safe_members(tf, gm + "packed-refs")
            tf.extractall(tmp, members=heads)
            found = _sdist_commit(tmp / gm)
            if found is None:
                raise SourceError(
                    f"{spec} carries no git data for its vendored llama.cpp",
                    hint="use a llama-cpp-python sdist (0.3.x) or --llama-src",
                )
            if commit is not None and found != commit:
                raise SourceError(
                    f"{spec} vendors llama.cpp {found}, not the pinned {commit}",
                    hint=f"pass --llama-commit {found} to build that commit, or pick the sdist "
                    "whose vendored commit matches",
                )
            with source_lock(sources_root, found):
                hit = cached_source(sources_root, found)
                if hit is not None:
                    return hit
                members = [
                    mm
                    for mm in safe_members(tf, vendor)
                    if PurePosixPath(mm.name).name != ".git" or mm.isdir()
                ]
                tf.extractall(tmp, members=members)
                tree_tmp = tmp / vendor
                git_file = tree_tmp / ".git"
                if git_file.is_file():
                    git_file.unlink()
                install_tree(tree_tmp, sources_root / found, found, "sdist", spec)
        log(f"extracted llama.cpp {found[:12]} from {spec}")
        return Source(sources_root / found, found, "sdist", spec, fetched=True)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SourceError(
            f"cannot extract {archive.name}: {exc}",
            hint=f"delete {archive} and run the same command again",
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
