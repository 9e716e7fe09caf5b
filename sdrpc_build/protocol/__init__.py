"""The ggml RPC protocol: sans-I/O codec, one-connection client, and ``probe``."""

from __future__ import annotations

from sdrpc_build.protocol.probe import DeviceInfo, ProbeResult, RpcClient, probe

__all__ = ["DeviceInfo", "ProbeResult", "RpcClient", "probe"]
