"""One host's payload for ``sdrpc up``: a deterministic tar of its servers and unit files.

Members: ``servers/KEY/bin/BINARY``, ``servers/KEY/manifest.json``, ``units/UNIT``. The same
inputs give the same bytes (sorted members, fixed times and owners), so its digest tells the
host side whether anything changed without a copy.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Member", "write_payload"]


@dataclass(frozen=True)
class Member:
    name: str  # path inside the tar
    data: bytes
    mode: int = 0o644


def write_payload(dest: Path, members: Sequence[Member]) -> str:
    """Write the tar to ``dest`` (0600); its sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in sorted(members, key=lambda m: m.name):
            info = tarfile.TarInfo(m.name)
            info.size, info.mode, info.mtime = len(m.data), m.mode, 0
            tar.addfile(info, io.BytesIO(m.data))
    data = buf.getvalue()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()
