"""llama.cpp sources at a pinned commit: git shallow fetch, a local checkout (or a PyPI sdist,
:mod:`sdrpc_build.build.sdist`).

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

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from filelock import FileLock

from sdrpc_build.build.scratch import scratch_path
from sdrpc_build.build.url import SecretUrl
from sdrpc_build.errors import SourceError
from sdrpc_build.run import Completed, run

__all__ = [
    "DEFAULT_LLAMA_REPO",
    "MARKER",
    "Source",
    "cached_source",
    "fetch_git",
    "from_local_checkout",
    "install_tree",
    "shallow_checkout",
    "source_lock",
]

DEFAULT_LLAMA_REPO = SecretUrl("https://github.com/ggml-org/llama.cpp.git")
MARKER = ".sdrpc-source.json"
#: seconds all attempts of one ``git fetch`` may take together
FETCH_TIMEOUT = 1800.0
#: seconds a local git command (init, checkout, rev-parse, status, diff) may take
GIT_TIMEOUT = 120.0
_NOT_THERE = (
    "not our ref",
    "couldn't find remote ref",
    "no such remote ref",
    "unadvertised object",
    "remote error: upload-pack",
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


def install_tree(tmp: Path, dest: Path, commit: str, method: str, origin: str) -> None:
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


def source_lock(root: Path, name: str) -> FileLock:
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


def shallow_checkout(
    tmp: Path,
    url: SecretUrl,
    ref: str,
    *,
    retries: int = 3,
    retry_delay: float = 1.0,
    log: Callable[[str], None] = lambda _m: None,
    what: str = "",
    not_there_hint: str = "check --llama-repo; a fork or mirror may not have it",
    fallback_hint: str = "check the network or pass --llama-repo PATH/URL, --llama-src or "
    "--llama-sdist",
) -> str:
    """Shallow-fetch ``ref`` (a commit, or ``refs/tags/NAME``) from ``url`` into a new
    repository at ``tmp`` (replaced), check it out detached and return HEAD's commit.

    Only git sees the real URL; its messages are scrubbed and ``.git/FETCH_HEAD`` (which
    names the URL) is deleted. A ref the remote lacks is a :class:`SourceError` at once;
    other failures are retried ``retries`` times, all attempts together within
    :data:`FETCH_TIMEOUT` seconds. ``tmp`` is removed on any failure.
    """
    shown = str(url)
    local = _local_path(url.reveal())
    target = local.as_uri() if local is not None else url.reveal()
    env = _git_env(url.has_credentials)
    label = what or ref
    deadline = time.monotonic() + FETCH_TIMEOUT
    last = ""
    for attempt in range(1, retries + 1):
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            done = _fetch_into(tmp, target, shown, ref, env, deadline)
            if done.ok:
                head = run(_git(tmp, "rev-parse", "HEAD"), timeout=GIT_TIMEOUT, env=env)
                # FETCH_HEAD names the URL the commit came from, credentials included
                (tmp / ".git" / "FETCH_HEAD").unlink(missing_ok=True)
                return head.stdout.strip()
            shutil.rmtree(tmp, ignore_errors=True)
            text = url.scrub((done.stderr or done.problem).strip())
            last = text.splitlines()[-1] if text else f"git {done.why}"
            if any(s in text.lower() for s in _NOT_THERE):
                raise SourceError(f"{label} is not available at {shown}", hint=not_there_hint)
            if attempt < retries and time.monotonic() + retry_delay * attempt < deadline:
                log(f"fetch failed ({last.strip()}); retrying in {retry_delay:.0f}s")
                time.sleep(retry_delay * attempt)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    raise SourceError(
        f"cannot fetch {label} from {shown} after {retries} attempts: {last.strip()}",
        hint=fallback_hint,
    )


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
    with source_lock(sources_root, commit):
        hit = cached_source(sources_root, commit)
        if hit is not None:
            return hit
        tmp = scratch_path(sources_root, commit)
        try:
            head = shallow_checkout(
                tmp,
                repo_url,
                commit,
                retries=retries,
                retry_delay=retry_delay,
                log=log,
                what=f"commit {commit}",
                not_there_hint="check the commit (sync-llama.last) and --llama-repo; "
                "a fork may not have it",
            )
            if head != commit:
                raise SourceError(
                    f"{shown} gave commit {head or '?'}, not {commit}",
                    hint="the remote rewrote history; check --llama-repo",
                )
            install_tree(tmp, sources_root / commit, commit, "git", shown)
            log(f"fetched {commit[:12]} from {shown}")
            return Source(sources_root / commit, commit, "git", shown, fetched=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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
