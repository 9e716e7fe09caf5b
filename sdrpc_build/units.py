"""Sizes: the one rule for reading and writing byte counts, for every command.

``K``, ``M``, ``G``, ``T``, ``P``, ``E`` (with or without ``i``/``iB``: ``G``, ``Gi``,
``GiB``) are powers of 1024; ``KB``, ``MB``, ``GB``, ``TB``, ``PB``, ``EB`` are powers
of 1000 (``ls -h``/GNU conventions; case does not matter). A plain number is bytes.
Numbers are plain ASCII digits with an optional fraction (``1.5G``, ``.5K``):
``5²``, ``٥``, ``1_000``, ``1e3``, ``nan`` and absurdly long ones are refused before
any conversion. Written sizes use binary units, as ``ls -h`` would (:func:`format_size`).
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal

from sdrpc_build.errors import SettingError

__all__ = ["GIB", "KIB", "MAX_SIZE", "MIB", "TIB", "format_size", "parse_size"]

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
MAX_SIZE = 1 << 60  # 1 EiB: anything bigger is a typo, whatever the option

_DIGITS = 20  # more digits than any valid size has: refuse before converting
_SIZE_RE = re.compile(
    rf"\s*([0-9]{{1,{_DIGITS}}}(?:\.[0-9]{{1,{_DIGITS}}})?|\.[0-9]{{1,{_DIGITS}}})"
    r"\s*([kmgtpe]?)(i?)(b?)\s*",
    re.ASCII | re.IGNORECASE,
)
_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SCALE = {f"{p.upper()}iB": 1 << (10 * n) for p, n in _POWER.items() if p}
_HINT = (
    "write a number with an optional unit, e.g. 512M, 7.2G, 64MiB "
    "(K/M/G/T and KiB... are 1024-based, KB/MB/GB/TB 1000-based)"
)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_size(value: object, name: str = "size", *, minimum: int = 0) -> int:
    """``"7.2G"``, ``"512MiB"``, ``"4kB"``, ``123`` -> bytes, from ``minimum`` to 1 EiB.

    ``value`` is text (a command-line value, a TOML string) or an int (a TOML
    number); ``name`` (the flag or key) starts every error message. Fractions of a
    byte are rounded to the nearest byte. Raises :class:`SettingError` (exit 2).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    else:
        m = _SIZE_RE.fullmatch(value) if isinstance(value, str) else None
        if m is None or (m.group(3) and not m.group(2)):  # "5i": a binary prefix of nothing
            raise SettingError(f"{name}: invalid size {_show(value)}", hint=_HINT)
        number, unit, binary, b = m.groups()
        base = 1000 if unit and b and not binary else 1024
        amount = Decimal(number) * base ** _POWER[unit.lower()]
    if amount < minimum or amount > MAX_SIZE:
        low = "one byte" if minimum == 1 else f"{minimum} bytes"
        raise SettingError(
            f"{name}: size {_show(value)} is out of range ({low} to 1 EiB)", hint=_HINT
        )
    return int(amount.to_integral_value(rounding=ROUND_HALF_EVEN))


def format_size(n: float) -> str:
    """Binary units, as ``ls -h`` would: ``12 B``, ``4 KiB``, ``7.2 GiB``, ``3 TiB``."""
    for unit in ("EiB", "PiB", "TiB", "GiB", "MiB", "KiB"):
        scale = _SCALE[unit]
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"
