"""llama.cpp sources at a pinned commit: git shallow fetch, a local checkout, or a PyPI sdist.

Every path ends with a verified tree (``HEAD == commit`` or, for an sdist, the
commit recorded in its git data). Fetched sources live in a shared cache, one
directory per commit, installed atomically under a file lock; a source already
there is reused without any network traffic. An sdist's ``.git/config`` is
never copied (one of them carries a CI token).

Credentials: the repository URL is a :class:`~sdrpc_build.build.url.SecretUrl`; only
git sees the real one. git's messages are scrubbed, and ``.git/FETCH_HEAD``
(which records the URL) is deleted after the checkout. pip's messages are
scrubbed of the index URLs in its ``PIP_*`` environment variables.

Temporary trees are :mod:`sdrpc_build.build.scratch` paths (owner PID + start time), so
a build killed mid-fetch leaves nothing that the next build does not remove. A
cached sdist that is damaged (truncated download, bad gzip CRC) is deleted and
downloaded once more.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from filelock import FileLock

from sdrpc_build.build.scratch import scratch_path
from sdrpc_build.build.url import SecretUrl, redact_text
from sdrpc_build.errors import SourceError, UsageError
from sdrpc_build.run import Completed, run

__all__ = [
    "DEFAULT_LLAMA_REPO",
    "Source",
    "cached_source",
    "fetch_git",
    "from_local_checkout",
    "from_sdist",
]

DEFAULT_LLAMA_REPO = SecretUrl("https://github.com/ggml-org/llama.cpp.git")
#: pip's settings that may hold an index URL with credentials
_PIP_URL_VARS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS")
MARKER = ".sdrpc-source.json"
_SDIST_RE = re.compile(r"^([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)$")
#: seconds all attempts of one ``git fetch`` may take together
FETCH_TIMEOUT = 1800.0
#: seconds one ``pip download`` (both tries) may take
PIP_TIMEOUT = 1800.0
#: seconds a local git command (init, checkout, rev-parse, status, diff) may take
GIT_TIMEOUT = 120.0
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


def _git_env(url_has_credentials: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"  # never hang on a password prompt
    env["LC_ALL"] = env["LANGUAGE"] = "C"  # English messages: _NOT_THERE is matched
    if url_has_credentials:
        # the URL brings its own credentials: no credential helper may store them
        # (an empty credential.helper clears the configured list)
        raw = env.get("GIT_CONFIG_COUNT", "")
        n = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else 0
        env[f"GIT_CONFIG_KEY_{n}"] = "credential.helper"
        env[f"GIT_CONFIG_VALUE_{n}"] = ""
        env["GIT_CONFIG_COUNT"] = str(n + 1)
    return env


def _local_path(raw: str) -> Optional[Path]:
    """``raw`` as an existing local path (not a URL), else None."""
    if "://" in raw or raw.startswith("git@"):
        return None
    try:
        p = Path(raw).expanduser()
        return p.resolve() if p.exists() else None
    except (OSError, RuntimeError):
        return None


def _git(tree: Path, *args: str) -> list[str]:
    return ["git", "-C", str(tree), *args]


def _fetch_into(
    tmp: Path, target: str, shown: str, commit: str, env: Mapping[str, str], deadline: float
) -> Completed:
    """``git init``, a shallow fetch of ``commit`` and a detached checkout in ``tmp``:
    the first step that failed, else the checkout."""
    fetch = ("fetch", "--depth", "1", "--no-tags")
    steps = (("init", "-q"), (*fetch, target, commit), ("checkout", "--detach", "-q", "FETCH_HEAD"))
    done = Completed((), 0)
    for args in steps:
        left = max(deadline - time.monotonic(), 0.1)
        show = _git(tmp, *fetch, shown, commit) if target in args else None
        done = run(_git(tmp, *args), timeout=left, env=env, shown=show)
        if not done.ok:
            break
    return done


def fetch_git(
    sources_root: Path,
    commit: str,
    url: Union[SecretUrl, str] = DEFAULT_LLAMA_REPO,
    *,
    retries: int = 3,
    retry_delay: float = 1.0,
    log: Callable[[str], None] = lambda _m: None,
) -> Source:
    """Shallow-fetch ``commit`` from ``url`` (reusing the cache) and verify HEAD.

    All attempts together take at most :data:`FETCH_TIMEOUT` seconds.
    """
    repo_url = url if isinstance(url, SecretUrl) else SecretUrl.parse(url)
    shown = str(repo_url)
    sources_root.mkdir(parents=True, exist_ok=True)
    with _lock(sources_root, commit):
        hit = cached_source(sources_root, commit)
        if hit is not None:
            return hit
        local = _local_path(repo_url.reveal())
        target = local.as_uri() if local is not None else repo_url.reveal()
        env = _git_env(repo_url.has_credentials)
        tmp = scratch_path(sources_root, commit)
        deadline = time.monotonic() + FETCH_TIMEOUT
        last = ""
        for attempt in range(1, retries + 1):
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir(parents=True)
                done = _fetch_into(tmp, target, shown, commit, env, deadline)
                if done.ok:
                    head = run(_git(tmp, "rev-parse", "HEAD"), timeout=GIT_TIMEOUT, env=env)
                    # FETCH_HEAD names the URL the commit came from, credentials included
                    (tmp / ".git" / "FETCH_HEAD").unlink(missing_ok=True)
                    if head.stdout.strip() != commit:
                        raise SourceError(
                            f"{shown} gave commit {head.stdout.strip() or '?'}, not {commit}",
                            hint="the remote rewrote history; check --llama-repo",
                        )
                    _install(tmp, sources_root / commit, commit, "git", shown)
                    log(f"fetched {commit[:12]} from {shown}")
                    return Source(sources_root / commit, commit, "git", shown, fetched=True)
                shutil.rmtree(tmp, ignore_errors=True)
                text = repo_url.scrub((done.stderr or done.problem).strip())
                last = text.splitlines()[-1] if text else f"git {done.why}"
                low = text.lower()
                if any(s in low for s in _NOT_THERE):
                    raise SourceError(
                        f"commit {commit} is not available at {shown}",
                        hint="check the commit (sync-llama.last) and --llama-repo; "
                        "a fork may not have it",
                    ) from None
                if attempt < retries and time.monotonic() + retry_delay * attempt < deadline:
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
    status = run(_git(tree, "status", "--porcelain"), timeout=GIT_TIMEOUT)
    diff = run(_git(tree, "diff", "HEAD"), timeout=GIT_TIMEOUT)
    for done in (status, diff):
        if not done.ok:
            raise done.error(
                SourceError,
                f"cannot read the state of {tree} ({' '.join(done.argv[3:])}: {done.why})",
                hint="check the checkout with git status",
            )
    dirty = bool(status.stdout.strip())
    digest = hashlib.sha256(status.stdout_bytes + diff.stdout_bytes).hexdigest()[:12]
    return dirty, digest


def _head(tree: Path) -> Optional[str]:
    """The commit checked out in the work tree ``tree`` (its root), or None."""
    try:
        if not (tree / ".git").exists():
            return None
    except OSError:
        return None
    done = run(_git(tree, "rev-parse", "--verify", "HEAD"), timeout=GIT_TIMEOUT)
    head = done.stdout.strip()
    return head if done.ok and head else None


def from_local_checkout(tree: Path, commit: Optional[str], allow_dirty: bool) -> Source:
    """Use an existing llama.cpp checkout; refuse a dirty tree unless allowed."""
    tree = tree.expanduser().resolve()
    head = _head(tree)
    if head is None:
        raise SourceError(
            f"{tree} is not a git checkout", hint="--llama-src needs a llama.cpp git checkout"
        )
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
    with _lock(downloads, stem):
        _usable_archive(spec, downloads, archive, python, os.environ if env is None else env, log)
    gm = f"{stem}/.git/modules/vendor/llama.cpp/"
    vendor = f"{stem}/vendor/llama.cpp/"
    sources_root.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(sources_root, f"sdist-{stem}")
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
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SourceError(
            f"cannot extract {archive.name}: {exc}",
            hint=f"delete {archive} and run the same command again",
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
