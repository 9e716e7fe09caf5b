"""What one sdrpc-bench run is asked to do: :class:`BenchOptions`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sdrpc_build.bench.maths import DEFAULT_SIZES

__all__ = ["DEADLINE_FACTOR", "BenchOptions"]

DEADLINE_FACTOR = 60  # each server gets at most this many --timeout in all


@dataclass(frozen=True)
class BenchOptions:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    timeout: float = 10.0
    verify: bool = True
    devices: Optional[tuple[int, ...]] = None  # None: every device the server reports
    repeat_budget: int = 256 << 20  # bytes per size and direction (see repeats_for)
    model_bytes: Optional[int] = None
    deadline_s: Optional[float] = None  # per server; None: DEADLINE_FACTOR x timeout

    @property
    def server_deadline_s(self) -> float:
        return self.deadline_s if self.deadline_s is not None else DEADLINE_FACTOR * self.timeout
