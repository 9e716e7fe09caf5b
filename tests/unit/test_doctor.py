"""sdrpc doctor with fake probes: no process is started, no file outside tmp is read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import pytest

from sdrpc_build.cli import doctor as cli_doctor
from sdrpc_build.doctor import (
    MIN_DISK_BYTES,
    DoctorReport,
    Probes,
    diagnose,
    parse_vulkan_header_version,
)
from sdrpc_build.recipes import list_recipes

GIB = 1024**3

VK_239 = """
#define VK_HEADER_VERSION 239
#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, VK_HEADER_VERSION)
"""
VK_290 = VK_239.replace("239", "290")


class Machine:
    """A fake machine: executables on PATH, command outputs, files, free disk."""

    def __init__(
        self,
        platform: str = "linux",
        exes: Sequence[str] = ("cmake", "ninja", "cc", "c++", "git", "ccache"),
        outputs: Optional[Mapping[str, str]] = None,
        files: Optional[Mapping[str, str]] = None,
        env: Optional[Mapping[str, str]] = None,
        free: Optional[int] = 50 * GIB,
    ) -> None:
        self.platform = platform
        self.exes = {e: f"/usr/bin/{e}" for e in exes}
        self.outputs = {
            "cmake": "cmake version 3.28.3",
            "ninja": "1.11.1",
            "cc": "cc (Debian 12.2.0) 12.2.0",
            "git": "git version 2.39.5",
            "ccache": "ccache version 4.7.5",
            **(outputs or {}),
        }
        self.files = dict(files or {})
        self.env = dict(env or {})
        self.free = free
        self.ran: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> Optional[str]:
        self.ran.append(list(argv))
        return self.outputs.get(Path(argv[0]).name)

    def probes(self) -> Probes:
        return Probes(
            platform=self.platform,
            env=self.env,
            which=self.exes.get,
            run=self.run,
            read_text=lambda p: self.files.get(p.as_posix()),
            is_file=lambda p: p.as_posix() in self.files,
            disk_free=lambda _p: self.free,
        )

    def diagnose(self, backends: Optional[list[str]] = None) -> DoctorReport:
        return diagnose(list_recipes(), self.probes(), Path("/cache"), backends)


def _backend(report: DoctorReport, name: str) -> tuple[bool, tuple[str, ...]]:
    b = next(b for b in report.backends if b.backend == name)
    return b.buildable, b.missing


def test_vulkan_header_version_parsing() -> None:
    assert parse_vulkan_header_version(VK_239) == (1, 3, 239)
    old = (
        "#define VK_HEADER_VERSION 131\n"
        "#define VK_HEADER_VERSION_COMPLETE VK_MAKE_VERSION(1, 2, VK_HEADER_VERSION)\n"
    )
    assert parse_vulkan_header_version(old) == (1, 2, 131)
    assert parse_vulkan_header_version("#define VK_HEADER_VERSION 99\n") == (1, 0, 99)
    assert parse_vulkan_header_version("nothing here") is None


def test_bare_linux_machine_builds_cpu_only() -> None:
    report = Machine().diagnose()
    assert "cpu" in report.buildable
    assert "cuda" not in report.buildable and "vulkan" not in report.buildable
    ok, missing = _backend(report, "cuda")
    assert not ok and missing == ("nvcc",)
    assert "apt-get install nvidia-cuda-toolkit" in report.check("nvcc").hint  # recipe's hint
    metal = next(b for b in report.backends if b.backend == "metal")
    assert not metal.supported and not metal.buildable


def test_missing_compiler_blocks_everything() -> None:
    report = Machine(exes=("cmake", "git")).diagnose(["cpu"])
    assert report.buildable == []
    assert _backend(report, "cpu")[1] == ("c-compiler", "cxx-compiler")
    assert report.check("c-compiler").hint.startswith("apt-get install build-essential")
    # ninja and ccache missing are warnings, not blockers
    assert report.check("ninja").status == "warning"
    assert report.check("ccache").status == "warning"


def test_install_hints_follow_the_platform() -> None:
    mac = Machine(platform="macos", exes=("cmake",)).diagnose(["metal"])
    assert mac.check("c-compiler").hint == "xcode-select --install"
    assert mac.check("xcrun").hint == "xcode-select --install"
    win = Machine(platform="windows", exes=("cmake",)).diagnose(["cpu"])
    assert "Visual Studio" in win.check("c-compiler").hint
    assert win.check("git").hint == "winget install Git.Git"


def test_windows_msvc_is_not_asked_for_a_version() -> None:
    m = Machine(platform="windows", exes=("cmake", "cl", "git"))
    report = m.diagnose(["cpu"])
    assert report.check("c-compiler").detail.startswith("MSVC")
    assert not any(Path(a[0]).name == "cl" for a in m.ran)
    assert report.buildable == ["cpu"]


def test_cuda_found_via_cuda_path_and_driver_reported() -> None:
    m = Machine(
        env={"CUDA_PATH": "/opt/cuda"},
        files={"/opt/cuda/bin/nvcc": ""},
        outputs={"nvcc": "Cuda compilation tools, release 12.4, V12.4.131"},
    )
    # nvcc alone (as on this CI machine) configures but cannot link ggml-cuda
    report = m.diagnose(["cuda"])
    assert report.buildable == []
    assert report.check("cublas").status == "missing"
    m.files["/opt/cuda/lib64/libcublas.so"] = ""
    report = m.diagnose(["cuda"])
    assert report.check("cublas").detail == "/opt/cuda/lib64/libcublas.so"
    assert report.buildable == ["cuda"]
    assert report.check("nvcc").detail == "CUDA 12.4 (/opt/cuda/bin/nvcc)"
    b = report.backends[0]
    assert b.notes and b.notes[0].startswith("nvidia-driver")  # builds, cannot run here
    m.exes["nvidia-smi"] = "/usr/bin/nvidia-smi"
    m.outputs["nvidia-smi"] = "NVIDIA H100, 560.35.03\n"
    report = m.diagnose(["cuda"])
    assert report.check("nvidia-driver").detail == "NVIDIA H100, 560.35.03"
    assert report.backends[0].notes == ()


@pytest.mark.parametrize(("header", "status"), [(VK_239, "too-old"), (VK_290, "ok")])
def test_vulkan_header_version_decides(header: str, status: str) -> None:
    m = Machine(
        exes=("cmake", "ninja", "cc", "c++", "git", "glslc"),
        files={
            "/usr/include/vulkan/vulkan_core.h": header,
            "/usr/include/spirv/unified1/spirv.hpp": "",
        },
    )
    report = m.diagnose(["vulkan"])
    check = report.check("vulkan-headers")
    assert check.status == status
    if status == "too-old":
        assert "1.3.239 < 1.3.272" in check.detail
        assert "LunarG" in check.hint
        assert report.buildable == []
    else:
        assert report.buildable == ["vulkan"]


def test_vulkan_sdk_env_wins_and_spirv_is_required_on_linux() -> None:
    m = Machine(
        env={"VULKAN_SDK": "/sdk"},
        files={
            "/sdk/include/vulkan/vulkan_core.h": VK_290,
            "/sdk/bin/glslc": "",
            "/usr/include/vulkan/vulkan_core.h": VK_239,
        },
    )
    report = m.diagnose(["vulkan"])
    assert report.check("vulkan-headers").detail.endswith("(/sdk/include/vulkan/vulkan_core.h)")
    assert report.check("glslc").status == "ok"
    assert _backend(report, "vulkan") == (False, ("spirv-headers",))


def test_low_disk_blocks_and_unknown_disk_warns() -> None:
    report = Machine(free=MIN_DISK_BYTES // 2).diagnose(["cpu"])
    assert report.check("disk").status == "missing"
    assert "SDRPC_CACHE_DIR" in report.check("disk").hint
    assert report.buildable == []
    assert Machine(free=None).diagnose(["cpu"]).buildable == ["cpu"]


def test_old_cmake_is_reported_per_backend() -> None:
    report = Machine(
        outputs={"cmake": "cmake version 3.16.3"},
        exes=("cmake", "ninja", "cc", "c++", "git", "hipcc"),
        files={},
    ).diagnose(["cpu", "hip"])
    assert report.buildable == ["cpu"]
    assert "cmake>=3.21" in _backend(report, "hip")[1]


def test_report_json_shape() -> None:
    doc = Machine().diagnose(["cpu", "cuda"]).as_dict()
    json.dumps(doc)
    assert doc["platform"] == "linux"
    assert doc["buildable"] == ["cpu"]
    checks = doc["checks"]
    assert isinstance(checks, list)
    assert {c["name"] for c in checks} >= {"cmake", "git", "disk", "nvcc"}


def test_cli_json_and_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = Machine()
    monkeypatch.setattr(cli_doctor, "system_probes", lambda env, plat: machine.probes())
    assert cli_doctor.main(["--json", "--backend", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["buildable"] == ["cpu"]
    assert cli_doctor.main(["--backend", "cuda"]) == 6
    captured = capsys.readouterr()
    assert "sdrpc doctor: error: backend 'cuda' cannot be built here: nvcc" in captured.err
    assert "Traceback" not in captured.err
    assert cli_doctor.main(["--backend", "cdua"]) == 4
    assert "did you mean 'cuda'" in capsys.readouterr().err
    assert cli_doctor.main([]) == 0  # cpu can be built
    assert "can build here: cpu\n" in capsys.readouterr().out
