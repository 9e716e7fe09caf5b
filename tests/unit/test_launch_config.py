from __future__ import annotations

import math
from pathlib import Path

import pytest

from sdrpc_build.errors import LaunchConfigError
from sdrpc_build.launch import settings
from sdrpc_build.launch.config import (
    SUPERVISE_KEYS,
    Supervision,
    load_config,
    parse_config,
    supervision_policy,
)
from sdrpc_build.launch.settings import Policy, SettingError

SEED = """
# the seed guide's first machine: one CUDA server and one Vulkan server
[[server]]
name = "cuda"
backend = "cuda"
host = "0.0.0.0"
port = 50052
visible-devices = "0"

[[server]]
name = "vulkan"
backend = "vulkan"
host = "0.0.0.0"
port = 50053
device = "Vulkan1,Vulkan2"
cache-max-size = "20G"
env = { GGML_RPC_DEBUG = 1 }
restart = "always"
"""


def test_seed_machine(tmp_path: Path) -> None:
    f = tmp_path / "servers.toml"
    f.write_text(SEED)
    cuda, vulkan = load_config(f).servers
    assert (cuda.name, cuda.backend, cuda.port, cuda.visible_devices) == (
        "cuda",
        "cuda",
        50052,
        "0",
    )
    assert cuda.host == "0.0.0.0"
    assert not cuda.cache
    assert vulkan.devices == ("Vulkan1", "Vulkan2")
    assert vulkan.cache
    assert vulkan.cache_max_size == 20 * 1024**3
    assert vulkan.env == (("GGML_RPC_DEBUG", "1"),)
    assert vulkan.restart == "always"
    assert "#2" in vulkan.origin


def test_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (s,) = parse_config(
        {"server": [{"binary": "bin/rpc", "cache": "c"}]}, "f.toml", tmp_path
    ).servers
    assert s.binary == tmp_path / "bin/rpc"
    assert s.cache_path == tmp_path / "c"
    assert not s.cache_per_server


def test_lists_and_numbers_for_devices() -> None:
    (s,) = parse_config(
        {"server": [{"device": ["Vulkan1", "Vulkan2"], "visible-devices": 1}]}, "f", Path()
    ).servers
    assert s.devices == ("Vulkan1", "Vulkan2")
    assert s.visible_devices == "1"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"devcie": "x"}, "unknown key 'devcie' (did you mean 'device'?)"),
        ({"port": "50052"}, "'port' must be a number, not the string"),
        ({"port": 70000}, "'port' must be a whole number from 0 to 65535"),
        ({"port": 10**400}, "'port' must be a whole number from 0 to 65535, not 1000"),
        ({"port": 5.0}, "'port' must be a whole number"),
        ({"threads": 5000}, "'threads' must be a whole number from 1 to 4096"),
        ({"cache-max-size": "9" * 400 + "G"}, "'cache-max-size': invalid size"),
        ({"cache-max-size": 10**400}, "'cache-max-size': size 1000"),
        ({"cache-max-size": "2²G"}, "'cache-max-size': invalid size"),
        ({"env": {"A=B": "1"}}, "'env': invalid environment variable name 'A=B'"),
        ({"env": {"": "1"}}, "'env': invalid environment variable name ''"),
        ({"env": {"A": "x\0y"}}, "'env': the value of A contains a NUL character"),
        ({"env": {"A\0": "x"}}, "'env': invalid environment variable name"),
        ({"host": "127.0.0.1\0"}, "'host' contains a NUL character"),
        ({"cache": "dir\0"}, "'cache' contains a NUL character"),
        ({"device": ["CPU", "x\0"]}, "'device' contains a NUL character"),
        ({"threads": 0}, "'threads'"),
        ({"restart": "alway"}, "did you mean 'always'"),
        ({"cache-max-size": "lots"}, "invalid size"),
        ({"name": "a b"}, "name 'a b'"),
        ({"env": ["A=1"]}, "'env' must be a table"),
        ({"binary": "x", "build": "y"}, "either 'binary' or 'build'"),
    ],
)
def test_invalid_tables(table: dict[str, object], message: str) -> None:
    with pytest.raises(LaunchConfigError, match="#1") as info:
        parse_config({"server": [table]}, "servers.toml", Path())
    assert message in info.value.message
    assert info.value.exit_code == 21


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(LaunchConfigError, match="did you mean 'server'"):
        parse_config({"servers": []}, "f", tmp_path)
    with pytest.raises(LaunchConfigError, match="no \\[\\[server\\]\\] tables"):
        parse_config({}, "f", tmp_path)
    with pytest.raises(LaunchConfigError, match="used twice"):
        parse_config({"server": [{"name": "a"}, {"name": "a"}]}, "f", tmp_path)
    with pytest.raises(LaunchConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[server]\n")
    with pytest.raises(LaunchConfigError, match="invalid TOML"):
        load_config(bad)


def test_supervise_table(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "supervise": {"ready-timeout": 2.5, "stop-timeout": 0, "max-failures": 3},
            "server": [{}],
        },
        "f",
        tmp_path,
    )
    assert cfg.supervise == Supervision(ready_timeout=2.5, stop_timeout=0.0, max_failures=3)
    assert parse_config({"server": [{}]}, "f", tmp_path).supervise == Supervision()


def test_supervise_keys_are_the_declared_settings() -> None:
    assert tuple(s.key for s in settings.SUPERVISE) == SUPERVISE_KEYS
    assert set(SUPERVISE_KEYS) == {
        "ready-timeout",
        "stop-timeout",
        "max-failures",
        "failure-window",
    }
    assert {f.replace("_", "-") for f in Supervision.__dataclass_fields__} == set(SUPERVISE_KEYS)


def test_the_command_line_wins_over_the_file_which_wins_over_the_defaults() -> None:
    file = Supervision(ready_timeout=2.5, max_failures=3)
    p = supervision_policy(file, {"max_failures": "7", "stop_timeout": None})
    assert (p.ready_timeout, p.max_failures) == (2.5, 7)
    assert (p.stop_timeout, p.failure_window) == (Policy().stop_timeout, Policy().failure_window)
    assert supervision_policy(Supervision(), {}) == Policy()
    with pytest.raises(SettingError, match="^--max-failures must be"):
        supervision_policy(file, {"max_failures": "0"})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"failure-window": -5}, "'failure-window' must be a number of seconds above 0"),
        ({"failure-window": math.nan}, "'failure-window' must be a number of seconds"),
        ({"ready-timeout": -1}, "'ready-timeout' must be a number of seconds above 0"),
        ({"ready-timeout": math.inf}, "'ready-timeout'"),
        ({"ready-timeout": 0}, "'ready-timeout'"),
        ({"ready-timeout": "60"}, "'ready-timeout' must be a number, not the string"),
        ({"stop-timeout": -1}, "'stop-timeout' must be a number of seconds from 0"),
        ({"max-failures": 0}, "'max-failures' must be a whole number from 1 to 1000"),
        ({"max-failures": -3}, "'max-failures'"),
        ({"max-failures": 2.5}, "'max-failures'"),
        ({"max-failures": True}, "'max-failures'"),
        ({"retries": 1}, "unknown key 'retries'"),
    ],
)
def test_invalid_supervise_table(table: dict[str, object], message: str) -> None:
    with pytest.raises(LaunchConfigError, match=r"\[supervise\]") as info:
        parse_config({"supervise": table, "server": [{}]}, "servers.toml", Path())
    assert message in info.value.message
    assert info.value.hint
    assert info.value.exit_code == 21


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[[server]]\nname = "caf\xe9"\n')
    with pytest.raises(LaunchConfigError, match="is not UTF-8 text") as info:
        load_config(latin1)
    assert info.value.hint
    with pytest.raises(LaunchConfigError, match="cannot read") as info:
        load_config(tmp_path)  # a directory
    long = Path("/tmp/" + "a" * 100_000)
    with pytest.raises(LaunchConfigError, match="cannot read") as info:
        load_config(long)
    assert len(info.value.message) < 400  # the path is shortened
