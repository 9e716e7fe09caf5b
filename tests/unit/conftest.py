"""Unit tests are pure: any real subprocess or network connection fails the test."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest


class _Forbidden(AssertionError):
    pass


def _forbid(*_a: Any, **_k: Any) -> Any:
    raise _Forbidden("unit tests must not start processes or open network connections")


@pytest.fixture(autouse=True)
def _no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _forbid)
    monkeypatch.setattr(socket, "create_connection", _forbid)
    monkeypatch.setattr(socket.socket, "connect", _forbid)
