"""sdrpc doctor with fake probes: no process is started, no file outside tmp is read."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import pytest

from sdrpc_build.build.doctor import (
    MIN_DISK_BYTES,
    DoctorReport,
    Probes,
    blocked_error,
    diagnose,
    parse_vulkan_header_version,
    require_buildable,
)
from sdrpc_build.build.doctor.checks import Doctor
from sdrpc_build.build.doctor.preflight import for_tree, verdict
from sdrpc_build.build.recipes import RUNTIME_CHECKS, list_recipes, load_recipe, parse_recipe
from sdrpc_build.cli import build as cli_build
from sdrpc_build.cli import doctor as cli_doctor
from sdrpc_build.errors import RecipeError, ToolError

GIB = 1024**3

VK_239 = """
#define VK_HEADER_VERSION 239
#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, VK_HEADER_VERSION)
"""
VK_290 = VK_239.replace("239", "290")

#: what a Debian machine has after ``apt-get install glslc libvulkan-dev spirv-headers``
VULKAN_DEBIAN = {
    "/usr/include/vulkan/vulkan_core.h": VK_239,
    "/usr/lib/x86_64-linux-gnu/libvulkan.so": "",
    "/usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake": "",
}
#: what ``apt-get install libopenblas-dev`` gives (Debian 12)
OPENBLAS_DEBIAN = {
    "/usr/lib/x86_64-linux-gnu/libopenblas.so": "",
    "/usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h": "",
}
#: a CUDA toolkit's nvcc, runtime headers and driver stub, without cuBLAS
CUDA_NO_CUBLAS = {
    "/opt/cuda/bin/nvcc": "",
    "/opt/cuda/include/cuda_runtime.h": "",
    "/opt/cuda/lib64/stubs/libcuda.so": "",
}


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

    def build_error(
        self, backend: str, defines: Sequence[tuple[str, str]] = ()
    ) -> Optional[ToolError]:
        """What sdrpc-build's preflight says on this machine (None: it goes on to configure)."""
        try:
            require_buildable(
                load_recipe(backend), self.env, Path("/cache"), defines, probes=self.probes()
            )
        except ToolError as exc:
            return exc
        return None


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
    assert report.buildable == ["cpu"]
    ok, missing = _backend(report, "cuda")
    assert not ok and missing == ("nvcc", "cuda_runtime.h", "cublas", "cublas_v2.h", "libcuda")
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


def test_cuda_needs_cublas_and_libcuda_not_just_nvcc() -> None:
    """nvcc alone (as on this CI machine) passed doctor, then failed in cmake (exit 7):
    ggml-cuda links CUDA::cublas and CUDA::cuda_driver."""
    m = Machine(env={"CUDA_PATH": "/opt/cuda"}, files=CUDA_NO_CUBLAS)
    report = m.diagnose(["cuda"])
    assert report.buildable == []
    assert _backend(report, "cuda")[1] == ("cublas", "cublas_v2.h")
    assert "libcublas-dev" in report.check("cublas").hint
    error = m.build_error("cuda")
    assert error is not None and error.exit_code == 6
    assert "cublas" in error.message and "libcublas-dev" in (error.hint or "")
    m.files["/opt/cuda/lib64/libcublas.so"] = ""
    assert _backend(m.diagnose(["cuda"]), "cuda")[1] == ("cublas_v2.h",)
    m.files["/opt/cuda/include/cublas_v2.h"] = ""
    report = m.diagnose(["cuda"])
    assert report.check("cublas").path == "/opt/cuda/lib64/libcublas.so"
    assert report.buildable == ["cuda"]
    assert m.build_error("cuda") is None
    b = report.backends[0]
    assert b.notes and b.notes[0].startswith("nvidia-driver")  # builds, cannot run here
    m.exes["nvidia-smi"] = "/usr/bin/nvidia-smi"
    m.outputs["nvidia-smi"] = "NVIDIA H100, 560.35.03\n"
    report = m.diagnose(["cuda"])
    assert report.check("nvidia-driver").detail == "NVIDIA H100, 560.35.03"
    assert report.backends[0].notes == ()


def test_cuda_libraries_are_looked_for_next_to_the_nvcc_on_path() -> None:
    files = {
        "/opt/cuda-12.4/bin/nvcc": "",
        "/opt/cuda-12.4/targets/x86_64-linux/include/cuda_runtime.h": "",
        "/opt/cuda-12.4/targets/x86_64-linux/include/cublas_v2.h": "",
        "/opt/cuda-12.4/targets/x86_64-linux/lib/libcublas.so": "",
        "/opt/cuda-12.4/targets/x86_64-linux/lib/stubs/libcuda.so": "",
    }
    m = Machine(files=files)
    m.exes["nvcc"] = "/opt/cuda-12.4/bin/nvcc"
    assert m.diagnose(["cuda"]).buildable == ["cuda"]
    del m.files["/opt/cuda-12.4/targets/x86_64-linux/lib/stubs/libcuda.so"]
    assert _backend(m.diagnose(["cuda"]), "cuda")[1] == ("libcuda",)
    # GGML_CUDA_NO_VMM=ON: ggml-cuda does not link the driver library
    assert m.build_error("cuda", [("GGML_CUDA_NO_VMM", "ON")]) is None
    assert m.build_error("cuda", [("GGML_CUDA_NO_VMM", "OFF")]) is not None


@pytest.mark.parametrize(("header", "status"), [(VK_239, "too-old"), (VK_290, "ok")])
def test_vulkan_header_version_decides(header: str, status: str) -> None:
    m = Machine(
        exes=("cmake", "ninja", "cc", "c++", "git", "glslc"),
        files={**VULKAN_DEBIAN, "/usr/include/vulkan/vulkan_core.h": header},
    )
    report = m.diagnose(["vulkan"])
    check = report.check("vulkan-headers")
    assert check.status == status
    if status == "too-old":
        assert "1.3.239 < 1.3.272" in check.detail
        assert check.hint == (
            "pass --vulkan-headers auto to sdrpc-build (it fetches them), or install Vulkan "
            "headers >= 1.3.272 (e.g. the LunarG SDK, or Debian trixie's libvulkan-dev)"
        )
        assert report.buildable == []
        assert _backend(report, "vulkan")[1] == ("vulkan-headers",)
        # only what sdrpc-build fetches itself is missing: doctor says with which option
        assert report.backends[0].buildable_with == "--vulkan-headers auto"
        assert report.as_dict()["buildable_with"] == {"vulkan": "--vulkan-headers auto"}
    else:
        assert report.buildable == ["vulkan"]


def test_vulkan_include_dir_define_is_what_the_build_uses() -> None:
    """sdrpc-build -D Vulkan_INCLUDE_DIR=DIR (newer headers unpacked anywhere) passes the
    preflight, as it passes CMake; doctor, without -D, still says what to install."""
    m = Machine(
        exes=("cmake", "ninja", "cc", "c++", "git", "glslc"),
        files={**VULKAN_DEBIAN, "/home/u/vk/usr/include/vulkan/vulkan_core.h": VK_290},
    )
    assert m.diagnose(["vulkan"]).buildable == []
    error = m.build_error("vulkan")
    assert error is not None and "vulkan-headers 1.3.239 < 1.3.272" in error.message
    assert m.build_error("vulkan", [("Vulkan_INCLUDE_DIR", "/home/u/vk/usr/include")]) is None
    wrong = m.build_error("vulkan", [("Vulkan_INCLUDE_DIR", "/nowhere")])
    assert wrong is not None and "-D Vulkan_INCLUDE_DIR=/nowhere" in wrong.message


def test_vulkan_sdk_env_wins_and_needs_spirv_headers() -> None:
    m = Machine(
        env={"VULKAN_SDK": "/sdk"},
        files={
            "/sdk/include/vulkan/vulkan_core.h": VK_290,
            "/sdk/bin/glslc": "",
            "/sdk/lib/libvulkan.so": "",
            "/usr/include/vulkan/vulkan_core.h": VK_239,
        },
    )
    report = m.diagnose(["vulkan"])
    assert report.check("vulkan-headers").detail.endswith("(/sdk/include/vulkan/vulkan_core.h)")
    assert report.check("glslc").status == "ok"
    assert _backend(report, "vulkan") == (False, ("spirv-headers",))
    m.files["/sdk/lib/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake"] = ""
    assert m.diagnose(["vulkan"]).buildable == ["vulkan"]


def test_blas_needs_the_openblas_library_and_cblas_h_not_just_pkg_config() -> None:
    """pkg-config alone passed doctor, then FindBLAS failed in cmake (exit 7)."""
    m = Machine(exes=("cmake", "ninja", "cc", "c++", "git", "pkg-config"))
    report = m.diagnose(["blas"])
    assert _backend(report, "blas") == (False, ("openblas", "cblas.h"))
    assert report.check("openblas").hint.startswith("apt-get install libopenblas-dev")
    m.files.update(OPENBLAS_DEBIAN)
    assert m.diagnose(["blas"]).buildable == ["blas"]
    del m.exes["pkg-config"]
    assert _backend(m.diagnose(["blas"]), "blas")[1] == ("pkg-config",)


def test_blas_of_another_vendor_is_left_to_cmake() -> None:
    m = Machine(exes=("cmake", "ninja", "cc", "c++", "git", "pkg-config"))
    assert m.build_error("blas") is not None
    assert m.build_error("blas", [("GGML_BLAS_VENDOR", "Intel10_64lp")]) is None


def test_opencl_needs_headers_and_the_icd_loader() -> None:
    m = Machine(exes=("cmake", "ninja", "cc", "c++", "git", "python3"))
    report = m.diagnose(["opencl"])
    assert _backend(report, "opencl") == (False, ("CL/cl.h", "libOpenCL"))
    assert "ocl-icd-opencl-dev" in report.check("libOpenCL").hint
    assert "opencl-headers" in report.check("CL/cl.h").hint
    m.files.update({"/usr/include/CL/cl.h": "", "/usr/lib/x86_64-linux-gnu/libOpenCL.so": ""})
    assert m.diagnose(["opencl"]).buildable == ["opencl"]
    del m.exes["python3"]
    assert _backend(m.diagnose(["opencl"]), "opencl")[1] == ("python3",)


def test_libraries_are_looked_up_as_cmake_does() -> None:
    m = Machine(exes=("cmake", "ninja", "cc", "c++", "git", "pkg-config"))
    m.files["/usr/lib/x86_64-linux-gnu/libopenblas.so.0"] = ""  # runtime package only
    m.files["/usr/include/x86_64-linux-gnu/cblas.h"] = ""
    assert _backend(m.diagnose(["blas"]), "blas")[1] == ("openblas",)
    m.env["CMAKE_PREFIX_PATH"] = "/opt/ob"
    m.files["/opt/ob/lib/libopenblas.a"] = ""
    assert m.diagnose(["blas"]).buildable == ["blas"]
    m = Machine(exes=("cmake", "ninja", "cc", "c++", "git", "pkg-config"))
    m.env["PATH"] = "/opt/ob2/bin:/usr/bin"  # CMake searches the prefixes of PATH's bin dirs
    m.files.update({"/opt/ob2/lib64/libopenblas.so": "", "/opt/ob2/include/cblas.h": ""})
    assert m.diagnose(["blas"]).buildable == ["blas"]


def test_doctor_and_the_build_give_the_same_verdict_and_words() -> None:
    machines = [
        Machine(),
        Machine(env={"CUDA_PATH": "/opt/cuda"}, files=CUDA_NO_CUBLAS),
        Machine(exes=("cmake", "ninja", "cc", "c++", "git", "glslc"), files=VULKAN_DEBIAN),
        Machine(exes=("cmake", "ninja", "cc", "c++", "git", "pkg-config"), files=OPENBLAS_DEBIAN),
        Machine(exes=("cmake", "git"), free=MIN_DISK_BYTES // 4),
    ]
    for m in machines:
        report = m.diagnose()
        for b in report.backends:
            error = m.build_error(b.backend)
            assert (error is None) == b.buildable, (b.backend, b.missing)
            if error is not None:
                doctors = blocked_error(b)
                assert (error.message, error.hint) == (doctors.message, doctors.hint)
                assert error.exit_code == 6


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
    assert "sdrpc doctor: error: backend 'cuda' cannot be built here: nvcc not found" in (
        captured.err
    )
    assert "sdrpc doctor: hint: " in captured.err
    assert "Traceback" not in captured.err
    assert cli_doctor.main(["--backend", "cdua"]) == 4
    err = capsys.readouterr().err
    assert "did you mean 'cuda'" in err
    assert "hint: known backends: blas, cann, cpu, cuda," in err
    assert cli_doctor.main([]) == 0  # cpu can be built
    assert "can build here: cpu\n" in capsys.readouterr().out


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def test_doctor_hints_name_only_flags_doctor_takes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No hint doctor can print names an sdrpc-build option doctor lacks (--recipe, -D, ...)."""
    has = set(cli_doctor.make_parser()._option_string_actions)
    sdrpc_flags = set(cli_build.make_parser()._option_string_actions)
    hints = []
    for m in (Machine(platform=p, exes=("cmake",), free=1) for p in ("linux", "macos", "windows")):
        report = m.diagnose()
        hints += [c.hint for c in report.checks] + [b.hint for b in report.backends]
        monkeypatch.setattr(cli_doctor, "system_probes", lambda env, plat, m=m: m.probes())
        for argv in (["--backend", "cdua"], ["--backend", "cuda"], []):
            cli_doctor.main(argv)
            hints += [ln for ln in capsys.readouterr().err.splitlines() if "hint:" in ln]
    for r in list_recipes():
        hints += [req.install_hint(p) for req in r.requires for p in ("linux", "macos", "windows")]
    assert len(hints) > 50
    foreign = {
        f: h for h in hints for f in (_flags(h) & sdrpc_flags) - has if not _says_whose(h, f)
    }
    assert foreign == {}
    assert any(_says_whose(h, "--vulkan-headers") for h in hints)  # allowed: named as such


def test_runtime_checks_come_from_the_recipe() -> None:
    """A recipe names the driver check that says whether its server can run here."""
    m = Machine()
    assert {r.name: r.runtime_checks for r in list_recipes() if r.runtime_checks} == {
        "cuda": ("nvidia-driver",),
        "hip": ("rocm-driver",),
        "vulkan": ("vulkan-driver",),
    }
    doc = Doctor(m.probes(), Path("/cache"))
    for name in RUNTIME_CHECKS:  # every name a recipe may use is a check doctor has
        assert doc.get(name).name == name
    cpu = parse_recipe("mine", b'runtime_checks = ["vulkan-driver"]\n[defines]\nA = "ON"\n', "m")
    (note,) = verdict(Doctor(m.probes(), Path("/cache")), cpu).notes
    assert note.startswith("vulkan-driver: vulkaninfo not found")
    with pytest.raises(RecipeError, match="did you mean 'rocm-driver'"):
        parse_recipe("x", b'runtime_checks = ["rocm-drivers"]\n[defines]\nA = "ON"\n', "x")


def _says_whose(hint: str, flag: str) -> bool:
    """``flag`` is named as sdrpc-build's own, in the same clause (``pass F to sdrpc-build``)."""
    return any(flag in part and "sdrpc-build" in part for part in re.split(r"[;,]", hint))


def test_vulkan_buildable_with_auto_headers_needs_git_and_the_rest() -> None:
    """Too old headers alone: buildable with --vulkan-headers auto. Not when git (which
    fetches them) or anything sdrpc cannot fetch (glslc) is missing too."""
    files = {**VULKAN_DEBIAN}
    m = Machine(exes=("cmake", "ninja", "cc", "c++", "git", "glslc"), files=files)
    assert m.diagnose(["vulkan"]).backends[0].buildable_with == "--vulkan-headers auto"
    del m.files["/usr/include/vulkan/vulkan_core.h"]  # missing counts like too old
    assert m.diagnose(["vulkan"]).backends[0].buildable_with == "--vulkan-headers auto"
    no_git = Machine(exes=("cmake", "ninja", "cc", "c++", "glslc"), files=files)
    assert no_git.diagnose(["vulkan"]).backends[0].buildable_with == ""
    no_glslc = Machine(exes=("cmake", "ninja", "cc", "c++", "git"), files=files)
    b = no_glslc.diagnose(["vulkan"]).backends[0]
    assert (b.buildable, b.buildable_with) == (False, "")
    assert set(b.missing) == {"glslc", "vulkan-headers"}


def test_auto_headers_are_provided_not_looked_for() -> None:
    """sdrpc-build --vulkan-headers auto: the preflight skips the headers it fetches later,
    and still checks everything else."""
    m = Machine(exes=("cmake", "ninja", "cc", "c++", "git", "glslc"), files=VULKAN_DEBIAN)
    recipe = load_recipe("vulkan")

    def error(**kw: object) -> Optional[ToolError]:
        try:
            require_buildable(recipe, {}, Path("/cache"), probes=m.probes(), **kw)  # type: ignore[arg-type]
        except ToolError as exc:
            return exc
        return None

    assert error() is not None
    assert error(provided=("vulkan-headers",)) is None
    del m.exes["glslc"]
    e = error(provided=("vulkan-headers",))
    assert e is not None and "glslc" in e.message and "vulkan-headers" not in e.message


def test_the_tree_says_which_header_version_it_needs() -> None:
    """The minimum (1.3.272) is needed_by vk::LayerSettingEXT: a tree whose ggml-vulkan.cpp
    does not use it builds with Debian 12's 1.3.239 headers; one that does, does not."""
    m = Machine(exes=("cmake", "ninja", "cc", "c++", "git", "glslc"), files=VULKAN_DEBIAN)
    recipe = load_recipe("vulkan")
    cpp = "/tree/ggml/src/ggml-vulkan/ggml-vulkan.cpp"

    def error() -> Optional[ToolError]:
        try:
            require_buildable(recipe, {}, Path("/cache"), probes=m.probes(), tree=Path("/tree"))
        except ToolError as exc:
            return exc
        return None

    m.files[cpp] = "std::vector<vk::LayerSettingEXT> settings = {};"
    e = error()
    assert e is not None and "vulkan-headers 1.3.239 < 1.3.272" in e.message
    assert "--vulkan-headers auto" in (e.hint or "")
    m.files[cpp] = "// an older tree: no layer settings"
    assert error() is None
    del m.files[cpp]  # a tree without the file: the recipe's minimum stands
    assert error() is not None
    req = next(r for r in recipe.requires if r.name == "vulkan-headers")
    assert for_tree(recipe, lambda _p: "", Path("/t")).requires != recipe.requires
    assert req.needed_by == ("ggml/src/ggml-vulkan/ggml-vulkan.cpp", "LayerSettingEXT")
