from __future__ import annotations

import json
import platform as pf
from collections.abc import Mapping
from pathlib import Path

import pytest

from sdrpc_build.build.toolchain import current_platform
from sdrpc_build.cli.launch_wiring import BUILDS
from sdrpc_build.errors import DeviceError, NoServerBinaryError, PortInUseError, UsageError
from sdrpc_build.launch.banner import BannerDevice
from sdrpc_build.launch.config import ServerOptions
from sdrpc_build.launch.resolve import Environment, resolve_build, resolve_servers

GPUS = (
    BannerDevice("CUDA0", "A", 100, 90),
    BannerDevice("CUDA1", "B", 100, 90),
    BannerDevice("CPU", "EPYC", 100, 90),
)


class World:
    def __init__(self, tmp: Path, devices: tuple[BannerDevice, ...] | None = GPUS) -> None:
        self.devices = devices
        self.listed: list[Mapping[str, str]] = []
        self.checked: list[tuple[str, int]] = []
        self.warnings: list[str] = []
        self.busy: set[int] = set()
        self.next_port = 40000
        self.env = Environment(
            env={"PATH": "/bin"},
            builds=BUILDS,
            artifacts_root=tmp / "artifacts",
            cache_root=tmp / "rc",
            resolve_host=lambda h: "127.0.0.1" if h == "localhost" else None,
            ensure_port_free=self.port_free,
            pick_free_port=self.pick,
            list_devices=self.list,
            warn=self.warnings.append,
        )

    def port_free(self, host: str, port: int) -> None:
        self.checked.append((host, port))
        if port in self.busy:
            raise PortInUseError(f"port {port} in use")

    def pick(self, host: str) -> int:
        self.next_port += 1
        return self.next_port

    def list(self, binary: Path, env: Mapping[str, str]) -> tuple[BannerDevice, ...] | None:
        self.listed.append(env)
        return self.devices


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    b = tmp_path / "ggml-rpc-server"
    b.write_text("#!/bin/sh\n")
    b.chmod(0o755)
    return b


def test_default_single_server(tmp_path: Path, binary: Path) -> None:
    w = World(tmp_path)
    (s,) = resolve_servers([ServerOptions(binary=binary)], w.env)
    assert (s.name, s.host, s.port, s.binary) == ("rpc-50052", "127.0.0.1", 50052, binary)
    assert w.checked == [("127.0.0.1", 50052)]
    assert w.listed == []  # no device work unless asked


def test_host_name_resolved_with_warning(tmp_path: Path, binary: Path) -> None:
    w = World(tmp_path)
    (s,) = resolve_servers([ServerOptions(binary=binary, host="localhost")], w.env)
    assert s.host == "127.0.0.1"
    assert "localhost" in w.warnings[0]


def test_unknown_device_lists_what_the_binary_offers(tmp_path: Path, binary: Path) -> None:
    w = World(tmp_path)
    with pytest.raises(DeviceError, match="unknown device 'Vulkan1'") as info:
        resolve_servers([ServerOptions(binary=binary, devices=("Vulkan1",))], w.env)
    assert "CUDA0, CUDA1, CPU" in info.value.message
    (s,) = resolve_servers([ServerOptions(binary=binary, devices=("CUDA1",))], w.env)
    assert s.devices == ("CUDA1",)


def test_only_cpu_offered_hint_names_the_visible_devices_variable(
    tmp_path: Path, binary: Path
) -> None:
    """A Vulkan binary whose lavapipe device ggml-vulkan hid offers only the CPU: the hint
    says which variable hides devices, not "names are case-sensitive"."""
    w = World(tmp_path, devices=(BannerDevice("CPU", "EPYC", 100, 90),))
    with pytest.raises(DeviceError, match="unknown device 'Vulkan1'; .* offers: CPU") as info:
        resolve_servers([ServerOptions(binary=binary, devices=("Vulkan1",))], w.env)
    hint = info.value.hint or ""
    assert "GGML_VK_VISIBLE_DEVICES" in hint and "--visible-devices" in hint, hint
    assert "lavapipe" in hint
    with pytest.raises(DeviceError) as info:  # CUDA: its own variable
        resolve_servers([ServerOptions(binary=binary, devices=("CUDA0",))], w.env)
    assert "CUDA_VISIBLE_DEVICES" in (info.value.hint or "")
    with pytest.raises(DeviceError) as info:  # a GPU is offered: a misspelt name, as before
        resolve_servers([ServerOptions(binary=binary, devices=("cuda0",))], World(tmp_path).env)
    assert "case-sensitive" in (info.value.hint or "")
    with pytest.raises(DeviceError) as info:  # no variable for the name: as before
        resolve_servers([ServerOptions(binary=binary, devices=("GPU7",))], w.env)
    assert "case-sensitive" in (info.value.hint or "")


def test_per_device_one_server_each_on_consecutive_ports(tmp_path: Path, binary: Path) -> None:
    w = World(tmp_path)
    specs = resolve_servers(
        [ServerOptions(binary=binary, port=50060, cache=True)], w.env, per_device=True
    )
    assert [(s.name, s.port, s.devices) for s in specs] == [
        ("cuda0", 50060, ("CUDA0",)),
        ("cuda1", 50061, ("CUDA1",)),
    ]  # CPU left out
    assert [s.cache_dir for s in specs] == [tmp_path / "rc" / "cuda0", tmp_path / "rc" / "cuda1"]


def test_port_zero_duplicates_and_busy(tmp_path: Path, binary: Path) -> None:
    w = World(tmp_path)
    specs = resolve_servers(
        [ServerOptions(binary=binary, port=0), ServerOptions(binary=binary, port=0)], w.env
    )
    assert [s.port for s in specs] == [40001, 40002]
    with pytest.raises(UsageError, match="port 5 is given to two servers"):
        resolve_servers(
            [ServerOptions(binary=binary, port=5), ServerOptions(binary=binary, port=5)], w.env
        )
    w.busy.add(7)
    with pytest.raises(PortInUseError):
        resolve_servers([ServerOptions(binary=binary, port=7)], w.env)


def test_visible_devices_backend_guessed_from_devices(tmp_path: Path, binary: Path) -> None:
    w = World(tmp_path)
    (s,) = resolve_servers([ServerOptions(binary=binary, visible_devices="1")], w.env)
    assert s.backend == "cuda"
    w = World(tmp_path, devices=(BannerDevice("CPU", "x", 1, 1),))
    with pytest.raises(UsageError, match="no meaning for the cpu backend"):
        resolve_servers([ServerOptions(binary=binary, visible_devices="1")], w.env)
    assert w.checked == []  # refused before anything else


def test_shared_cache_dir_refused(tmp_path: Path, binary: Path) -> None:
    w = World(tmp_path)
    c = tmp_path / "c"
    opts = [
        ServerOptions(binary=binary, port=1, cache=True, cache_path=c, cache_per_server=False),
        ServerOptions(binary=binary, port=2, cache=True, cache_path=c, cache_per_server=False),
    ]
    with pytest.raises(UsageError, match="share the cache dir"):
        resolve_servers(opts, w.env)


def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(NoServerBinaryError, match="does not exist") as info:
        resolve_build(ServerOptions(binary=tmp_path / "nope"), tmp_path, BUILDS)
    assert info.value.exit_code == 25


def _manifest(
    root: Path, key: str, backend: str, created: str, platform: str, protocol: str = "5.0.0"
) -> Path:
    entry = root / key
    (entry / "bin").mkdir(parents=True)
    (entry / "bin" / "ggml-rpc-server").write_text("")
    (entry / "manifest.json").write_text(
        json.dumps(
            {
                "key": key,
                "binary": "bin/ggml-rpc-server",
                "backend": backend,
                "commit": "c" * 40,
                "max_name": 160,
                "protocol": protocol,
                "target": "ggml-rpc-server",
                "created": created,
                "platform": platform,
            }
        )
    )
    return entry


def test_builds_from_the_store(tmp_path: Path) -> None:
    here = f"{current_platform()}-{pf.machine().lower()}"
    root = tmp_path / "artifacts"
    _manifest(root, "aaa111", "cpu", "2026-01-01T00:00:00", here)
    _manifest(root, "bbb222", "vulkan", "2026-02-01T00:00:00", here)
    _manifest(root, "ccc333", "cpu", "2026-03-01T00:00:00", "other-arch")
    newest = resolve_build(ServerOptions(), root, BUILDS)
    assert (newest.key, newest.max_name, newest.protocol) == ("bbb222", 160, "5.0.0")
    assert resolve_build(ServerOptions(backend="cpu"), root, BUILDS).key == "aaa111"
    assert resolve_build(ServerOptions(build="ccc"), root, BUILDS).key == "ccc333"
    with pytest.raises(NoServerBinaryError, match="no cuda build"):
        resolve_build(ServerOptions(backend="cuda"), root, BUILDS)
    with pytest.raises(NoServerBinaryError, match="no build 'zzz'"):
        resolve_build(ServerOptions(build="zzz"), root, BUILDS)


def test_a_binary_inside_a_store_entry_carries_its_build(tmp_path: Path) -> None:
    """The build locator the CLI injects reads the entry's manifest (max_name, protocol)."""
    root = tmp_path / "artifacts"
    entry = _manifest(root, "ddd444", "vulkan", "2026-01-01T00:00:00", "", protocol="unknown")
    binary = entry / "bin" / "ggml-rpc-server"
    binary.chmod(0o755)
    b = resolve_build(ServerOptions(binary=binary), root, BUILDS)
    assert (b.binary, b.key, b.backend, b.max_name) == (binary.resolve(), "ddd444", "vulkan", 160)
    assert b.protocol is None  # "unknown" in the manifest is not a version
    b = resolve_build(ServerOptions(binary=binary, backend="cpu"), root, BUILDS)
    assert b.backend == "cpu"  # what the user said wins
    (entry / "manifest.json").write_text("{")  # unreadable: the binary alone
    assert resolve_build(ServerOptions(binary=binary), root, BUILDS).key is None
