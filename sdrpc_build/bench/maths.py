"""Pure parts of sdrpc-bench: sizes, throughput math, upload estimates, JSON shape.

No I/O here (the measuring loop is :mod:`sdrpc_build.bench.link`).

Units: sizes given by users follow ``ls -h``/GNU conventions: ``K``, ``M``,
``G``, ``T`` (with or without ``i``/``iB``) are powers of 1024; ``kB``, ``MB``,
``GB``, ``TB`` are powers of 1000. Throughput is reported in MB/s (10**6 bytes
per second) and Gbit/s (10**9 bits per second), the units links are sold in.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sdrpc_build.errors import UsageError

__all__ = [
    "CACHE_THRESHOLD",
    "DEFAULT_SIZES",
    "DeviceResult",
    "Op",
    "Sample",
    "Schedule",
    "ServerResult",
    "UploadEstimate",
    "estimate_upload",
    "format_bytes",
    "format_duration",
    "gbit_per_s",
    "mb_per_s",
    "memory_restored",
    "parse_size",
    "parse_sizes",
    "repeats_for",
    "schedule",
    "to_json",
]

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
# ggml-rpc's HASH_THRESHOLD: tensors above it are sent as a hash first when the
# server runs with -c (a cache hit skips the upload).
CACHE_THRESHOLD = 10 * MIB
DEFAULT_SIZES: tuple[int, ...] = tuple(4 * KIB * 4**i for i in range(9))  # 4 KiB .. 256 MiB
MAX_BENCH_SIZE = 16 * GIB  # one transfer; anything bigger is a typo
# free memory may move a little on its own (drivers, other processes)
MEMORY_TOLERANCE = 16 * MIB

Op = Literal["set", "get"]

# ASCII digits only (\d would take "²" or "٣"), and few enough that no float overflows
_SIZE_RE = re.compile(
    r"^\s*(\d{1,20}(?:\.\d{1,20})?|\.\d{1,20})\s*([kmgt]?)(i?)(b?)\s*$",
    re.IGNORECASE | re.ASCII,
)
MAX_SIZE = 1 << 60  # anything bigger is a typo, whatever the option
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str, what: str = "size") -> int:
    """``"7.2G"`` -> bytes. ``K/M/G/T`` and ``KiB...`` are binary, ``kB/MB/GB`` decimal."""
    shown = repr(text if len(text) <= 40 else text[:37] + "...")
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(
            f"{what}: cannot read {shown} as a size",
            hint="write a number with an optional unit, e.g. 7.2G, 512M, 64MiB, 4K, 1.5GB",
        )
    number, unit, i, b = m.group(1), m.group(2).lower(), m.group(3), m.group(4)
    if i and not unit:
        raise UsageError(f"{what}: cannot read {shown} as a size", hint="e.g. 64MiB")
    base = 1000 if (unit and b and not i) else 1024
    value = float(number) * float(base ** _POW[unit])
    if value < 1:
        raise UsageError(f"{what}: {shown} is less than one byte", hint="e.g. 4K or 1M")
    if value > MAX_SIZE:
        raise UsageError(f"{what}: {shown} is more than 1 EiB", hint="e.g. 7.2G or 512M")
    return round(value)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"4K,1M,64M"`` -> sorted, de-duplicated byte counts (each rounded up to 4 bytes)."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--sizes: no sizes given", hint="e.g. --sizes 4K,1M,64M")
    out = set()
    for item in items:
        n = parse_size(item, "--sizes")
        if n > MAX_BENCH_SIZE:
            raise UsageError(
                f"--sizes: {item.strip()} is above the {format_bytes(MAX_BENCH_SIZE)} limit "
                "for one transfer",
                hint="e.g. --sizes 4K,1M,64M",
            )
        out.add(-(-n // 4) * 4)
    return tuple(sorted(out))


def format_bytes(n: float) -> str:
    """Binary units, as ``ls -h`` would: ``4 KiB``, ``64 MiB``, ``7.2 GiB``."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def mb_per_s(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10**6 bytes per second); 0.0 for a zero duration."""
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


def gbit_per_s(nbytes: int, seconds: float) -> float:
    """Throughput in Gbit/s (10**9 bits per second); 0.0 for a zero duration."""
    return nbytes * 8 / seconds / 1e9 if seconds > 0 else 0.0


@dataclass(frozen=True)
class Schedule:
    """The sizes that will be measured, and a note for each one left out."""

    sizes: tuple[int, ...]
    notes: tuple[str, ...] = ()


def schedule(
    sizes: Sequence[int], free: int, max_size: int | None = None, reserve: int = 0
) -> Schedule:
    """Keep the sizes that fit the device: ``<= free - reserve`` and ``<= max_size``.

    ``max_size`` is the largest single buffer the device allows (GET_MAX_SIZE;
    0 or ``None`` means no limit).
    """
    room = max(free - reserve, 0)
    keep: list[int] = []
    notes: list[str] = []
    for n in sorted(set(sizes)):
        if n > room:
            notes.append(
                f"{format_bytes(n)} skipped: above the device's free memory "
                f"({format_bytes(room)} usable)"
            )
        elif max_size and n > max_size:
            notes.append(
                f"{format_bytes(n)} skipped: above the device's largest buffer "
                f"({format_bytes(max_size)})"
            )
        else:
            keep.append(n)
    return Schedule(tuple(keep), tuple(notes))


def repeats_for(nbytes: int, budget: int = 256 * MIB, lo: int = 3, hi: int = 50) -> int:
    """How many timed transfers of ``nbytes``: about ``budget`` bytes each way, within [lo, hi]."""
    return max(lo, min(hi, budget // max(nbytes, 1)))


def memory_restored(before: int, after: int, tolerance: int = MEMORY_TOLERANCE) -> bool:
    """Free memory after freeing the buffer is back where it was (within ``tolerance``)."""
    return after + tolerance >= before


@dataclass(frozen=True)
class Sample:
    """Timings of ``repeats`` transfers of ``bytes``; ``seconds`` is the best (fastest)."""

    op: Op
    bytes: int
    times: tuple[float, ...]

    @property
    def seconds(self) -> float:
        return min(self.times)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def mb_per_s(self) -> float:
        return mb_per_s(self.bytes, self.seconds)

    @property
    def gbit_per_s(self) -> float:
        return gbit_per_s(self.bytes, self.seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 9),
            "mb_per_s": round(self.mb_per_s, 2),
            "gbit_per_s": round(self.gbit_per_s, 3),
            "median_seconds": round(self.median_seconds, 9),
            "repeats": len(self.times),
        }


@dataclass(frozen=True)
class DeviceResult:
    index: int
    free_before: int
    total: int
    free_after: int | None = None
    samples: tuple[Sample, ...] = ()
    notes: tuple[str, ...] = ()
    verified: bool = False

    @property
    def memory_restored(self) -> bool | None:
        if self.free_after is None:
            return None
        return memory_restored(self.free_before, self.free_after)

    def best(self, op: Op) -> Sample | None:
        """The sample of the largest size measured for ``op`` (the bulk-transfer rate)."""
        mine = [s for s in self.samples if s.op == op]
        return max(mine, key=lambda s: (s.bytes, -s.seconds)) if mine else None


@dataclass(frozen=True)
class UploadEstimate:
    model_bytes: int
    seconds: float
    rate_mb_per_s: float
    note: str


def estimate_upload(
    model_bytes: int, set_sample: Sample, latency_s: float, tensors: int | None = None
) -> UploadEstimate:
    """Time to upload ``model_bytes`` at the measured bulk SET rate, plus one round trip
    per tensor (``tensors`` if known, else one per 64 MiB as a rough guess)."""
    rate = set_sample.bytes / set_sample.seconds if set_sample.seconds > 0 else 0.0
    n = tensors if tensors is not None else max(1, model_bytes // (64 * MIB))
    seconds = (model_bytes / rate if rate else float("inf")) + n * latency_s
    note = (
        "a server started with -c keeps tensors above "
        f"{format_bytes(CACHE_THRESHOLD)} in its cache: after the first load, later loads "
        "send only a hash for those, and most of this time is saved"
    )
    return UploadEstimate(model_bytes, seconds, rate / 1e6, note)


@dataclass(frozen=True)
class ServerResult:
    endpoint: str
    protocol: str | None = None
    max_name: int | None = None
    latency_ms: float | None = None
    devices: tuple[DeviceResult, ...] = ()
    upload: UploadEstimate | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    error: str | None = None  # the benchmark failed; ``error`` says why

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(s for d in self.devices for s in d.samples)


def _device_json(d: DeviceResult) -> dict[str, Any]:
    return {
        "index": d.index,
        "free_before": d.free_before,
        "free_after": d.free_after,
        "total": d.total,
        "memory_restored": d.memory_restored,
        "verified": d.verified,
        "samples": [s.to_json() for s in d.samples],
        "notes": list(d.notes),
    }


def to_json(results: Iterable[ServerResult]) -> dict[str, Any]:
    """The ``--json`` document: ``{"servers": [{"endpoint", "latency_ms", "samples"...}]}``.

    ``samples`` holds device 0's samples (the issue's shape); every device is
    under ``devices``.
    """
    servers = []
    for r in results:
        first = r.devices[0] if r.devices else None
        up = r.upload
        servers.append(
            {
                "endpoint": r.endpoint,
                "protocol": r.protocol,
                "max_name": r.max_name,
                "latency_ms": None if r.latency_ms is None else round(r.latency_ms, 4),
                "samples": [s.to_json() for s in first.samples] if first else [],
                "devices": [_device_json(d) for d in r.devices],
                "upload_estimate": None
                if up is None
                else {
                    "model_bytes": up.model_bytes,
                    "seconds": round(up.seconds, 3),
                    "mb_per_s": round(up.rate_mb_per_s, 2),
                    "note": up.note,
                },
                "notes": list(r.notes),
                "error": r.error,
            }
        )
    return {"servers": servers}
