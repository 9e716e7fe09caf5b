"""Pure judging for sdrpc-check: endpoint lists, verdicts, sd-cli's device map.

No I/O here: :func:`judge` compares a :class:`~sdrpc_build.protocol.probe.ProbeResult`
with what the client (stable-diffusion.cpp) expects, the way llama.cpp's own
client would plus the GGML_MAX_NAME check it lacks.

* The client accepts a server with the same protocol major and a minor not
  higher than its own; the patch is ignored.
* ``GGML_MAX_NAME`` must be equal on both sides, or the first tensor upload
  crashes server and client.
* sd-cli names remote devices ``RPC0, RPC1, ...``: one counter across all
  servers in ``--rpc-servers`` order, one name per device a server exposes
  (protocol v3+; before v3 each server is one device).
* Values no real server reports (free memory above total, an alignment that
  is not a power of two, 0 included) make the verdict ``"error"`` (a broken
  protocol peer), whatever the client.
* With no client to compare with (no protocol, no GGML_MAX_NAME), a server
  that answered is ``"reachable"``, never ``"compatible"``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sdrpc_build.errors import UsageError
from sdrpc_build.protocol.codec import Version, format_version
from sdrpc_build.protocol.probe import ProbeResult

__all__ = [
    "ClientSpec",
    "Endpoint",
    "MappedDevice",
    "Verdict",
    "VerdictKind",
    "device_map",
    "device_problems",
    "judge",
    "parse_endpoint",
    "parse_endpoints",
    "parse_timeout",
    "shown",
]

VerdictKind = Literal[
    "compatible", "reachable", "incompatible", "unreachable", "busy", "slow", "not-rpc", "error"
]
ENDPOINTS_HINT = "write servers as HOST:PORT[,HOST:PORT...], e.g. 192.168.1.10:50052 or [::1]:50052"


def shown(text: str, limit: int = 40) -> str:
    """``repr`` of a user value for an error message, shortened when it is huge."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``host:port`` or ``[v6addr]:port``; raises :class:`UsageError`."""
    item = text.strip()
    if not item:
        raise UsageError("empty endpoint", hint=ENDPOINTS_HINT)
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise UsageError(
                f"malformed IPv6 endpoint {shown(item)}", hint="write it as [::1]:50052"
            )
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(
                f"{shown(host)} in {shown(item)} is not an IPv6 address",
                hint="write it as [::1]:50052",
            ) from None
        port_text = rest[1:]
    else:
        if item.count(":") > 1:
            raise UsageError(
                f"IPv6 address without brackets in {shown(item)}",
                hint="put IPv6 addresses in brackets: [::1]:50052",
            )
        host, sep, port_text = item.rpartition(":")
        if not sep or not host:
            raise UsageError(f"endpoint {shown(item)} has no host or port", hint=ENDPOINTS_HINT)
        if any(c.isspace() or c in "/[]@" for c in host) or not host.isprintable():
            raise UsageError(f"invalid host in endpoint {shown(item)}", hint=ENDPOINTS_HINT)
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses
    ok = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not ok or not 1 <= int(port_text) <= 65535:
        raise UsageError(
            f"invalid port in endpoint {shown(item)}", hint="the port is a number from 1 to 65535"
        )
    return Endpoint(host, int(port_text))


_SECONDS = re.compile(r"(?:\d{1,6}(?:\.\d{0,6})?|\.\d{1,6})", re.ASCII)
MAX_TIMEOUT = 600.0


def parse_timeout(text: str, flag: str = "--timeout") -> float:
    """Seconds in (0, 600], ASCII decimal only (no ``nan``, ``inf``, ``1e3`` or ``²``)."""
    item = text.strip()
    value = float(item) if _SECONDS.fullmatch(item) else math.nan
    if not 0 < value <= MAX_TIMEOUT:
        raise UsageError(
            f"{flag}: {shown(text)} is not a number of seconds in (0, {MAX_TIMEOUT:g}]",
            hint=f"e.g. {flag} 3 or {flag} 0.5",
        )
    return value


def parse_endpoints(text: str | Sequence[str]) -> tuple[Endpoint, ...]:
    """Parse ``host:port,host:port`` (or several such strings), in order.

    Empty entries, malformed entries and duplicates are :class:`UsageError`s.
    """
    parts = [text] if isinstance(text, str) else list(text)
    items = [piece for part in parts for piece in part.split(",")]
    if not items or all(not i.strip() for i in items):
        raise UsageError("no endpoints given", hint=ENDPOINTS_HINT)
    out: list[Endpoint] = []
    for item in items:
        ep = parse_endpoint(item)
        if ep in out:
            raise UsageError(f"endpoint {ep} is listed twice", hint="list each server once")
        out.append(ep)
    return tuple(out)


@dataclass(frozen=True)
class ClientSpec:
    """What the client expects; ``None`` means "not known, do not judge it"."""

    protocol: Version | None = None
    max_name: int | None = None
    source: str = "command line"


@dataclass(frozen=True)
class Verdict:
    endpoint: str
    kind: VerdictKind
    reasons: tuple[str, ...] = ()

    @property
    def compatible(self) -> bool | None:
        """True/False; ``None`` for "reachable" (there was no client to compare with)."""
        if self.kind == "reachable":
            return None
        return self.kind == "compatible"

    @property
    def ok(self) -> bool:
        """Nothing wrong was found (compatible, or reachable with no client given)."""
        return self.kind in ("compatible", "reachable")


def device_problems(result: ProbeResult) -> list[str]:
    """Values a real server cannot report: free memory above total, an alignment
    that is not a power of two (0 included). ggml would misplace every tensor."""
    out: list[str] = []
    for d in result.devices:
        if d.free > d.total:
            out.append(
                f"device {d.index} reports more free memory than it has "
                f"({d.free} bytes free of {d.total}): a broken server"
            )
        if d.alignment is not None and (d.alignment <= 0 or d.alignment & (d.alignment - 1)):
            out.append(
                f"device {d.index} reports alignment {d.alignment}, not a power of two: "
                "a broken server (ggml would misplace every tensor)"
            )
    return out


def judge(result: ProbeResult, client: ClientSpec) -> Verdict:
    """Compatible, or exactly why not."""
    ep = result.endpoint
    detail = "; ".join(result.problems)
    if result.status == "unreachable":
        return Verdict(ep, "unreachable", (f"unreachable: {detail}",))
    if result.status == "busy":
        return Verdict(ep, "busy", (f"busy: {detail}",))
    if result.status == "slow":
        return Verdict(ep, "slow", (f"too slow: {detail}",))
    if result.status == "not-rpc":
        return Verdict(ep, "not-rpc", (f"not a ggml RPC server: {detail}",))
    if result.status == "error" or result.protocol is None:
        return Verdict(ep, "error", (f"protocol error: {detail or 'no version'}",))
    broken = device_problems(result)
    reasons: list[str] = []
    server = result.protocol
    if client.protocol is not None:
        want = client.protocol
        s, c = format_version(server), format_version(want)
        if server[0] != want[0]:
            reasons.append(f"protocol major differs: server {s}, client {c}")
        elif server[1] > want[1]:
            reasons.append(f"server minor is newer than the client's: server {s}, client {c}")
    if client.max_name is not None:
        if result.max_name is None:
            reasons.append(
                f"GGML_MAX_NAME of the server is unknown (client uses {client.max_name}); "
                "a mismatch crashes both sides on the first tensor upload"
            )
        elif result.max_name != client.max_name:
            reasons.append(
                f"name length {result.max_name} vs {client.max_name}: the server was built "
                f"with GGML_MAX_NAME={result.max_name}, the client with {client.max_name}; "
                "the first tensor upload would crash both sides"
            )
    if broken:
        return Verdict(ep, "error", tuple(f"protocol error: {b}" for b in broken) + tuple(reasons))
    if reasons:
        return Verdict(ep, "incompatible", tuple(reasons))
    if client.protocol is None and client.max_name is None:
        return Verdict(ep, "reachable")
    return Verdict(ep, "compatible")


@dataclass(frozen=True)
class MappedDevice:
    """One device as sd-cli will name it (``--backend`` takes ``name``)."""

    name: str
    endpoint: str
    server: int  # position in the --rpc-servers list
    index: int  # device index on that server
    free: int
    total: int


def device_map(results: Sequence[ProbeResult]) -> tuple[MappedDevice, ...]:
    """Devices in sd-cli order. Servers without a complete device list (any status
    but ``"ok"``) contribute nothing, so later names assume they are absent."""
    out: list[MappedDevice] = []
    for s, r in enumerate(results):
        if r.status != "ok":
            continue
        devs = r.devices
        if r.protocol is not None and r.protocol < (3, 0, 0):
            devs = devs[:1]  # before v3: one device per server
        for d in devs:
            out.append(MappedDevice(f"RPC{len(out)}", r.endpoint, s, d.index, d.free, d.total))
    return tuple(out)
