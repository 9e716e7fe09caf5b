"""Parse what rpc-server prints: the start banner, client lines, and known failures."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal, Optional

__all__ = [
    "Banner",
    "BannerDevice",
    "BannerParser",
    "LineKind",
    "classify_failure",
    "parse_device_line",
    "parse_device_list",
]

LineKind = Literal[
    "version",
    "endpoint",
    "cache",
    "devices",
    "device",
    "transport",
    "client-connected",
    "client-closed",
    "other",
]

_VERSION = re.compile(r"^Starting RPC server v(\d+)\.(\d+)\.(\d+)\s*$")
_FIELD = re.compile(r"^\s+(endpoint|local cache|transport)\s*:\s*(.*?)\s*$")
_DEVICE = re.compile(r"^\s+([^\s:]+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")


@dataclass(frozen=True)
class BannerDevice:
    """One ``  NAME: DESCRIPTION (TOTAL MiB, FREE MiB free)`` line."""

    name: str
    description: str
    total_mib: int
    free_mib: int


@dataclass(frozen=True)
class Banner:
    """What the server said about itself at start."""

    version: Optional[tuple[int, int, int]] = None
    endpoint: Optional[str] = None
    cache: Optional[str] = None  # None = not printed; "n/a" = cache off
    devices: tuple[BannerDevice, ...] = ()
    transport: Optional[str] = None

    @property
    def version_str(self) -> Optional[str]:
        return ".".join(map(str, self.version)) if self.version else None

    @property
    def complete(self) -> bool:
        """The last banner line (``transport``, v4+) was seen: the socket is about to listen."""
        return self.transport is not None


def parse_device_line(line: str) -> Optional[BannerDevice]:
    m = _DEVICE.match(line.rstrip("\r\n"))
    if not m:
        return None
    return BannerDevice(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)))


@dataclass
class BannerParser:
    """Feed lines one by one; ``banner`` grows as the server prints its start banner.

    A new ``Starting RPC server`` line (a restart) resets the banner.
    """

    banner: Banner = field(default_factory=Banner)
    _in_devices: bool = False

    def feed(self, line: str) -> LineKind:
        line = line.rstrip("\r\n")
        m = _VERSION.match(line)
        if m:
            self.banner = Banner(version=(int(m[1]), int(m[2]), int(m[3])))
            self._in_devices = False
            return "version"
        if line == "Accepted client connection":
            return "client-connected"
        if line == "Client connection closed":
            return "client-closed"
        if line.rstrip() == "Devices:":
            self._in_devices = True
            return "devices"
        if self._in_devices:
            dev = parse_device_line(line)
            if dev is not None:
                self.banner = replace(self.banner, devices=(*self.banner.devices, dev))
                return "device"
            self._in_devices = False
        f = _FIELD.match(line)
        if f:
            key, value = f.group(1), f.group(2)
            if key == "endpoint":
                self.banner = replace(self.banner, endpoint=value)
                return "endpoint"
            if key == "local cache":
                self.banner = replace(self.banner, cache=value)
                return "cache"
            self.banner = replace(self.banner, transport=value)
            return "transport"
        return "other"


def _short(line: str) -> str:
    return line if len(line) <= REASON_WIDTH else line[:REASON_WIDTH] + "..."


def parse_device_list(output: str) -> tuple[BannerDevice, ...]:
    """Device lines from any output (the banner or the ``unknown device`` listing)."""
    found = (parse_device_line(line) for line in output.splitlines())
    return tuple(d for d in found if d is not None)


REASON_WIDTH = 200  # a reason quotes at most this much of a line


def classify_failure(lines: Iterable[str]) -> tuple[bool, Optional[str]]:
    """Read a failed server's last lines: ``(permanent, reason)``.

    Permanent failures (bad flags, unknown device) cannot be cured by restarting.
    """
    text = [_short(ln.rstrip("\r\n")) for ln in lines]
    for ln in text:
        if ln.startswith("error: unknown argument") or ln.startswith("error: invalid"):
            return True, ln[len("error: ") :]
        if ln.startswith("error: unknown device"):
            return True, ln[len("error: ") :]
        if ln.startswith("Invalid host address") or ln == "Invalid parameters":
            return True, ln
        if ln == "No devices found":
            return True, ln
    for ln in text:
        if ln.startswith("Failed to create server socket"):
            return False, "could not bind its port (Failed to create server socket)"
        if ln.startswith("Failed to create cache directory"):
            return True, ln
        if "GGML_ASSERT" in ln or "error:" in ln.lower():
            return False, ln.strip()
    return False, None
