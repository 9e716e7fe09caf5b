"""One size rule for every command: K/M/G/T (and KiB...) binary, KB/MB/GB/TB decimal."""

from __future__ import annotations

import pytest

from sdrpc_build.errors import SettingError, UsageError
from sdrpc_build.units import GIB, KIB, MAX_SIZE, MIB, TIB, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("1G", GIB),
        ("1g", GIB),
        ("1Gi", GIB),
        ("1GiB", GIB),
        ("1GB", 10**9),
        ("1gb", 10**9),
        ("4kB", 4000),
        ("4K", 4 * KIB),
        ("2T", 2 * TIB),
        ("2TB", 2 * 10**12),
        ("1.5M", 3 * MIB // 2),
        (".5K", 512),
        (" 512 MiB ", 512 * MIB),
        ("7", 7),
        ("7B", 7),
        ("1E", MAX_SIZE),
        (123, 123),
        (0, 0),
        ("0", 0),
    ],
)
def test_one_rule(text: object, n: int) -> None:
    assert parse_size(text, "--x") == n


def test_fractions_round_to_the_nearest_byte() -> None:
    assert parse_size("7.2G") == round(7.2 * GIB)
    assert parse_size("0.4") == 0 and parse_size("1.6") == 2


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "G",
        "iB",
        "5i",
        "5 i",
        "1e3",
        "1_000",
        "nan",
        "inf",
        "-1",
        "5\u00b2",
        "\u0665G",
        "1.2.3M",
        "9" * 21,
        "9" * 400 + "G",
        "2E",
        10**400,
        -1,
        True,
        1.5,
        None,
    ],
)
def test_refused_with_the_name_and_a_hint(raw: object) -> None:
    with pytest.raises(SettingError) as info:
        parse_size(raw, "--cache-max-size")
    e = info.value
    assert isinstance(e, UsageError) and e.exit_code == 2
    assert e.message.startswith("--cache-max-size: ") and len(e.message) < 120
    assert e.hint and "1024" in e.hint and "1000" in e.hint


def test_minimum() -> None:
    assert parse_size("1", minimum=1) == 1
    for raw in ("0", "0.1", 0):
        with pytest.raises(SettingError, match="out of range"):
            parse_size(raw, "--model-size", minimum=1)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (12, "12 B"),
        (4096, "4 KiB"),
        (1536, "1.5 KiB"),
        (64 * MIB, "64 MiB"),
        (round(7.2 * GIB), "7.2 GiB"),
        (3 * GIB, "3 GiB"),
        (2 * TIB, "2 TiB"),
        (MAX_SIZE, "1 EiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text
    assert parse_size(text.replace(" ", "")) == n or "." in text
