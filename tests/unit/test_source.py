from __future__ import annotations

import json
from pathlib import Path

from sdrpc_build.source import MARKER, _redact, _sdist_commit, cached_source

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"


def test_credentials_are_redacted_from_urls() -> None:
    assert _redact("https://user:tok3n@example.com/llama.cpp.git") == (
        "https://example.com/llama.cpp.git"
    )
    assert _redact("file:///srv/llama.cpp.git") == "file:///srv/llama.cpp.git"


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
