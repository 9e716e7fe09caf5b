"""Pure parts of sdrpc-bench: sizes, throughput math, upload estimates, JSON shape.

No I/O here (the measuring loop is :mod:`sdrpc_build.bench.link`).

Units: sizes given by users are read by :func:`sdrpc_build.units.parse_size` (the
one rule: ``K``, ``M``, ``G``, ``T`` are powers of 1024, ``kB``, ``MB``, ``GB``,
``TB`` powers of 1000) and written by :func:`~sdrpc_build.units.format_size`.
Throughput is reported in MB/s (10**6 bytes per second) and Gbit/s (10**9 bits
per second), the units links are sold in.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sdrpc_build.errors import UsageError
from sdrpc_build.units import GIB, KIB, MIB, format_size, parse_size

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
    "format_duration",
    "gbit_per_s",
    "mb_per_s",
    "memory_restored",
    "parse_sizes",
    "repeats_for",
    "schedule",
    "to_json",
]

# ggml-rpc's HASH_THRESHOLD: tensors above it are sent as a hash first when the
# server runs with -c (a cache hit skips the upload).
CACHE_THRESHOLD = 10 * MIB
DEFAULT_SIZES: tuple[int, ...] = tuple(4 * KIB * 4**i for i in range(9))  # 4 KiB .. 256 MiB
MAX_BENCH_SIZE = 16 * GIB  # one transfer; anything bigger is a typo
# free memory may move a little on its own (drivers, other processes)
MEMORY_TOLERANCE = 16 * MIB

Op = Literal["set", "get"]


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"4K,1M,64M"`` -> sorted, de-duplicated byte counts (each rounded up to 4 bytes)."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--sizes: no sizes given", hint="e.g. --sizes 4K,1M,64M")
    out = set()
    for item in items:
        n = parse_size(item, "--sizes", minimum=1)
        if n > MAX_BENCH_SIZE:
            raise UsageError(
                f"--sizes: {item.strip()} is above the {format_size(MAX_BENCH_SIZE)} limit "
                "for one transfer",
                hint="e.g. --sizes 4K,1M,64M",
            )
        out.add(-(-n // 4) * 4)
    return tuple(sorted(out))


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
                f"{format_size(n)} skipped: above the device's free memory "
                f"({format_size(room)} usable)"
            )
        elif max_size and n > max_size:
            notes.append(
                f"{format_size(n)} skipped: above the device's largest buffer "
                f"({format_size(max_size)})"
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
        f"{format_size(CACHE_THRESHOLD)} in its cache: after the first load, later loads "
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
