"""Connection (RpcClient) time limits that need no server: the exchange limit, a slow resolver."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from sdrpc_build.protocol.client import RpcClient
from sdrpc_build.protocol.probe import probe
from sdrpc_build.protocol.transport import TooSlow, Unreachable


def test_exchange_limit_is_timeout_per_request_plus_per_mib() -> None:
    c = RpcClient(timeout=2.0)
    assert c.exchange_limit() == 2.0
    assert c.exchange_limit(3) == 6.0
    assert c.exchange_limit(1, 256 << 20) == 2.0 * 257


def test_a_resolver_that_never_answers_cannot_hold_the_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def stuck(*args: Any, **kwargs: Any) -> Any:
        time.sleep(30)  # a daemon thread: it does not keep the test process alive
        raise socket.gaierror("too late")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    t0 = time.monotonic()
    r = probe("server.example", 50052, timeout=0.3)
    assert time.monotonic() - t0 < 1.0
    assert r.status == "unreachable" and "timed out after 0.3 s" in r.problems[0]


def test_connect_after_the_deadline_is_too_slow() -> None:
    c = RpcClient(timeout=1.0, deadline=time.monotonic() - 1)
    with pytest.raises(TooSlow):
        c.connect("127.0.0.1", 9)


def test_unresolvable_name_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(Unreachable, match="cannot resolve host 'nohost.invalid'"):
        RpcClient(timeout=1.0).connect("nohost.invalid", 1)
