from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from sdrpc_build.build.sdist import _archive_problem, _sdist_commit
from sdrpc_build.build.source import MARKER, cached_source

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"


def test_cached_source_needs_a_complete_marker(tmp_path: Path) -> None:
    assert cached_source(tmp_path, SHA) is None
    (tmp_path / SHA).mkdir()
    assert cached_source(tmp_path, SHA) is None  # an interrupted fetch: no marker
    (tmp_path / SHA / MARKER).write_text(json.dumps({"commit": "0" * 40}))
    assert cached_source(tmp_path, SHA) is None  # marker for another commit
    (tmp_path / SHA / MARKER).write_text(json.dumps({"commit": SHA, "origin": "x"}))
    hit = cached_source(tmp_path, SHA)
    assert hit is not None
    assert (hit.method, hit.fetched, hit.origin) == ("cache", False, "x")


def test_sdist_commit_from_head_or_packed_refs(tmp_path: Path) -> None:
    (tmp_path / "HEAD").write_text(SHA + "\n")
    assert _sdist_commit(tmp_path) == SHA
    (tmp_path / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "packed-refs").write_text(f"# pack-refs\n{SHA} refs/heads/main\n")
    assert _sdist_commit(tmp_path) == SHA
    assert _sdist_commit(tmp_path / "missing") is None


def _sdist(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(40):
            data = bytes(range(256)) * 64 * (i + 1)
            info = tarfile.TarInfo(f"p-1.0/vendor/f{i}.bin")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_damaged_archives_are_recognised(tmp_path: Path) -> None:
    good = tmp_path / "p-1.0.tar.gz"
    data = _sdist(good)
    assert _archive_problem(good) is None
    cut = tmp_path / "cut.tar.gz"
    for n in (len(data) // 2, len(data) - 4, 100):  # truncated anywhere, even in the trailer
        cut.write_bytes(data[:n])
        assert _archive_problem(cut) is not None, n
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    cut.write_bytes(bytes(flipped))
    assert _archive_problem(cut) is not None
    cut.write_bytes(b"<html>not a tarball</html>")
    assert _archive_problem(cut) is not None
    cut.write_bytes(gzip.compress(b"\0" * 1024))  # a gzip holding no tar members
    assert _archive_problem(cut) is not None
