""":func:`diagnose`: every machine-wide check, and the preflight verdict per backend."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from sdrpc_build.build.doctor.checks import Doctor
from sdrpc_build.build.doctor.preflight import ADVISORY, REQUIRED, verdict
from sdrpc_build.build.doctor.probes import Probes
from sdrpc_build.build.doctor.results import DoctorReport
from sdrpc_build.build.recipes import Recipe

__all__ = ["diagnose"]


def diagnose(
    recipes: Iterable[Recipe],
    probes: Probes,
    cache_root: Path,
    backends: Optional[Sequence[str]] = None,
) -> DoctorReport:
    """Check the machine for every recipe (or only ``backends``); free disk at ``cache_root``.

    The per-backend verdict is :func:`~sdrpc_build.build.doctor.preflight.verdict`, the
    one sdrpc-build runs before configure.
    """
    doc = Doctor(probes, cache_root)
    for name in (*REQUIRED, *ADVISORY):
        doc.get(name)
    reports = [
        verdict(doc, recipe) for recipe in recipes if backends is None or recipe.name in backends
    ]
    return DoctorReport(probes.platform, tuple(doc.cache.values()), tuple(reports))
