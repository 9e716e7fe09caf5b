"""Build the native baseline client (rpc_native_bench.cpp) against an sdist's ggml.

    python bench/native/build.py 0.3.35 [--max-name 64]     # prints the binary's path

The binary must share the server's GGML_MAX_NAME. ggml's static libraries are
taken from the test-suite's server build of the same sdist and name length
(``<cache>/servers/v<ver>-n<N>``, built by tests/servers.py) when it exists, so
only one C++ file is compiled; otherwise ggml alone (targets ggml, ggml-rpc) is
built from the sdist tree into ``<cache>/bench/ggml-v<ver>-n<N>``. The result
goes to ``<cache>/bench/native-v<ver>-n<N>/rpc-native-bench`` and is rebuilt
only when the source or the libraries change.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests"))

import servers  # noqa: E402

SOURCE = HERE / "rpc_native_bench.cpp"
LIBS = ("ggml-rpc/libggml-rpc.a", "libggml.a", "libggml-cpu.a", "libggml-base.a")


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if proc.returncode:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def _has_libs(build: Path) -> bool:
    return all((build / "ggml" / "src" / lib).is_file() for lib in LIBS)


def ggml_build(version: str, max_name: int) -> Path:
    """A CMake build dir of the sdist's llama.cpp tree with ggml's static libraries."""
    shared = servers.cache_root() / "servers" / f"v{version}-n{max_name}"
    if _has_libs(shared):
        return shared
    build = servers.cache_root() / "bench" / f"ggml-v{version}-n{max_name}"
    if _has_libs(build):
        return build
    tree = servers.llama_tree(version)
    defs = f"-DGGML_MAX_NAME={max_name}"
    _run(
        [
            "cmake",
            "-S",
            str(tree),
            "-B",
            str(build),
            "-G",
            "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_RPC=ON",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_TOOLS=OFF",
            "-DGGML_NATIVE=OFF",
            "-DGGML_RPC_RDMA=OFF",
            f"-DCMAKE_C_FLAGS={defs}",
            f"-DCMAKE_CXX_FLAGS={defs}",
        ]
    )
    _run(["cmake", "--build", str(build), "--target", "ggml", "ggml-rpc"])
    return build


def native_binary(version: str, max_name: int = 64) -> Path:
    """Path of the native baseline client for llama-cpp-python==version (built once)."""
    build = ggml_build(version, max_name)
    src = build / "ggml" / "src"
    libs = [src / lib for lib in LIBS]
    cache = (build / "CMakeCache.txt").read_text(errors="replace")
    openmp = "GGML_OPENMP_ENABLED:INTERNAL=ON" in cache
    include = servers.llama_tree(version) / "ggml" / "include"
    stamp_in = hashlib.sha256(SOURCE.read_bytes())
    for lib in libs:
        st = lib.stat()
        stamp_in.update(f"{lib}:{st.st_size}:{st.st_mtime_ns}".encode())
    stamp_in.update(f"{max_name}:{openmp}".encode())
    out_dir = servers.cache_root() / "bench" / f"native-v{version}-n{max_name}"
    binary = out_dir / "rpc-native-bench"
    stamp = out_dir / "stamp"
    if binary.is_file() and stamp.is_file() and stamp.read_text() == stamp_in.hexdigest():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    cxx = shutil.which("c++") or shutil.which("g++") or "c++"
    tmp = out_dir / "rpc-native-bench.tmp"
    _run(
        [
            cxx,
            "-O2",
            "-std=c++17",
            f"-DGGML_MAX_NAME={max_name}",
            f"-I{include}",
            str(SOURCE),
            *map(str, libs),
            *(["-fopenmp"] if openmp else []),
            "-lpthread",
            "-ldl",
            "-lm",
            "-o",
            str(tmp),
        ]
    )
    tmp.replace(binary)
    stamp.write_text(stamp_in.hexdigest())
    return binary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("version", help="llama-cpp-python sdist version, e.g. 0.3.35")
    p.add_argument("--max-name", type=int, default=64)
    args = p.parse_args()
    print(native_binary(args.version, args.max_name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
