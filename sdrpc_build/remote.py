"""Resolve sd.cpp pins from a remote ref (``OWNER/REPO@REF``) over HTTPS.

Uses GitHub's REST API (ref -> commit, the ggml submodule's gitlink) and raw
file endpoints. Base URLs are configurable so tests point at a local server.
Requests have timeouts and retries; a token from ``GITHUB_TOKEN`` is sent but
never printed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sdrpc_build.errors import PinsError, SourceError, UsageError
from sdrpc_build.pins import (
    Pin,
    SdPins,
    is_full_sha,
    parse_gitmodules,
    parse_max_name,
    parse_rpc_version,
    parse_sync_llama_last,
)

__all__ = ["RemoteConfig", "parse_ref", "read_remote_ref"]

_REF_RE = re.compile(r"^([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)@(\S+)$")
_GH_URL_RE = re.compile(r"github\.com[:/]([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$")


@dataclass(frozen=True)
class RemoteConfig:
    api: str = "https://api.github.com"
    raw: str = "https://raw.githubusercontent.com"
    timeout: float = 15.0
    retries: int = 3
    token: Optional[str] = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], api: Optional[str] = None, raw: Optional[str] = None
    ) -> RemoteConfig:
        return cls(
            api=(api or env.get("SDRPC_GITHUB_API") or cls.api).rstrip("/"),
            raw=(raw or env.get("SDRPC_GITHUB_RAW") or cls.raw).rstrip("/"),
            token=env.get("GITHUB_TOKEN") or None,
        )


def parse_ref(text: str) -> tuple[str, str, str]:
    m = _REF_RE.match(text)
    if not m:
        raise UsageError(
            f"--sd-ref {text!r} is not OWNER/REPO@REF",
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


def _get(s: requests.Session, url: str, cfg: RemoteConfig, what: str) -> requests.Response:
    try:
        r = s.get(url, timeout=cfg.timeout)
    except requests.RequestException as exc:
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


def _json(r: requests.Response, url: str) -> dict[str, Any]:
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
    url = f"{cfg.api}/repos/{owner}/{repo}/commits/{rev}"
    sha = str(_json(_get(s, url, cfg, f"ref {rev!r} of {owner}/{repo}"), url).get("sha", ""))
    if not is_full_sha(sha):
        raise SourceError(f"{url} gave no commit for {rev!r}", hint="check the ref")
    raw_base = f"{cfg.raw}/{owner}/{repo}/{sha}"
    cm_url = f"{raw_base}/CMakeLists.txt"
    cm_text = _get(s, cm_url, cfg, "CMakeLists.txt").text
    if "stable-diffusion" not in cm_text:
        raise PinsError(
            f"{owner}/{repo}@{rev} is not a stable-diffusion.cpp tree",
            hint="point --sd-ref at stable-diffusion.cpp or a fork of it",
        )
    gm_text = _get(s, f"{raw_base}/.gitmodules", cfg, ".gitmodules").text
    ggml_url = parse_gitmodules(gm_text).get("ggml")
    c_url = f"{cfg.api}/repos/{owner}/{repo}/contents/ggml?ref={sha}"
    sub = _json(_get(s, c_url, cfg, "the ggml submodule"), c_url)
    gitlink = str(sub.get("sha", ""))
    if not is_full_sha(gitlink):
        raise PinsError(
            f"{owner}/{repo}@{rev} has no ggml submodule commit",
            hint="pass --llama-commit and --max-name instead",
        )
    ggml_url = str(sub.get("submodule_git_url") or ggml_url or "")
    gm = _GH_URL_RE.search(ggml_url)
    if not gm:
        raise PinsError(
            f"ggml submodule URL {ggml_url!r} is not on GitHub",
            hint="use a local checkout with --sd-cpp",
        )
    ggml_raw = f"{cfg.raw}/{gm.group(1)}/{gm.group(2)}/{gitlink}"
    if llama_commit is not None:
        commit_pin = Pin(llama_commit, "--llama-commit")
    else:
        sync_url = f"{ggml_raw}/scripts/sync-llama.last"
        data = _get(s, sync_url, cfg, "sync-llama.last").content
        commit_pin = Pin(parse_sync_llama_last(data, sync_url), sync_url)
    if max_name is not None:
        name_pin = Pin(max_name, "--max-name")
    else:
        value = parse_max_name(cm_text)
        if value is None:
            raise PinsError(f"no GGML_MAX_NAME definition in {cm_url}", hint="pass --max-name N")
        name_pin = Pin(value, cm_url)
    h_url = f"{ggml_raw}/include/ggml-rpc.h"
    try:
        proto = parse_rpc_version(_get(s, h_url, cfg, "ggml-rpc.h").text)
    except PinsError:
        proto = None
    return SdPins(
        llama_commit=commit_pin,
        max_name=name_pin,
        client_protocol=Pin(proto, h_url if proto else "unknown (no ggml-rpc.h)"),
        ggml_url=Pin(ggml_url, ".gitmodules"),
        ggml_commit=Pin(gitlink, c_url),
        sd_commit=Pin(sha, url),
        rpc_client=Pin("SD_RPC" in cm_text, cm_url),
        origin=f"{owner}/{repo}@{rev}",
    )
