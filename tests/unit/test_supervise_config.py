from __future__ import annotations

from pathlib import Path

import pytest

from sdrpc_build.supervise.config import load_config, parse_config
from sdrpc_build.supervise.errors import LaunchConfigError

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
    cuda, vulkan = load_config(f)
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
    (s,) = parse_config({"server": [{"binary": "bin/rpc", "cache": "c"}]}, "f.toml", tmp_path)
    assert s.binary == tmp_path / "bin/rpc"
    assert s.cache_path == tmp_path / "c"
    assert not s.cache_per_server


def test_lists_and_numbers_for_devices() -> None:
    (s,) = parse_config(
        {"server": [{"device": ["Vulkan1", "Vulkan2"], "visible-devices": 1}]}, "f", Path()
    )
    assert s.devices == ("Vulkan1", "Vulkan2")
    assert s.visible_devices == "1"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"devcie": "x"}, "unknown key 'devcie' (did you mean 'device'?)"),
        ({"port": "50052"}, "'port' must be an integer"),
        ({"port": 70000}, "'port' must be an integer from 0 to 65535"),
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
