"""What doctor finds: one :class:`Check` per tool, one :class:`BackendReport` per recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BackendReport", "Check", "DoctorReport", "Status"]

Status = Literal["ok", "missing", "too-old", "warning"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str  # version, path, or what is wrong
    hint: str = ""  # what to run when status is not ok
    path: str = ""  # where it was found

    @property
    def problem(self) -> str:
        """``name detail``: what blocks a build, for one line."""
        return f"{self.name} {self.detail}"

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "warning")

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "hint": self.hint,
            "path": self.path,
        }


@dataclass(frozen=True)
class BackendReport:
    backend: str
    supported: bool  # the recipe builds on this platform
    buildable: bool
    missing: tuple[str, ...]  # required checks that failed
    notes: tuple[str, ...]  # optional checks that failed (e.g. no GPU driver)
    blockers: tuple[Check, ...] = ()  # the failed checks behind ``missing``, with hints
    #: the sdrpc-build option that fetches every blocker (e.g. "--vulkan-headers auto"), or ""
    buildable_with: str = ""

    @property
    def problem(self) -> str:
        """Why it cannot be built here, on one line ("" when it can)."""
        return "; ".join(c.problem for c in self.blockers)

    @property
    def hint(self) -> str:
        """What to install, each command once (named by what it provides when several)."""
        by_hint: dict[str, list[str]] = {}
        for c in self.blockers:
            if c.hint:
                by_hint.setdefault(c.hint, []).append(c.name)
        if len(by_hint) == 1:
            return next(iter(by_hint))
        return "; ".join(f"{', '.join(names)}: {hint}" for hint, names in by_hint.items())

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "supported": self.supported,
            "buildable": self.buildable,
            "buildable_with": self.buildable_with or None,
            "missing": list(self.missing),
            "notes": list(self.notes),
            "problem": self.problem,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class DoctorReport:
    platform: str
    checks: tuple[Check, ...]
    backends: tuple[BackendReport, ...]

    @property
    def buildable(self) -> list[str]:
        return [b.backend for b in self.backends if b.buildable]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def as_dict(self) -> dict[str, object]:
        return {
            "platform": self.platform,
            "buildable": self.buildable,
            "buildable_with": {
                b.backend: b.buildable_with for b in self.backends if b.buildable_with
            },
            "checks": [c.as_dict() for c in self.checks],
            "backends": [b.as_dict() for b in self.backends],
        }
