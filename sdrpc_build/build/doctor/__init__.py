"""``sdrpc doctor``: which backends can this machine build, and what is missing.

Every look at the machine goes through :class:`Probes` (``which``, ``run``,
``read_text``, ``is_file``, ``disk_free``), so :func:`diagnose` is tested with
fakes and never starts a process in unit tests. :func:`system_probes` gives the
real ones. Each missing tool comes with the install command for the platform.

``probes`` (how the machine is looked at, real and fake) -> ``checks`` (one
:class:`Check` per machine-wide tool, with ``versions`` parsing output and
``hints`` giving install commands) and ``requires`` (a recipe's ``[[requires]]``
looked up as CMake does) -> ``preflight`` (the verdict per backend, shared with
sdrpc-build: :func:`require_buildable`) -> ``report`` (:func:`diagnose`).
``results`` holds the result types.
"""

from __future__ import annotations

from sdrpc_build.build.doctor.checks import MIN_DISK_BYTES
from sdrpc_build.build.doctor.preflight import blocked_error, require_buildable
from sdrpc_build.build.doctor.probes import Probes, system_probes
from sdrpc_build.build.doctor.report import diagnose
from sdrpc_build.build.doctor.requires import check_requirement
from sdrpc_build.build.doctor.results import BackendReport, Check, DoctorReport
from sdrpc_build.build.doctor.versions import parse_vulkan_header_version

__all__ = [
    "MIN_DISK_BYTES",
    "BackendReport",
    "Check",
    "DoctorReport",
    "Probes",
    "blocked_error",
    "check_requirement",
    "diagnose",
    "parse_vulkan_header_version",
    "require_buildable",
    "system_probes",
]
