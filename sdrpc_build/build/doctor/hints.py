"""The install command for a missing machine-wide tool, per platform.

What a backend needs (nvcc, cuBLAS, Vulkan headers, ...) says its own install
command in its recipe (``install.<platform>`` of each ``[[requires]]``).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["install_hint"]

_INSTALL: Mapping[str, Mapping[str, str]] = {
    "cmake": {"*": "python -m pip install 'cmake>=3.21' (a dependency of sdrpc)"},
    "ninja": {"*": "python -m pip install ninja (a dependency of sdrpc)"},
    "c-compiler": {
        "linux": "apt-get install build-essential (Fedora: dnf install gcc gcc-c++)",
        "macos": "xcode-select --install",
        "windows": "install Visual Studio 2022 Build Tools (C++ workload) and run sdrpc from "
        "a Developer PowerShell",
    },
    "git": {
        "linux": "apt-get install git",
        "macos": "xcode-select --install",
        "windows": "winget install Git.Git",
    },
    "ccache": {
        "linux": "apt-get install ccache",
        "macos": "brew install ccache",
        "windows": "winget install Ccache.Ccache",
    },
    "nvidia-driver": {
        "linux": "install the NVIDIA driver (Debian/Ubuntu: apt-get install "
        "nvidia-driver); only needed to run the server here",
        "windows": "install the NVIDIA driver; only needed to run the server here",
    },
    "vulkan-driver": {
        "linux": "apt-get install vulkan-tools mesa-vulkan-drivers (lavapipe: a "
        "CPU device for tests); only needed to run the server here",
        "windows": "install your GPU driver (it ships the Vulkan runtime) and "
        "the Vulkan SDK for vulkaninfo",
        "macos": "install the LunarG Vulkan SDK (MoltenVK)",
    },
    "rocm-driver": {
        "linux": "install the amdgpu driver and ROCm (rocminfo); only needed to run "
        "the server here",
        "windows": "install the AMD Adrenalin driver",
    },
}


def install_hint(name: str, platform: str) -> str:
    """What to run on ``platform`` to get ``name``; a generic line for unknown tools."""
    hints = _INSTALL.get(name, {})
    return hints.get(platform) or hints.get("*") or f"install {name} and put it on PATH"
