"""The ggml RPC protocol wing.

``layouts`` (THE per-version table) and ``codec`` (sans-I/O framing and messages),
``transport`` (one TCP connection with its time limits), ``client`` (:class:`RpcClient`,
one session), ``probe`` (:func:`probe`, the health check), ``compat`` (THE
compatibility rules) and ``endpoint`` (``HOST:PORT`` lists as users write them).
"""

from __future__ import annotations

from sdrpc_build.protocol.client import DeviceInfo, RpcClient
from sdrpc_build.protocol.probe import ProbeResult, probe

__all__ = ["DeviceInfo", "ProbeResult", "RpcClient", "probe"]
