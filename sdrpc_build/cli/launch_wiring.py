"""What ``sdrpc-launch`` injects into launch/: sdrpc's builds and the readiness check.

launch/ imports neither the build wing nor the protocol. Here the build locator is made from
build/'s store, installed server wheels and toolchain, and the readiness check from protocol's
probe, judged by protocol.compat's name-length rule.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdrpc_build.build.exact import tree_digest
from sdrpc_build.build.locator import BUILDS, server_build
from sdrpc_build.build.pipeline import BuildOptions, build
from sdrpc_build.build.source import DEFAULT_LLAMA_REPO
from sdrpc_build.build.url import SecretUrl
from sdrpc_build.cli.build import exact_ggml_dir, read_pins
from sdrpc_build.cli.build_report import build_reporter
from sdrpc_build.errors import UsageError
from sdrpc_build.launch.readiness import Readiness, RemoteDevice
from sdrpc_build.launch.resolve import Build, BuildMissing, ClientPins
from sdrpc_build.launch.spec import ServerSpec, client_host
from sdrpc_build.protocol.compat import name_length_problem
from sdrpc_build.protocol.layouts import format_version
from sdrpc_build.protocol.probe import probe

__all__ = [
    "BUILDS",
    "DEFAULT_BACKEND",
    "PROBE_TIMEOUT",
    "PinArgs",
    "client_pins",
    "readiness_check",
    "server_build",
]

PROBE_TIMEOUT = 3.0  # seconds per exchange of one readiness probe
DEFAULT_BACKEND = "cpu"  # what is built for the client's pins when no --backend is given


@dataclass(frozen=True)
class PinArgs:
    """sdrpc-launch's pin options (sdrpc-build's, read by sdrpc-build's code)."""

    sd_cpp: Optional[Path] = None
    sd_ref: Optional[str] = None
    llama_commit: Optional[str] = None
    max_name: Optional[str] = None
    exact: bool = False
    llama_repo: Optional[SecretUrl] = None
    llama_src: Optional[Path] = None
    llama_sdist: Optional[str] = None
    no_build: bool = False

    @property
    def given(self) -> bool:
        return self.sd_cpp is not None or self.sd_ref is not None or self.llama_commit is not None


def client_pins(
    a: PinArgs, env: Mapping[str, str], cache_root: Path, prog: str
) -> tuple[Optional[ClientPins], Optional[BuildMissing]]:
    """The client's pins and how to build a server for them (None, None: no pins given)."""
    if not a.given:
        for flag, value in (
            ("--max-name", a.max_name),
            ("--exact", a.exact or None),
            ("--llama-sdist", a.llama_sdist),
            ("--llama-src", a.llama_src),
            ("--llama-repo", a.llama_repo),
            ("--no-build", a.no_build or None),
        ):
            if value is not None:
                raise UsageError(
                    f"{flag} needs the client's pins",
                    hint="give --sd-cpp PATH, --sd-ref OWNER/REPO@REF or --llama-commit SHA "
                    "--max-name N",
                )
        return None, None
    if a.llama_src is not None and a.llama_sdist is not None:
        raise UsageError("--llama-src and --llama-sdist are exclusive", hint="pick one source")
    if a.exact and a.sd_cpp is None:
        raise UsageError(
            "--exact needs --sd-cpp PATH", hint="the sd.cpp tree whose ggml the server must match"
        )
    exact_dir = exact_ggml_dir(a.sd_cpp, a.sd_ref) if a.exact else None
    sd = read_pins(
        env,
        sd_cpp=a.sd_cpp,
        sd_ref=a.sd_ref,
        llama_commit=a.llama_commit,
        max_name_text=a.max_name,
    )
    digest = tree_digest(exact_dir) if exact_dir is not None else None
    pins = ClientPins(sd.llama_commit.value, sd.max_name.value, digest, sd.origin)
    if a.no_build:
        return pins, None

    def build_missing(backend: Optional[str]) -> Build:
        opts = BuildOptions(
            cache_root=cache_root,
            backend=backend or DEFAULT_BACKEND,
            llama_repo=a.llama_repo or DEFAULT_LLAMA_REPO,
            llama_src=a.llama_src,
            llama_sdist=a.llama_sdist,
            exact_ggml_dir=exact_dir,
        )
        print(
            f"{prog}: no {opts.backend} build matches the client's pins "
            f"(llama.cpp {pins.commit[:10]}, GGML_MAX_NAME {pins.max_name}): building it",
            file=sys.stderr,
            flush=True,
        )
        with build_reporter(prog) as reporter:
            return server_build(build(sd, opts, env, reporter).manifest)

    return pins, build_missing


def readiness_check(spec: ServerSpec, timeout: float = PROBE_TIMEOUT) -> Readiness:
    """Probe a starting server: ready when it answers HELLO (and, when the build says which
    GGML_MAX_NAME it has, that one: protocol.compat's name-length rule)."""
    result = probe(
        client_host(spec.host),
        spec.port,
        timeout=timeout,
        expect_max_name=spec.max_name,
        detect_max_name=spec.max_name is not None,
    )
    protocol = format_version(result.protocol) if result.protocol else None
    devices = tuple(RemoteDevice(d.index, d.free, d.total) for d in result.devices)
    problems = tuple(result.problems)
    if result.status == "ok":
        if spec.max_name is not None:
            # only the name-length rule: the device values are sdrpc-check's business here
            why = name_length_problem(result.max_name, spec.max_name)
            if why is not None and result.max_name is not None:
                return Readiness("fail", why, protocol, result.max_name, devices, problems)
        return Readiness("ready", None, protocol, result.max_name, devices, problems)
    if result.status in ("unreachable", "busy", "slow", "error"):
        return Readiness("retry", "; ".join(problems) or result.status)
    return Readiness("fail", "; ".join(problems) or f"probe: {result.status}", protocol)
