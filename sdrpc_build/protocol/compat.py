"""THE compatibility rules between a ggml RPC server and its client (sd.cpp), once each.

Pure (no I/O). Every part of sdrpc that judges a server calls these:

* :func:`version_problem`: llama.cpp's client accepts a server with the same
  protocol major and a minor not higher than its own; the patch is ignored.
* :func:`name_length_problem`: ``GGML_MAX_NAME`` must be equal on both sides, or
  the first tensor upload crashes server and client (llama.cpp does not check it).
* :func:`sd_cli_devices`: sd-cli names remote devices ``RPC0, RPC1, ...``: one
  counter across all servers in ``--rpc-servers`` order, one name per device a
  server lists (a server whose protocol has no DEVICE_COUNT, i.e. before v3, is
  one device).
* :func:`device_problems`: values no real server reports (free memory above
  total, an alignment that is not a power of two, 0 included) mean a broken peer.

:func:`judge` applies them to a :class:`~sdrpc_build.protocol.probe.ProbeResult`
for sdrpc-check: a broken peer is ``"error"`` whatever the client; with no client
to compare with (no protocol, no GGML_MAX_NAME), a server that answered is
``"reachable"``, never ``"compatible"``. :func:`device_map` is sd-cli's device
list for probe results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from sdrpc_build.protocol.layouts import LAYOUTS, Cmd, Version, format_version, layout_for
from sdrpc_build.protocol.probe import ProbeResult

__all__ = [
    "ClientSpec",
    "MappedDevice",
    "NumberedDevice",
    "Verdict",
    "VerdictKind",
    "device_map",
    "device_problems",
    "judge",
    "name_length_problem",
    "sd_cli_device_name",
    "sd_cli_devices",
    "version_problem",
]

VerdictKind = Literal[
    "compatible", "reachable", "incompatible", "unreachable", "busy", "slow", "not-rpc", "error"
]
D = TypeVar("D")


def version_problem(server: Version, client: Version) -> str | None:
    """Why a client speaking ``client`` refuses a server speaking ``server``; ``None``
    when it accepts it (same major, server minor not newer, patch ignored)."""
    s, c = format_version(server), format_version(client)
    if server[0] != client[0]:
        return f"protocol major differs: server {s}, client {c}"
    if server[1] > client[1]:
        return f"server minor is newer than the client's: server {s}, client {c}"
    return None


def name_length_problem(server: int | None, client: int) -> str | None:
    """Why a server built with ``GGML_MAX_NAME = server`` (``None``: not known) cannot
    serve a client built with ``client``; ``None`` when the two are equal."""
    if server is None:
        return (
            f"GGML_MAX_NAME of the server is unknown (client uses {client}); "
            "a mismatch crashes both sides on the first tensor upload"
        )
    if server != client:
        return (
            f"name length {server} vs {client}: the server was built "
            f"with GGML_MAX_NAME={server}, the client with {client}; "
            "the first tensor upload would crash both sides"
        )
    return None


def sd_cli_device_name(k: int) -> str:
    """The name sd-cli gives the ``k``-th remote device (counting across servers)."""
    return f"RPC{k}"


@dataclass(frozen=True)
class NumberedDevice(Generic[D]):
    """One device as sd-cli numbers it: ``name`` (``RPC<k>``, what ``--backend``
    takes), ``server`` (the position in ``--rpc-servers``) and the caller's ``device``."""

    name: str
    server: int
    device: D


def sd_cli_devices(
    servers: Sequence[tuple[Version | None, Sequence[D]]],
) -> tuple[NumberedDevice[D], ...]:
    """sd-cli's device numbering. ``servers``: per server, in ``--rpc-servers`` order,
    its protocol (``None``: not known, taken as listing devices) and the devices it
    lists (pass none for a server to leave out: later names then assume it absent).
    A server whose protocol has no DEVICE_COUNT counts as its first device only."""
    out: list[NumberedDevice[D]] = []
    for position, (protocol, devices) in enumerate(servers):
        lists = protocol is None or (
            protocol >= LAYOUTS[0].since and layout_for(protocol).knows(Cmd.DEVICE_COUNT)
        )
        for d in devices if lists else devices[:1]:
            out.append(NumberedDevice(sd_cli_device_name(len(out)), position, d))
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
    found = (
        None if client.protocol is None else version_problem(result.protocol, client.protocol),
        None if client.max_name is None else name_length_problem(result.max_name, client.max_name),
    )
    reasons = tuple(r for r in found if r is not None)
    if broken:
        return Verdict(ep, "error", tuple(f"protocol error: {b}" for b in broken) + reasons)
    if reasons:
        return Verdict(ep, "incompatible", reasons)
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
    listed = [(r.protocol, r.devices if r.status == "ok" else ()) for r in results]
    return tuple(
        MappedDevice(
            n.name,
            results[n.server].endpoint,
            n.server,
            n.device.index,
            n.device.free,
            n.device.total,
        )
        for n in sd_cli_devices(listed)
    )
