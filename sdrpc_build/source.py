"""llama.cpp sources at a pinned commit: git shallow fetch, a local checkout, or a PyPI sdist.

Every path ends with a verified tree (``HEAD == commit`` or, for an sdist, the
commit recorded in its git data). Fetched sources live in a shared cache, one
directory per commit, installed atomically under a file lock; a source already
there is reused without any network traffic. An sdist's ``.git/config`` is
never copied (one of them carries a CI token).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from filelock import FileLock

from sdrpc_build.errors import SourceError, UsageError

__all__ = [
    "DEFAULT_LLAMA_REPO",
    "Source",
    "cached_source",
    "fetch_git",
    "from_local_checkout",
    "from_sdist",
]

DEFAULT_LLAMA_REPO = "https://github.com/ggml-org/llama.cpp.git"
MARKER = ".sdrpc-source.json"
_SDIST_RE = re.compile(r"^([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)$")
_NOT_THERE = (
    "not our ref",
    "couldn't find remote ref",
    "no such remote ref",
    "unadvertised object",
    "remote error: upload-pack",
)
_NOT_A_REPO = (
    "does not appear to be a git repository",
    "repository not found",
    "not found",
    "could not read from remote",
)


@dataclass(frozen=True)
class Source:
    tree: Path
    commit: str
    method: str  # "git", "cache", "local", "sdist"
    origin: str  # URL, path or sdist spec (never credentials)
    state: str = "clean"  # "clean" or "dirty:<hash>"
    fetched: bool = False  # False when reused from the cache


def _redact(url: str) -> str:
    """Drop user:password@ from a URL before it is printed or stored."""
    return re.sub(r"(://)[^/@]+@", r"\1", url)


def _read_marker(tree: Path) -> Optional[dict[str, str]]:
    try:
        data = json.loads((tree / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_source(sources_root: Path, commit: str) -> Optional[Source]:
    """A complete source already in the cache for ``commit`` (no network)."""
    tree = sources_root / commit
    marker = _read_marker(tree)
    if marker is None or marker.get("commit") != commit:
        return None
    return Source(tree, commit, "cache", marker.get("origin", "?"), fetched=False)


def _install(tmp: Path, dest: Path, commit: str, method: str, origin: str) -> None:
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "commit": commit,
                "method": method,
                "origin": origin,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )
    if dest.exists():  # a stale, incomplete directory from an interrupted run
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _lock(root: Path, name: str) -> FileLock:
    d = root / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    return FileLock(str(d / f"{name}.lock"))


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"  # never hang on a password prompt
    return env


def fetch_git(
    sources_root: Path,
    commit: str,
    url: str = DEFAULT_LLAMA_REPO,
    *,
    retries: int = 3,
    retry_delay: float = 1.0,
    log: Callable[[str], None] = lambda _m: None,
) -> Source:
    """Shallow-fetch ``commit`` from ``url`` (reusing the cache) and verify HEAD."""
    import git  # GitPython

    sources_root.mkdir(parents=True, exist_ok=True)
    with _lock(sources_root, commit):
        hit = cached_source(sources_root, commit)
        if hit is not None:
            return hit
        shown = _redact(url)
        if "://" not in url and not url.startswith("git@") and Path(url).expanduser().exists():
            url = Path(url).expanduser().resolve().as_uri()
        tmp = sources_root / f"{commit}.tmp-{os.getpid()}"
        last = ""
        for attempt in range(1, retries + 1):
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                repo = git.Repo.init(tmp)
                with repo.git.custom_environment(**_git_env()):
                    repo.git.fetch("--depth", "1", "--no-tags", url, commit)
                    repo.git.checkout("--detach", "-q", "FETCH_HEAD")
                head = repo.head.commit.hexsha
                repo.close()
                if head != commit:
                    raise SourceError(
                        f"{shown} gave commit {head}, not {commit}",
                        hint="the remote rewrote history; check --llama-repo",
                    )
                _install(tmp, sources_root / commit, commit, "git", shown)
                log(f"fetched {commit[:12]} from {shown}")
                return Source(sources_root / commit, commit, "git", shown, fetched=True)
            except git.GitCommandError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                text = str(exc.stderr or exc).strip()
                last = _redact(text.splitlines()[-1]) if text else "git failed"
                low = text.lower()
                if any(s in low for s in _NOT_THERE):
                    raise SourceError(
                        f"commit {commit} is not available at {shown}",
                        hint="check the commit (sync-llama.last) and --llama-repo; "
                        "a fork may not have it",
                    ) from None
                if attempt < retries:
                    log(f"fetch failed ({last.strip()}); retrying in {retry_delay:.0f}s")
                    time.sleep(retry_delay * attempt)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        raise SourceError(
            f"cannot fetch {commit} from {shown} after {retries} attempts: {str(last).strip()}",
            hint="check the network or pass --llama-repo PATH/URL, --llama-src or --llama-sdist",
        )


def _dirty_state(tree: Path) -> tuple[bool, str]:
    out = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    diff = subprocess.run(
        ["git", "-C", str(tree), "diff", "HEAD"], capture_output=True, check=False
    ).stdout
    dirty = bool(out.strip())
    digest = hashlib.sha256(out.encode() + diff).hexdigest()[:12]
    return dirty, digest


def from_local_checkout(tree: Path, commit: Optional[str], allow_dirty: bool) -> Source:
    """Use an existing llama.cpp checkout; refuse a dirty tree unless allowed."""
    import git

    tree = tree.expanduser().resolve()
    try:
        repo = git.Repo(tree)
        head = repo.head.commit.hexsha
        repo.close()
    except Exception:
        raise SourceError(
            f"{tree} is not a git checkout", hint="--llama-src needs a llama.cpp git checkout"
        ) from None
    if commit is not None and head != commit:
        raise SourceError(
            f"{tree} is at {head[:12]}, not the pinned {commit[:12]}",
            hint=f"run: git -C {tree} fetch --depth 1 origin {commit} && "
            f"git -C {tree} checkout {commit}",
        )
    dirty, digest = _dirty_state(tree)
    if dirty and not allow_dirty:
        raise SourceError(
            f"{tree} has uncommitted changes", hint="commit or stash them, or pass --allow-dirty"
        )
    return Source(tree, head, "local", str(tree), state=f"dirty:{digest}" if dirty else "clean")


def _safe_members(tf: tarfile.TarFile, prefix: str) -> list[tarfile.TarInfo]:
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


def from_sdist(
    sources_root: Path,
    downloads: Path,
    spec: str,
    commit: Optional[str],
    *,
    python: str = sys.executable,
    log: Callable[[str], None] = lambda _m: None,
) -> Source:
    """Download a llama-cpp-python sdist with pip and use its vendored llama.cpp tree."""
    m = _SDIST_RE.match(spec)
    if not m:
        raise UsageError(
            f"--llama-sdist {spec!r} is not NAME==VERSION",
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
    with _lock(downloads, stem):
        if not archive.is_file():
            log(f"downloading {spec} with pip")
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
            proc = subprocess.run(
                [*base, "--no-build-isolation"], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0 and not archive.is_file():
                proc = subprocess.run(base, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not archive.is_file():
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
                raise SourceError(
                    f"pip could not download {spec}",
                    details=tail,
                    hint="check the version exists on your package index",
                )
    gm = f"{stem}/.git/modules/vendor/llama.cpp/"
    vendor = f"{stem}/vendor/llama.cpp/"
    sources_root.mkdir(parents=True, exist_ok=True)
    tmp = sources_root / f"sdist-{stem}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive) as tf:
            heads = _safe_members(tf, gm + "HEAD") + _safe_members(tf, gm + "packed-refs")
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
            with _lock(sources_root, found):
                hit = cached_source(sources_root, found)
                if hit is not None:
                    return hit
                members = [
                    mm
                    for mm in _safe_members(tf, vendor)
                    if PurePosixPath(mm.name).name != ".git" or mm.isdir()
                ]
                tf.extractall(tmp, members=members)
                tree_tmp = tmp / vendor
                git_file = tree_tmp / ".git"
                if git_file.is_file():
                    git_file.unlink()
                _install(tree_tmp, sources_root / found, found, "sdist", spec)
        log(f"extracted llama.cpp {found[:12]} from {spec}")
        return Source(sources_root / found, found, "sdist", spec, fetched=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
