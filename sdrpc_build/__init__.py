"""sdrpc: build, launch and check ggml RPC servers for stable-diffusion.cpp."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
