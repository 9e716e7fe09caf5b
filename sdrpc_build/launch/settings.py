"""Checked settings, shared by the command line and ``servers.toml``: one validator each.

Each validator takes the raw value (text from the command line, or what TOML gave: int, float
or str) and the name to report (``--ready-timeout`` on the command line, ``'ready-timeout'`` in
servers.toml), and returns the checked value or raises :class:`SettingError` (a usage error,
exit 2; servers.toml turns it into its own exit code). Numbers in text are plain ASCII:
``5²``, ``٥``, ``1_000``, ``nan`` and ``inf`` are refused, and so are absurdly long ones.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

from sdrpc_build.errors import SettingError
from sdrpc_build.units import MAX_SIZE, parse_size

__all__ = [
    "MAX_FAILURES",
    "MAX_SECONDS",
    "MAX_SIZE",
    "MAX_THREADS",
    "SettingError",
    "env_pair",
    "failure_window",
    "max_failures",
    "parse_size",
    "port",
    "ready_timeout",
    "stop_timeout",
    "threads",
]

MAX_SECONDS = 86400.0  # one day: any timeout or window longer than that is a typo
MAX_FAILURES = 1000
MAX_THREADS = 4096
_DIGITS = 30  # more digits than any valid value has: refuse before converting
_INT = re.compile(rf"[+-]?[0-9]{{1,{_DIGITS}}}", re.ASCII)
_FLOAT = re.compile(
    rf"[+-]?(?:[0-9]{{1,{_DIGITS}}}(?:\.[0-9]{{0,{_DIGITS}}})?|\.[0-9]{{1,{_DIGITS}}})"
    r"(?:[eE][+-]?[0-9]{1,3})?",
    re.ASCII,
)


def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(v: object, integer: bool) -> Optional[Union[int, float]]:
    """The number in ``v``, or None when it is not one (bools, NaN and infinities are not)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) and not integer else None
    if not isinstance(v, str):
        return None
    text = v.strip()
    if _INT.fullmatch(text):
        return int(text)
    if not integer and _FLOAT.fullmatch(text):
        f = float(text)
        return f if math.isfinite(f) else None
    return None


def _ranged(
    v: object, name: str, lo: float, hi: float, *, integer: bool, above: bool, hint: str
) -> Union[int, float]:
    n = _number(v, integer)
    if n is None or n > hi or (n <= lo if above else n < lo):
        what = "a whole number" if integer else "a number of seconds"
        low = f"above {lo:g}" if above else f"from {lo:g}"
        raise SettingError(f"{name} must be {what} {low} to {hi:g}, not {_show(v)}", hint=hint)
    return int(n) if integer else float(n)


def ready_timeout(v: object, name: str) -> float:
    """Seconds a start may take before it counts as failed: above 0, at most a day."""
    return float(
        _ranged(
            v,
            name,
            0,
            MAX_SECONDS,
            integer=False,
            above=True,
            hint="a plain number of seconds, e.g. 60 (the default)",
        )
    )


def stop_timeout(v: object, name: str) -> float:
    """Seconds between SIGTERM and SIGKILL: 0 (SIGKILL at once) to a day."""
    return float(
        _ranged(
            v,
            name,
            0,
            MAX_SECONDS,
            integer=False,
            above=False,
            hint="a plain number of seconds, e.g. 5 (the default); 0 sends SIGKILL at once",
        )
    )


def failure_window(v: object, name: str) -> float:
    """Seconds in which ``max-failures`` failures make a server FATAL: above 0, at most a day."""
    return float(
        _ranged(
            v,
            name,
            0,
            MAX_SECONDS,
            integer=False,
            above=True,
            hint="a plain number of seconds, e.g. 60 (the default)",
        )
    )


def max_failures(v: object, name: str) -> int:
    """Failures within the window that make a server FATAL: 1 to 1000."""
    return int(
        _ranged(
            v,
            name,
            1,
            MAX_FAILURES,
            integer=True,
            above=False,
            hint="e.g. 5 (the default); 1 gives up at the first failure",
        )
    )


def port(v: object, name: str) -> int:
    """A TCP port; 0 asks for a free one."""
    return int(
        _ranged(
            v, name, 0, 65535, integer=True, above=False, hint="use 1-65535, or 0 for a free one"
        )
    )


def threads(v: object, name: str) -> int:
    """rpc-server's CPU threads."""
    return int(
        _ranged(
            v,
            name,
            1,
            MAX_THREADS,
            integer=True,
            above=False,
            hint="e.g. the number of physical cores",
        )
    )


def env_pair(key: str, value: str, name: str) -> tuple[str, str]:
    """One extra environment variable: a key without ``=`` or NUL, a value without NUL."""
    hint = "e.g. GGML_RPC_DEBUG=1 (names are letters, digits and '_')"
    if not key or "=" in key or "\0" in key:
        raise SettingError(f"{name}: invalid environment variable name {_show(key)}", hint=hint)
    if "\0" in value:
        raise SettingError(f"{name}: the value of {key} contains a NUL character", hint="remove it")
    return key, value
