"""A Vulkan lab on a machine without a GPU: real Vulkan devices from Mesa's lavapipe.

- :func:`lavapipe_env` makes N Vulkan devices (one copy of ``libvulkan_lvp.so`` and one
  ICD json per device, in the test cache) and returns the environment a process needs to
  see them as ``Vulkan0..N-1``, with Mesa's shader cache in the test cache too.
- :func:`headers_include`: Vulkan headers new enough for 2026 llama.cpp trees (Debian
  trixie's, unpacked privately by ``.ci/vulkan-setup``).
- :func:`vulkan_server`: a real Vulkan ``ggml-rpc-server`` built by sdrpc-build from the
  llama-cpp-python 0.3.35 sdist (GGML_MAX_NAME=160), cached like tests/servers.py's.
- :func:`rpc_ops_client`: llama.cpp's own ``test-backend-ops`` (same tree, same
  GGML_MAX_NAME) with RPC servers registered first: it runs ggml ops on a remote device
  and compares each result with the local CPU backend.

System prerequisites (glslc, libvulkan-dev, spirv-headers, bookworm-backports Mesa) come
from ``.ci/vulkan-setup`` run as root; without them :class:`VulkanLabMissing` says so.
See docs facts.md section 8. Everything else lives under ``$SDRPC_TEST_CACHE``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import servers
from filelock import FileLock

__all__ = [
    "LAB_MAX_NAME",
    "LAB_VERSION",
    "Banner",
    "VulkanLabMissing",
    "banner_devices",
    "headers_include",
    "lab_root",
    "lavapipe_env",
    "lavapipe_library",
    "require_setup",
    "rpc_ops_client",
    "server_banner",
    "vulkan_server",
]

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / ".ci" / "vulkan-setup"
LAB_VERSION = "0.3.35"  # llama-cpp-python sdist: llama.cpp 4df29be4, RPC 5.0.0
LAB_MAX_NAME = 160  # what sd.cpp master needs since 2026-07
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")


class VulkanLabMissing(RuntimeError):
    """The machine lacks what the Vulkan lab needs (``.ci/vulkan-setup`` installs it)."""


def lab_root() -> Path:
    d = servers.cache_root() / "vulkan-lab"
    d.mkdir(parents=True, exist_ok=True)
    return d


def headers_dir() -> Path:
    return servers.cache_root() / "vulkan-headers"


@functools.cache
def require_setup() -> None:
    """Check the system packages and fetch the newer headers (``.ci/vulkan-setup --no-install``).

    Fast (~0.1 s) once everything is there. Never installs system packages: when they are
    missing this raises :class:`VulkanLabMissing` with the script's own message.
    """
    proc = subprocess.run(
        [str(SETUP), "--no-install", str(headers_dir())],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise VulkanLabMissing(
            f"{SETUP.relative_to(ROOT)} --no-install exited {proc.returncode}:\n"
            f"{proc.stderr.strip()}\nrun .ci/vulkan-setup as root once on this machine"
        )


def headers_include() -> Path:
    """Include dir holding ``vulkan/vulkan_core.h`` >= 1.3.272 (for ``-D Vulkan_INCLUDE_DIR``)."""
    require_setup()
    return headers_dir() / "include"


def _icd_library() -> str:
    for d in _ICD_DIRS:
        for f in sorted(Path(d).glob("lvp_icd*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                return str(json.loads(f.read_text())["ICD"]["library_path"])
    return "libvulkan_lvp.so"


def lavapipe_library() -> Path:
    """The installed lavapipe driver (``libvulkan_lvp.so``)."""
    lib = _icd_library()
    candidates = [Path(lib)] if os.path.isabs(lib) else [Path(d) / lib for d in _LIB_DIRS]
    for c in candidates:
        if c.is_file():
            return c
    raise VulkanLabMissing(
        f"lavapipe ({lib}) not found; run .ci/vulkan-setup as root (mesa-vulkan-drivers)"
    )


def _icd_api_version() -> str:
    for d in _ICD_DIRS:
        for f in sorted(Path(d).glob("lvp_icd*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                return str(json.loads(f.read_text())["ICD"]["api_version"])
    return "1.3.0"


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return sa.st_size == sb.st_size and int(sa.st_mtime) == int(sb.st_mtime)


def lavapipe_env(n: int, shader_cache: Path | None = None) -> dict[str, str]:
    """Environment under which a process sees ``n`` lavapipe devices ``Vulkan0..n-1``.

    The Vulkan loader offers each ICD json once, so ``n`` devices need ``n`` copies of the
    driver, each with its own json. ggml-vulkan skips CPU-type devices unless
    ``GGML_VK_VISIBLE_DEVICES`` names them. Mesa's shader cache goes to ``shader_cache``
    (default: the lab's, kept between runs: lavapipe compiles every pipeline once).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    require_setup()
    lib = lavapipe_library()
    icd = lab_root() / "icd"
    icd.mkdir(exist_ok=True)
    api = _icd_api_version()
    jsons: list[str] = []
    with FileLock(str(lab_root() / "icd.lock")):
        for i in range(n):
            copy = icd / f"libvulkan_lvp_{i}.so"
            if not _same_file(lib, copy):
                tmp = icd / f".libvulkan_lvp_{i}.so.{os.getpid()}"
                shutil.copy2(lib, tmp)
                tmp.replace(copy)  # atomic: a process may have the old copy mapped
            manifest = icd / f"lvp_{i}.json"
            text = json.dumps(
                {
                    "file_format_version": "1.0.0",
                    "ICD": {"library_path": str(copy), "api_version": api},
                },
                indent=2,
            )
            if not manifest.exists() or manifest.read_text() != text:
                manifest.write_text(text)
            jsons.append(str(manifest))
    cache = shader_cache or lab_root() / "mesa-shader-cache"
    cache.mkdir(parents=True, exist_ok=True)
    files = ":".join(jsons)
    return {
        "VK_ICD_FILENAMES": files,
        "VK_DRIVER_FILES": files,  # the newer name; wins over VK_ICD_FILENAMES where both exist
        "GGML_VK_VISIBLE_DEVICES": ",".join(str(i) for i in range(n)),
        "MESA_SHADER_CACHE_DIR": str(cache),
    }


def vulkan_server() -> Path:
    """A real Vulkan ``ggml-rpc-server`` (llama.cpp 4df29be4, GGML_MAX_NAME=160), built once.

    Built by sdrpc-build (``--backend vulkan --vulkan-headers <trixie headers>``) into the
    shared test cache; the first build takes ~5 min on 2 cores, later calls are cache hits.
    The cache key holds the headers' version and content digest, not their path: the same
    headers fetched by ``--vulkan-headers auto`` (test_vulkan_headers.py) hit this build. It is
    verified with the lab's three lavapipe devices visible (recorded in its manifest).
    """
    include = headers_include()
    return servers.build_server(
        LAB_VERSION,
        LAB_MAX_NAME,
        backend="vulkan",
        vulkan_headers=str(include),
        env={**os.environ, **lavapipe_env(3)},  # verification sees the lab's devices
        portable=True,  # what sdrpc up builds too (test_fleet.py's Vulkan server is this one)
    )


# llama.cpp's tests/test-backend-ops.cpp, unchanged, with RPC servers registered first.
_RPC_OPS_CPP = r"""
// rpc-ops --rpc HOST:PORT[,HOST:PORT...] [test-backend-ops arguments]
// llama.cpp's own tests/test-backend-ops.cpp, with the given RPC servers' devices
// (RPC0, RPC1, ...) registered before it enumerates backends: "-b RPC0" then runs each
// op on the remote device and compares the result with the local CPU backend.
#define main test_backend_ops_main
#include "test-backend-ops.cpp"
#undef main
#include "ggml-rpc.h"

int main(int argc, char ** argv) {
    if (argc < 3 || std::strcmp(argv[1], "--rpc") != 0) {
        std::fprintf(stderr, "usage: %s --rpc HOST:PORT[,...] [test-backend-ops args]\n", argv[0]);
        return 2;
    }
    ggml_backend_load_all();
    std::stringstream list(argv[2]);
    std::string endpoint;
    while (std::getline(list, endpoint, ',')) {
        ggml_backend_reg_t reg = ggml_backend_rpc_add_server(endpoint.c_str());
        if (reg == nullptr) {
            std::fprintf(stderr, "rpc-ops: no devices from RPC server %s\n", endpoint.c_str());
            return 3;
        }
        ggml_backend_register(reg);
    }
    argv[2] = argv[0];
    return test_backend_ops_main(argc - 2, argv + 2);
}
"""

_RPC_OPS_CMAKE = r"""
cmake_minimum_required(VERSION 3.14)
project(sdrpc_rpc_ops C CXX)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
# every translation unit must agree on GGML_MAX_NAME (and with the server)
add_compile_definitions(GGML_MAX_NAME=${SDRPC_MAX_NAME})
set(BUILD_SHARED_LIBS OFF CACHE BOOL "" FORCE)
set(GGML_RPC ON CACHE BOOL "" FORCE)
set(GGML_RPC_RDMA OFF CACHE BOOL "" FORCE)
add_subdirectory(${LLAMA_TREE}/ggml ggml)
add_executable(rpc-ops rpc-ops.cpp)
target_include_directories(rpc-ops PRIVATE ${LLAMA_TREE}/tests)
target_link_libraries(rpc-ops PRIVATE ggml)
"""


def rpc_ops_client(version: str = LAB_VERSION, max_name: int = LAB_MAX_NAME) -> Path:
    """llama.cpp's test-backend-ops as an RPC client (``rpc-ops``), built once and cached.

    ``rpc-ops --rpc 127.0.0.1:PORT -b RPC0 -o OP [-p REGEX]`` runs the op cases on the server's
    first device and compares with the CPU; exit 0 iff every case that ran passed.
    """
    tree = servers.llama_tree(version)
    digest = hashlib.sha256((_RPC_OPS_CPP + _RPC_OPS_CMAKE).encode()).hexdigest()[:12]
    root = lab_root() / "rpc-ops"
    root.mkdir(exist_ok=True)
    dest = root / f"{version}-{max_name}-{digest}"
    binary = dest / "build" / "bin" / "rpc-ops"
    with FileLock(str(root / f"{dest.name}.lock")):
        if (dest / ".complete").exists() and binary.is_file():
            return binary
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "src").mkdir(parents=True)
        (dest / "src" / "rpc-ops.cpp").write_text(_RPC_OPS_CPP)
        (dest / "src" / "CMakeLists.txt").write_text(_RPC_OPS_CMAKE)
        log = dest / "build.log"
        with log.open("wb") as out:
            for argv in (
                [
                    "cmake",
                    "-S",
                    str(dest / "src"),
                    "-B",
                    str(dest / "build"),
                    "-G",
                    "Ninja",
                    "-DCMAKE_BUILD_TYPE=Release",
                    f"-DLLAMA_TREE={tree}",
                    f"-DSDRPC_MAX_NAME={max_name}",
                    f"-DCMAKE_RUNTIME_OUTPUT_DIRECTORY={dest / 'build' / 'bin'}",
                ],
                ["cmake", "--build", str(dest / "build"), "--target", "rpc-ops"],
            ):
                r = subprocess.run(
                    argv, stdout=out, stderr=subprocess.STDOUT, timeout=1800, check=False
                )
                if r.returncode != 0:
                    raise RuntimeError(f"{' '.join(argv[:2])} failed; see {log}")
        (dest / ".complete").write_text("ok\n")
    return binary


# ---------------------------------------------------------------- reading the banner

_DEVICE = re.compile(r"^\s+(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")


@dataclass(frozen=True)
class Banner:
    text: str
    devices: tuple[str, ...]


def banner_devices(text: str) -> tuple[str, ...]:
    """Device names from rpc-server output (``Devices:`` lines or an unknown ``-d`` listing)."""
    return tuple(m.group(1) for m in map(_DEVICE.match, text.splitlines()) if m)


def server_banner(
    binary: Path,
    port: int,
    env: Mapping[str, str],
    extra: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> Banner:
    """Start ``binary`` line-buffered (``stdbuf -oL``: a piped rpc-server's stdout is
    block-buffered), read its banner until the device list is complete (output pauses for
    0.5 s after a device line, or the process ends), stop it (by PID) and return it."""
    argv = ["stdbuf", "-oL", "-eL", str(binary), "-H", "127.0.0.1", "-p", str(port), *extra]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),  # the whole environment
        start_new_session=True,
    )
    buf = b""
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            chunk = proc.stdout.read()
            if chunk:
                buf += chunk
                quiet_since = time.monotonic()
            if proc.poll() is not None and not chunk:
                break
            if (
                banner_devices(buf.decode(errors="replace"))
                and time.monotonic() - quiet_since > 0.5
            ):
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    text = buf.decode(errors="replace")
    return Banner(text, banner_devices(text))
