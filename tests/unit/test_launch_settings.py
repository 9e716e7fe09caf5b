"""One validator per setting, for the command line (text) and servers.toml (numbers)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from sdrpc_build.launch import settings
from sdrpc_build.launch.settings import SUPERVISE, Policy, SettingError, env_pair, parse_size


@pytest.mark.parametrize(
    ("check", "raw", "value"),
    [
        (settings.ready_timeout, "60", 60.0),
        (settings.ready_timeout, " 0.5 ", 0.5),
        (settings.ready_timeout, 2, 2.0),
        (settings.ready_timeout, "1e3", 1000.0),
        (settings.stop_timeout, "0", 0.0),
        (settings.stop_timeout, 7.5, 7.5),
        (settings.failure_window, "86400", 86400.0),
        (settings.max_failures, "1", 1),
        (settings.max_failures, 1000, 1000),
        (settings.port, "0", 0),
        (settings.port, "65535", 65535),
        (settings.threads, "+4", 4),
    ],
)
def test_valid(check: Callable[[object, str], object], raw: object, value: object) -> None:
    assert check(raw, "--x") == value


@pytest.mark.parametrize(
    ("check", "raw"),
    [
        (settings.ready_timeout, "-1"),
        (settings.ready_timeout, "0"),
        (settings.ready_timeout, "nan"),
        (settings.ready_timeout, "inf"),
        (settings.ready_timeout, "1e999"),
        (settings.ready_timeout, math.nan),
        (settings.ready_timeout, math.inf),
        (settings.ready_timeout, "86401"),
        (settings.stop_timeout, "-1"),
        (settings.stop_timeout, "-0.001"),
        (settings.failure_window, "-5"),
        (settings.failure_window, "nan"),
        (settings.failure_window, "0"),
        (settings.max_failures, "0"),
        (settings.max_failures, "-3"),
        (settings.max_failures, "2.5"),
        (settings.max_failures, 2.0),
        (settings.max_failures, True),
        (settings.port, "5²"),  # str.isdigit() says yes, int() says no
        (settings.port, "٥"),  # int() would take Arabic-Indic digits: plain ASCII only
        (settings.port, "1_000"),
        (settings.port, "9" * 400),
        (settings.port, 10**400),
        (settings.port, "-1"),
        (settings.port, "65536"),
        (settings.port, ""),
        (settings.threads, "²"),
        (settings.threads, "0"),
        (settings.threads, "99999999999999999999999999999999999999"),
        (settings.threads, None),
    ],
)
def test_refused_with_name_and_hint(check: Callable[[object, str], object], raw: object) -> None:
    with pytest.raises(SettingError) as info:
        check(raw, "--flag")
    assert info.value.message.startswith("--flag must be ")
    assert len(info.value.message) < 120  # a 400-digit value is shortened
    assert info.value.hint
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "n"),
    [("2K", 2048), ("1.5GiB", 3 << 29), ("1E", 1 << 60), (0, 0), ("7", 7)],
)
def test_sizes(text: str | int, n: int) -> None:
    assert parse_size(text, "--cache-max-size") == n


@pytest.mark.parametrize(
    "text", ["9" * 400, "9" * 400 + "G", "2E", 10**400, -1, "5²G", "٥G", "1e3G", True, 1.5]
)
def test_sizes_refused(text: object) -> None:
    with pytest.raises(SettingError, match="^--cache-max-size: ") as info:
        parse_size(text, "--cache-max-size")
    assert len(info.value.message) < 120
    assert info.value.hint


def test_env_pairs() -> None:
    assert env_pair("A", "b=c", "--env") == ("A", "b=c")
    for key, value in [("A=B", "1"), ("", "1"), ("A\0", "1"), ("A", "x\0")]:
        with pytest.raises(SettingError, match="^--env: "):
            env_pair(key, value, "--env")


def test_each_supervision_setting_is_declared_once() -> None:
    """Policy's defaults, the flag, its help and the validator's hint come from one Setting."""
    assert [s.flag for s in SUPERVISE] == [
        "--ready-timeout",
        "--stop-timeout",
        "--max-failures",
        "--failure-window",
    ]
    for s in SUPERVISE:
        assert getattr(Policy(), s.field) == s.default
        assert f"(default {s.default:g};" in s.flag_help
        assert s.check(s.default, s.flag) == s.default
        with pytest.raises(SettingError) as info:
            s.check(s.hi * 2, s.flag)
        assert f"e.g. {s.default:g} (the default)" in str(info.value.hint)
    # the shapes (values from the declarations: a new default is one edit, in settings.py)
    ready, fails = settings.READY_TIMEOUT, settings.MAX_FAILURES
    assert f"(default {ready.default:g}; above 0, at most {ready.hi:g})" in ready.flag_help
    assert f"(default {fails.default}; 1-{fails.hi}; 1 gives up" in fails.flag_help
