"""[client] -> the pins every server of the fleet is built for, and the build options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from sdrpc_build.build.pins import Pin, SdPins, read_sd_tree
from sdrpc_build.build.pipeline import BuildOptions
from sdrpc_build.build.remote import RemoteConfig, read_remote_ref
from sdrpc_build.build.url import SecretUrl
from sdrpc_build.build.vulkan_headers import HeadersChoice
from sdrpc_build.fleet.model import ClientConfig

__all__ = ["build_options", "client_pins"]


def client_pins(c: ClientConfig, env: Mapping[str, str]) -> SdPins:
    """Pins read once, on the client; a host never decides its own."""
    if c.sd_ref:
        cfg = RemoteConfig.from_env(env)
        return read_remote_ref(c.sd_ref, cfg, llama_commit=c.llama_commit, max_name=c.max_name)
    if c.sd_cpp:
        return read_sd_tree(c.sd_cpp, llama_commit=c.llama_commit, max_name=c.max_name)
    unknown = "unknown (no sd.cpp tree)"
    assert c.llama_commit is not None and c.max_name is not None  # model._check_client
    return SdPins(
        llama_commit=Pin(c.llama_commit, "fleet.toml llama-commit"),
        max_name=Pin(c.max_name, "fleet.toml max-name"),
        client_protocol=Pin(None, unknown),
        ggml_url=Pin(None, unknown),
        ggml_commit=Pin(None, unknown),
        sd_commit=Pin(None, unknown),
        rpc_client=Pin(None, unknown),
        origin="fleet.toml",
    )


def build_options(c: ClientConfig, backend: str, cache_root: Path) -> BuildOptions:
    opts = BuildOptions(
        cache_root=cache_root,
        backend=backend,
        llama_src=c.llama_src,
        llama_sdist=c.llama_sdist,
        exact_ggml_dir=(c.sd_cpp / "ggml") if c.exact and c.sd_cpp else None,
        # the servers go to other machines: never -march=native
        portable=True,
        vulkan_headers=(
            HeadersChoice(c.vulkan_headers) if c.vulkan_headers and backend == "vulkan" else None
        ),
    )
    if c.llama_repo:
        opts = replace(opts, llama_repo=SecretUrl.parse(c.llama_repo))
    return opts
