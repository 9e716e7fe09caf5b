"""Every launch setting declared once: default, flag, servers.toml key, range, help.

The supervision settings are :class:`Setting` values (:data:`SUPERVISE`): ``sdrpc-launch``
makes its flags from them (``--KEY``), servers.toml's ``[supervise]`` table takes their keys,
and :class:`Policy` takes their defaults. The restart policy (backoff, failures, window) is
this module: changing it changes nothing else. Per-server defaults (host, port, restart) are
here too, for the command line, :class:`~sdrpc_build.launch.config.ServerOptions` and
:class:`~sdrpc_build.launch.spec.ServerSpec`.

Each validator takes the raw value (text from the command line, or what TOML gave: int, float
or str) and the name to report (``--ready-timeout`` on the command line, ``'ready-timeout'`` in
servers.toml), and returns the checked value or raises :class:`SettingError` (a usage error,
exit 2; servers.toml turns it into its own exit code). Numbers in text are plain ASCII:
``5²``, ``٥``, ``1_000``, ``nan`` and ``inf`` are refused, and so are absurdly long ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Generic, Literal, Optional, TypeVar, Union, cast

from sdrpc_build.errors import SettingError
from sdrpc_build.units import MAX_SIZE, parse_size

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_RESTART",
    "FAILURE_WINDOW",
    "MAX_FAILURES",
    "MAX_SECONDS",
    "MAX_SIZE",
    "MAX_THREADS",
    "READY_TIMEOUT",
    "RESTART_POLICIES",
    "STOP_TIMEOUT",
    "SUPERVISE",
    "Policy",
    "RestartPolicy",
    "Setting",
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

RestartPolicy = Literal["always", "on-failure", "never"]
RESTART_POLICIES: tuple[RestartPolicy, ...] = ("always", "on-failure", "never")

# -- per-server defaults -------------------------------------------------------------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50052
DEFAULT_RESTART: RestartPolicy = "on-failure"

MAX_SECONDS = 86400.0  # one day: any timeout or window longer than that is a typo
MAX_THREADS = 4096
_DIGITS = 30  # more digits than any valid value has: refuse before converting
_INT = re.compile(rf"[+-]?[0-9]{{1,{_DIGITS}}}", re.ASCII)
_FLOAT = re.compile(
    rf"[+-]?(?:[0-9]{{1,{_DIGITS}}}(?:\.[0-9]{{0,{_DIGITS}}})?|\.[0-9]{{1,{_DIGITS}}})"
    r"(?:[eE][+-]?[0-9]{1,3})?",
    re.ASCII,
)
N = TypeVar("N", int, float)


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


@dataclass(frozen=True)
class Setting(Generic[N]):
    """One supervision setting: ``[supervise]`` key, flag ``--KEY``, default, range, help."""

    key: str
    default: N
    lo: N
    hi: N
    above: bool  # ``lo`` itself is refused
    help: str  # what it means; the flag's help adds the default and the range
    note: str = ""  # a special value worth naming, e.g. "0 sends SIGKILL at once"
    metavar: str = "S"

    @property
    def integer(self) -> bool:
        return isinstance(self.default, int)

    @property
    def flag(self) -> str:
        return f"--{self.key}"

    @property
    def field(self) -> str:
        """The attribute name: on :class:`Policy`, the config's Supervision, argparse's args."""
        return self.key.replace("-", "_")

    @property
    def range(self) -> str:
        if self.integer:
            return f"{self.lo:g}-{self.hi:g}"
        return f"{'above' if self.above else 'from'} {self.lo:g}, at most {self.hi:g}"

    @property
    def flag_help(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return f"{self.help} (default {self.default:g}; {self.range}{note})"

    def check(self, v: object, name: str) -> N:
        """The checked value of ``v``; ``name`` is what the message calls it."""
        plain = "" if self.integer else "a plain number of seconds, "
        note = f"; {self.note}" if self.note else ""
        hint = f"{plain}e.g. {self.default:g} (the default){note}"
        value = _ranged(
            v, name, self.lo, self.hi, integer=self.integer, above=self.above, hint=hint
        )
        return cast(N, value)


# -- supervision: the restart policy and the timeouts ----------------------------------------
READY_TIMEOUT = Setting(
    "ready-timeout",
    60.0,
    0.0,
    MAX_SECONDS,
    above=True,
    help="seconds a start may take before it counts as failed",
)
STOP_TIMEOUT = Setting(
    "stop-timeout",
    5.0,
    0.0,
    MAX_SECONDS,
    above=False,
    help="seconds between SIGTERM and SIGKILL on stop",
    note="0 sends SIGKILL at once",
)
MAX_FAILURES = Setting(
    "max-failures",
    5,
    1,
    1000,
    above=False,
    help="failures within --failure-window that make a server FATAL",
    note="1 gives up at the first failure",
    metavar="N",
)
FAILURE_WINDOW = Setting(
    "failure-window",
    60.0,
    0.0,
    MAX_SECONDS,
    above=True,
    help="window for --max-failures in seconds",
)
#: every setting of ``[supervise]`` and of the "supervision" flags, in help order
SUPERVISE: tuple[Setting[int] | Setting[float], ...] = (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    MAX_FAILURES,
    FAILURE_WINDOW,
)


@dataclass(frozen=True)
class Policy:
    """Supervision knobs (seconds); defaults from the declarations above."""

    restart: RestartPolicy = DEFAULT_RESTART
    backoff_initial: float = 0.1  # first restart delay; doubles per failure in the window
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    max_failures: int = MAX_FAILURES.default
    failure_window: float = FAILURE_WINDOW.default
    ready_timeout: float = READY_TIMEOUT.default
    stop_timeout: float = STOP_TIMEOUT.default
    probe_interval: float = 0.1  # between readiness probes of a starting server


ready_timeout = READY_TIMEOUT.check
stop_timeout = STOP_TIMEOUT.check
max_failures = MAX_FAILURES.check
failure_window = FAILURE_WINDOW.check


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
