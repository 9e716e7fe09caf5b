"""Resolve sd.cpp pins from a remote ref (``OWNER/REPO@REF``) over HTTPS.

Uses GitHub's REST API (ref -> commit, the ggml submodule's gitlink) and raw
file endpoints. Base URLs are configurable so tests point at a local server.
Requests have timeouts and retries; a token from ``GITHUB_TOKEN`` is sent but
never printed, and base URLs are :class:`~sdrpc_build.build.url.SecretUrl` values:
credentials in them reach the network call only, never a message or a pin.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sdrpc_build.build.pins import (
    Pin,
    SdPins,
    is_full_sha,
    parse_gitmodules,
    parse_max_name,
    parse_rpc_version,
    parse_sync_llama_last,
)
from sdrpc_build.build.url import SecretUrl, redact_text
from sdrpc_build.errors import PinsError, SourceError, UsageError

__all__ = ["RemoteConfig", "parse_ref", "read_remote_ref"]

_REF_RE = re.compile(r"^([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)@(\S+)$")
_GH_URL_RE = re.compile(r"github\.com[:/]([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$")


DEFAULT_API = SecretUrl("https://api.github.com")
DEFAULT_RAW = SecretUrl("https://raw.githubusercontent.com")


@dataclass(frozen=True)
class RemoteConfig:
    """Where and how to ask. ``api``/``raw`` may be given as text: they become SecretUrls."""

    api: SecretUrl = DEFAULT_API
    raw: SecretUrl = DEFAULT_RAW
    timeout: float = 15.0
    retries: int = 3
    token: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("api", "raw"):
            value: Union[str, SecretUrl] = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, SecretUrl.parse(value))

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        api: Optional[SecretUrl] = None,
        raw: Optional[SecretUrl] = None,
    ) -> RemoteConfig:
        env_api = env.get("SDRPC_GITHUB_API", "").strip()
        env_raw = env.get("SDRPC_GITHUB_RAW", "").strip()
        return cls(
            api=api or (SecretUrl.parse(env_api) if env_api else DEFAULT_API),
            raw=raw or (SecretUrl.parse(env_raw) if env_raw else DEFAULT_RAW),
            token=env.get("GITHUB_TOKEN") or None,
        )

    def scrub(self, text: str) -> str:
        """``text`` without any credential of this configuration."""
        return redact_text(text, self.api, self.raw, secrets=[self.token or ""])


def parse_ref(text: str) -> tuple[str, str, str]:
    m = _REF_RE.match(text)
    if not m:
        raise UsageError(
            f"--sd-ref {redact_text(text)[:200]!r} is not OWNER/REPO@REF",
            hint="e.g. --sd-ref leejet/stable-diffusion.cpp@master",
        )
    return m.group(1), m.group(2), m.group(3)


def _session(cfg: RemoteConfig) -> requests.Session:
    s = requests.Session()
    retry = Retry(
        total=cfg.retries,
        connect=cfg.retries,
        read=cfg.retries,
        backoff_factor=0.3,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=("GET",),
        raise_on_status=False,
    )
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    s.headers["User-Agent"] = "sdrpc"
    if cfg.token:
        s.headers["Authorization"] = f"Bearer {cfg.token}"
    return s


def _get(s: requests.Session, url: SecretUrl, cfg: RemoteConfig, what: str) -> requests.Response:
    try:
        r = s.get(url.reveal(), timeout=cfg.timeout)
    except (requests.RequestException, ValueError) as exc:
        raise SourceError(
            f"cannot reach {url} ({type(exc).__name__})",
            hint="check the network, or use a local checkout with --sd-cpp",
        ) from None
    if r.status_code == 404:
        raise PinsError(
            f"{what} not found at {url}",
            hint="check OWNER/REPO@REF; the ref may not exist or the repo is private",
        )
    if r.status_code != 200:
        raise SourceError(
            f"{url} answered HTTP {r.status_code}",
            hint="rate-limited? set GITHUB_TOKEN, or retry later",
        )
    return r


def _json(r: requests.Response, url: SecretUrl) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        raise SourceError(f"{url} did not return JSON", hint="check --github-api") from None
    if not isinstance(data, dict):
        raise SourceError(f"{url} returned an unexpected document", hint="check --github-api")
    return data


def read_remote_ref(
    ref: str,
    cfg: RemoteConfig,
    *,
    llama_commit: Optional[str] = None,
    max_name: Optional[int] = None,
) -> SdPins:
    """Pins of ``OWNER/REPO@REF`` without a local checkout."""
    owner, repo, rev = parse_ref(ref)
    s = _session(cfg)
    url = cfg.api.join("repos", owner, repo, "commits", rev)
    sha = str(_json(_get(s, url, cfg, f"ref {rev!r} of {owner}/{repo}"), url).get("sha", ""))
    if not is_full_sha(sha):
        raise SourceError(f"{url} gave no commit for {rev!r}", hint="check the ref")
    raw_base = cfg.raw.join(owner, repo, sha)
    cm_url = raw_base.join("CMakeLists.txt")
    cm_text = _get(s, cm_url, cfg, "CMakeLists.txt").text
    if "stable-diffusion" not in cm_text:
        raise PinsError(
            f"{owner}/{repo}@{rev} is not a stable-diffusion.cpp tree",
            hint="point --sd-ref at stable-diffusion.cpp or a fork of it",
        )
    gm_text = _get(s, raw_base.join(".gitmodules"), cfg, ".gitmodules").text
    gm_url = parse_gitmodules(gm_text).get("ggml")
    c_url = cfg.api.join("repos", owner, repo, f"contents/ggml?ref={sha}")
    sub = _json(_get(s, c_url, cfg, "the ggml submodule"), c_url)
    gitlink = str(sub.get("sha", ""))
    if not is_full_sha(gitlink):
        raise PinsError(
            f"{owner}/{repo}@{rev} has no ggml submodule commit",
            hint="pass --llama-commit and --max-name instead",
        )
    ggml_url = SecretUrl.parse(str(sub.get("submodule_git_url") or gm_url or ""))
    gm = _GH_URL_RE.search(str(ggml_url))
    if not gm:
        raise PinsError(
            f"ggml submodule URL {str(ggml_url)[:200]!r} is not on GitHub",
            hint="use a local checkout with --sd-cpp",
        )
    ggml_raw = cfg.raw.join(gm.group(1), gm.group(2), gitlink)
    if llama_commit is not None:
        commit_pin = Pin(llama_commit, "--llama-commit")
    else:
        sync_url = ggml_raw.join("scripts/sync-llama.last")
        data = _get(s, sync_url, cfg, "sync-llama.last").content
        commit_pin = Pin(parse_sync_llama_last(data, str(sync_url)), str(sync_url))
    if max_name is not None:
        name_pin = Pin(max_name, "--max-name")
    else:
        value = parse_max_name(cm_text)
        if value is None:
            raise PinsError(f"no GGML_MAX_NAME definition in {cm_url}", hint="pass --max-name N")
        name_pin = Pin(value, str(cm_url))
    h_url = ggml_raw.join("include/ggml-rpc.h")
    try:
        proto = parse_rpc_version(_get(s, h_url, cfg, "ggml-rpc.h").text)
    except PinsError:
        proto = None
    return SdPins(
        llama_commit=commit_pin,
        max_name=name_pin,
        client_protocol=Pin(proto, str(h_url) if proto else "unknown (no ggml-rpc.h)"),
        ggml_url=Pin(ggml_url, ".gitmodules"),
        ggml_commit=Pin(gitlink, str(c_url)),
        sd_commit=Pin(sha, str(url)),
        rpc_client=Pin("SD_RPC" in cm_text, str(cm_url)),
        origin=f"{owner}/{repo}@{rev}",
    )
