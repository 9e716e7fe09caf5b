"""Endpoints and time limits as users write them: ``HOST:PORT[,HOST:PORT...]``, seconds.

Pure parsing for the command lines (sdrpc-check, sdrpc-bench); every failure is a
:class:`~sdrpc_build.errors.UsageError` with a hint.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sdrpc_build.errors import UsageError

__all__ = [
    "MAX_TIMEOUT",
    "Endpoint",
    "format_endpoint",
    "parse_endpoint",
    "parse_endpoints",
    "parse_timeout",
    "shown",
]


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


ENDPOINTS_HINT = "write servers as HOST:PORT[,HOST:PORT...], e.g. 192.168.1.10:50052 or [::1]:50052"


def shown(text: str, limit: int = 40) -> str:
    """``repr`` of a user value for an error message, shortened when it is huge."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return format_endpoint(self.host, self.port)


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
