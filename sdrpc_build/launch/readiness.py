"""Readiness = TCP accept + HELLO answered (+ the GGML_MAX_NAME probe when the value is known).

The supervisor gets a :data:`ReadinessCheck` callable; this module adapts
``sdrpc_build.protocol.probe.probe`` to it. Used only before a server is READY: a probe made
while a client is connected would wait unanswered (one client at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Optional

from sdrpc_build.launch.spec import ServerSpec, client_host

__all__ = ["Readiness", "ReadinessCheck", "RemoteDevice", "probe_readiness"]


@dataclass(frozen=True)
class RemoteDevice:
    index: int
    free: int
    total: int


@dataclass(frozen=True)
class Readiness:
    """``ready``; ``retry`` (not listening yet); ``fail`` (answers wrongly: kill, FATAL)."""

    status: Literal["ready", "retry", "fail"]
    message: Optional[str] = None
    protocol: Optional[str] = None
    max_name: Optional[int] = None
    devices: tuple[RemoteDevice, ...] = ()
    problems: tuple[str, ...] = ()


ReadinessCheck = Callable[[ServerSpec], Readiness]


def probe_readiness(spec: ServerSpec, timeout: float = 3.0) -> Readiness:
    """Probe a starting server with sdrpc's protocol client."""
    from sdrpc_build.protocol.probe import probe

    result = probe(
        client_host(spec.host),
        spec.port,
        timeout=timeout,
        expect_max_name=spec.max_name,
        detect_max_name=spec.max_name is not None,
    )
    protocol = ".".join(map(str, result.protocol)) if result.protocol else None
    devices = tuple(RemoteDevice(d.index, d.free, d.total) for d in result.devices)
    problems = tuple(result.problems)
    if result.status == "ok":
        if spec.max_name is not None and result.max_name not in (None, spec.max_name):
            return Readiness(
                "fail",
                f"GGML_MAX_NAME is {result.max_name}, the build says {spec.max_name}",
                protocol,
                result.max_name,
                devices,
                problems,
            )
        return Readiness("ready", None, protocol, result.max_name, devices, problems)
    if result.status in ("unreachable", "busy", "slow", "error"):
        return Readiness("retry", "; ".join(problems) or result.status)
    return Readiness("fail", "; ".join(problems) or f"probe: {result.status}", protocol)
