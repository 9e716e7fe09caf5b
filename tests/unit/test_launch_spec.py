from __future__ import annotations

from pathlib import Path

import pytest

from sdrpc_build.errors import HostError, UsageError
from sdrpc_build.launch.spec import (
    ServerSpec,
    backend_from_devices,
    build_argv,
    build_env,
    check_host,
    client_host,
    is_loopback,
    valid_name,
    visible_devices_env,
)

BIN = Path("/opt/rpc/ggml-rpc-server")


def test_argv_minimal() -> None:
    spec = ServerSpec(name="a", binary=BIN)
    assert build_argv(spec) == [str(BIN), "-H", "127.0.0.1", "-p", "50052"]


def test_argv_everything_with_stdbuf_prefix() -> None:
    spec = ServerSpec(
        name="a",
        binary=BIN,
        host="0.0.0.0",
        port=50053,
        devices=("Vulkan1", "Vulkan2"),
        threads=4,
        cache_dir=Path("/c/a"),
    )
    assert build_argv(spec, ["stdbuf", "-oL"]) == [
        "stdbuf",
        "-oL",
        str(BIN),
        "-H",
        "0.0.0.0",
        "-p",
        "50053",
        "-d",
        "Vulkan1,Vulkan2",
        "-t",
        "4",
        "-c",
    ]


def test_env_cache_visible_devices_and_user_env_last() -> None:
    spec = ServerSpec(
        name="a",
        binary=BIN,
        cache_dir=Path("/c/a"),
        visible_devices="0",
        backend="cuda",
        env=(("CUDA_VISIBLE_DEVICES", "1"), ("X", "y")),
    )
    env = build_env(spec, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "LLAMA_CACHE": "/c/a", "CUDA_VISIBLE_DEVICES": "1", "X": "y"}
    assert spec.cache_files_dir == Path("/c/a/rpc")


@pytest.mark.parametrize(
    ("backend", "value", "expected"),
    [
        ("cuda", "0,1", ("CUDA_VISIBLE_DEVICES", "0,1")),
        ("HIP", "1", ("HIP_VISIBLE_DEVICES", "1")),
        ("sycl", "0", ("ONEAPI_DEVICE_SELECTOR", "level_zero:0")),
        ("sycl", "opencl:1", ("ONEAPI_DEVICE_SELECTOR", "opencl:1")),
        ("vulkan", "2", ("GGML_VK_VISIBLE_DEVICES", "2")),
        ("musa", "0", ("MUSA_VISIBLE_DEVICES", "0")),
    ],
)
def test_visible_devices_variable(backend: str, value: str, expected: tuple[str, str]) -> None:
    assert visible_devices_env(backend, value) == expected


@pytest.mark.parametrize("backend", ["cpu", "metal", None])
def test_visible_devices_without_variable_is_a_usage_error(backend: str | None) -> None:
    with pytest.raises(UsageError, match="--visible-devices"):
        visible_devices_env(backend, "0")


def test_backend_guess_prefers_gpu() -> None:
    assert backend_from_devices(["CPU", "CUDA0"]) == "cuda"
    assert backend_from_devices(["Vulkan0", "Vulkan1"]) == "vulkan"
    assert backend_from_devices(["ROCm0"]) == "hip"
    assert backend_from_devices(["CPU"]) == "cpu"
    assert backend_from_devices(["Mystery0"]) is None


def test_host_literal_resolved_and_refused() -> None:
    assert check_host("127.0.0.1") == ("127.0.0.1", None)
    addr, note = check_host("localhost", lambda h: "127.0.0.1")
    assert addr == "127.0.0.1"
    assert note is not None
    assert "localhost" in note
    with pytest.raises(HostError, match="IPv6"):
        check_host("::1", lambda h: "127.0.0.1")
    with pytest.raises(HostError, match="does not resolve"):
        check_host("nowhere.invalid", lambda h: None)
    with pytest.raises(HostError, match="not an IPv4"):
        check_host("box")


def test_loopback_and_client_host() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.10")
    assert client_host("0.0.0.0") == "127.0.0.1"
    assert client_host("192.168.1.10") == "192.168.1.10"


def test_names() -> None:
    assert valid_name("cuda-0")
    assert valid_name("vulkan1.b_2")
    assert not valid_name("../x")
    assert not valid_name("a b")
    assert not valid_name("")
