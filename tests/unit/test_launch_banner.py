from __future__ import annotations

from sdrpc_build.launch.banner import (
    BannerDevice,
    BannerParser,
    classify_failure,
    parse_device_list,
)

# captured from ggml-rpc-server (llama-cpp-python 0.3.35 tree), run under stdbuf -oL
BANNER = """Starting RPC server v5.0.0
  endpoint       : 127.0.0.1:51234
  local cache    : /root/.cache/llama.cpp/rpc/
Devices:
  CPU: AMD EPYC (24105 MiB, 24105 MiB free)
  transport      : TCP
"""


def test_banner_fields() -> None:
    p = BannerParser()
    kinds = [p.feed(line) for line in BANNER.splitlines()]
    assert kinds == ["version", "endpoint", "cache", "devices", "device", "transport"]
    b = p.banner
    assert b.version == (5, 0, 0)
    assert b.version_str == "5.0.0"
    assert b.endpoint == "127.0.0.1:51234"
    assert b.cache == "/root/.cache/llama.cpp/rpc/"
    assert b.devices == (BannerDevice("CPU", "AMD EPYC", 24105, 24105),)
    assert b.complete


def test_banner_multi_gpu_pty_line_endings_and_restart_reset() -> None:
    p = BannerParser()
    for line in [
        "Starting RPC server v3.0.0\r\n",
        "Devices:\r\n",
        "  Vulkan0: NVIDIA GeForce RTX 3090 (24576 MiB, 23000 MiB free)\r\n",
        "  Vulkan1: AMD Radeon (Mesa: RADV) (16368 MiB, 16000 MiB free)\r\n",
        "  local cache    : n/a\r\n",
    ]:
        p.feed(line)
    assert [d.name for d in p.banner.devices] == ["Vulkan0", "Vulkan1"]
    assert p.banner.devices[1].description == "AMD Radeon (Mesa: RADV)"
    assert p.banner.cache == "n/a"
    assert not p.banner.complete  # v3 has no transport line
    assert p.feed("Starting RPC server v3.0.0") == "version"
    assert p.banner.devices == ()


def test_client_lines() -> None:
    p = BannerParser()
    assert p.feed("Accepted client connection\n") == "client-connected"
    assert p.feed("Client connection closed") == "client-closed"
    assert p.feed("something else") == "other"


def test_device_listing_of_unknown_device() -> None:
    out = (
        "error: unknown device: sdrpc-list-devices\navailable devices:\n"
        "  CUDA0: NVIDIA A100 (81920 MiB, 80000 MiB free)\n"
        "  CPU: AMD EPYC (24105 MiB, 24105 MiB free)\nNo devices found\n"
    )
    assert [d.name for d in parse_device_list(out)] == ["CUDA0", "CPU"]


def test_classify_failures() -> None:
    assert classify_failure(["error: unknown argument: --bogus", "Usage: x"]) == (
        True,
        "unknown argument: --bogus",
    )
    assert classify_failure(["error: unknown device: Foo", "available devices:"]) == (
        True,
        "unknown device: Foo",
    )
    permanent, reason = classify_failure(
        ["Starting RPC server v5.0.0", "Failed to create server socket"]
    )
    assert not permanent
    assert reason is not None
    assert "bind" in reason
    assert classify_failure(["Starting RPC server v5.0.0"]) == (False, None)
