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
import subprocess
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

__all__ = [
    "DEFAULT_LLAMA_REPO",
    "Source",
    "cached_source",
    "fetch_git",
    "from_local_checkout",
    "from_sdist",
    "shallow_checkout",
]

DEFAULT_LLAMA_REPO = SecretUrl("https://github.com/ggml-org/llama.cpp.git")
#: pip's settings that may hold an index URL with credentials
_PIP_URL_VARS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS")
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
    other failures are retried ``retries`` times. ``tmp`` is removed on any failure.
    """
    import git  # GitPython

    shown = str(url)
    local = _local_path(url.reveal())
    target = local.as_uri() if local is not None else url.reveal()
    label = what or ref
    last = ""
    for attempt in range(1, retries + 1):
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            repo = git.Repo.init(tmp)
            with repo.git.custom_environment(**_git_env(url.has_credentials)):
                repo.git.fetch("--depth", "1", "--no-tags", target, ref)
                repo.git.checkout("--detach", "-q", "FETCH_HEAD")
            head = str(repo.head.commit.hexsha)
            repo.close()
            # FETCH_HEAD names the URL the commit came from, credentials included
            (tmp / ".git" / "FETCH_HEAD").unlink(missing_ok=True)
            return head
        except git.GitCommandError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            text = url.scrub(str(exc.stderr or "").strip())
            last = text.splitlines()[-1] if text else f"git exited {exc.status}"
            low = text.lower()
            if any(s in low for s in _NOT_THERE):
                raise SourceError(
                    f"{label} is not available at {shown}", hint=not_there_hint
                ) from None
            if attempt < retries:
                log(f"fetch failed ({last.strip()}); retrying in {retry_delay:.0f}s")
                time.sleep(retry_delay * attempt)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    raise SourceError(
        f"cannot fetch {label} from {shown} after {retries} attempts: {str(last).strip()}",
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
    """Shallow-fetch ``commit`` from ``url`` (reusing the cache) and verify HEAD."""
    repo_url = url if isinstance(url, SecretUrl) else SecretUrl.parse(url)
    shown = str(repo_url)
    sources_root.mkdir(parents=True, exist_ok=True)
    with _lock(sources_root, commit):
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
                    f"{shown} gave commit {head}, not {commit}",
                    hint="the remote rewrote history; check --llama-repo",
                )
            _install(tmp, sources_root / commit, commit, "git", shown)
            log(f"fetched {commit[:12]} from {shown}")
            return Source(sources_root / commit, commit, "git", shown, fetched=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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
    run_env = dict(env)
    proc = subprocess.run(
        [*base, "--no-build-isolation"], capture_output=True, text=True, env=run_env, check=False
    )
    if proc.returncode != 0 and not archive.is_file():
        proc = subprocess.run(base, capture_output=True, text=True, env=run_env, check=False)
    if proc.returncode != 0 or not archive.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        secrets = [SecretUrl.parse(v) for k in _PIP_URL_VARS for v in env.get(k, "").split()]
        raise SourceError(
            f"pip could not download {spec}",
            details=redact_text(tail, *secrets),
            hint="check that the version exists on your package index and that it is "
            "reachable (PIP_INDEX_URL); or use --llama-repo / --llama-src",
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
