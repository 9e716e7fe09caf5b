"""sdrpc cache: survey sizes per kind; --prune never removes what is in use."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from sdrpc_build.build.diskuse import busy_paths, plan_prune, remove_entries, survey
from sdrpc_build.build.store import Manifest, SourceRef, install_entry, list_manifests
from sdrpc_build.cli import cache as cache_cli

COMMITS = ["a" * 40, "b" * 40, "c" * 40]


def _entry(root: Path, key: str, commit: str, created: str, binary: Path) -> None:
    manifest = Manifest(
        backend="cpu",
        commit=commit,
        max_name=160,
        target="ggml-rpc-server",
        created=created,
        source=SourceRef("sdist", f"llama-cpp-python=={key[-1]}.0"),
        verify={"ok": True},
    )
    install_entry(root / "artifacts", key, binary, manifest)
    (root / "builds" / key).mkdir(parents=True)
    (root / "builds" / key / "CMakeCache.txt").write_text("x" * 100)
    (root / "sources" / commit).mkdir(parents=True, exist_ok=True)
    (root / "sources" / commit / "CMakeLists.txt").write_text("y" * 1000)
    (root / "downloads").mkdir(exist_ok=True)
    (root / "downloads" / f"llama_cpp_python-{key[-1]}.0.tar.gz").write_bytes(b"z" * 10)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "cache"
    binary = tmp_path / "ggml-rpc-server"
    shutil.copy2("/bin/sleep", binary)
    for i, commit in enumerate(COMMITS):
        _entry(r, f"cpu-k{i}", commit, f"2026-11-2{i}T00:00:00Z", binary)
    (r / "logs").mkdir()
    (r / "logs" / "rpc-1.log").write_text("old\n")
    (r / "run").mkdir()
    (r / "run" / "default.json").write_text("{}")
    (r / "rpc-cache").mkdir()
    (r / "rpc-cache" / "0123456789abcdef").write_bytes(b"t" * 50)
    return r


def test_survey_counts_each_kind(root: Path) -> None:
    entries = survey(root)
    kinds = {e.category for e in entries}
    assert kinds == {"artifacts", "builds", "sources", "downloads", "logs", "run", "rpc-cache"}
    src = [e for e in entries if e.category == "sources"]
    assert len(src) == 3 and all(e.size == 1000 for e in src)


def test_prune_keeps_newest_and_their_inputs(root: Path) -> None:
    doomed = plan_prune(survey(root), list_manifests(root / "artifacts"), keep=1, busy=set())
    names = {(e.category, e.path.name) for e in doomed}
    assert ("artifacts", "cpu-k2") not in names  # the newest
    assert {("artifacts", "cpu-k0"), ("artifacts", "cpu-k1")} <= names
    assert ("sources", COMMITS[2]) not in names and ("sources", COMMITS[0]) in names
    assert ("downloads", "llama_cpp_python-2.0.tar.gz") not in names
    assert ("downloads", "llama_cpp_python-0.0.tar.gz") in names
    assert {("builds", "cpu-k0"), ("builds", "cpu-k2"), ("logs", "rpc-1.log")} <= names
    assert not any(c in ("run", "rpc-cache") for c, _ in names)


def test_prune_keeps_a_log_that_is_open(root: Path) -> None:
    log = root / "logs" / "rpc-1.log"
    with log.open("a"):
        doomed = plan_prune(survey(root), [], keep=0, busy=busy_paths(root))
    assert log not in {e.path for e in doomed}


def test_remove_skips_an_entry_whose_build_lock_is_held(root: Path) -> None:
    (root / "locks").mkdir()
    lock = FileLock(str(root / "locks" / "cpu-k1.lock"))
    entries = [e for e in survey(root) if e.path.name in ("cpu-k1", "cpu-k2")]
    with lock:
        removed, skipped = remove_entries(root, entries)
    assert {e.path.name for e, _ in skipped} == {"cpu-k1"}
    assert {e.path.name for e in removed} == {"cpu-k2"}
    assert (root / "artifacts" / "cpu-k1").is_dir() and not (root / "artifacts" / "cpu-k2").exists()


def test_cli_prune_json_and_dry_run(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p for p in root.rglob("*"))
    assert cache_cli.main(["--cache-dir", str(root), "--prune", "--keep", "1", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out
    assert sorted(p for p in root.rglob("*")) == before
    assert cache_cli.main(["--cache-dir", str(root), "--prune", "--keep", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prune"]["freed_bytes"] > 0 and not doc["prune"]["skipped"]
    assert [m.key for m in list_manifests(root / "artifacts")] == ["cpu-k2"]
    assert (root / "run" / "default.json").exists() and (root / "rpc-cache").is_dir()


@pytest.mark.parametrize("argv", [["--keep", "²"], ["--keep", "-1"], ["--dry-run"]])
def test_cli_bad_input(argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cache_cli.main(["--cache-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert "hint:" in err and "Traceback" not in err


def test_unreadable_category_is_a_store_error(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        # root reads everything: make the folder a file instead, which nobody can list
        shutil.rmtree(root / "logs")
        (root / "logs").write_text("")
        assert cache_cli.main(["--cache-dir", str(root)]) == 9
    else:
        (root / "logs").chmod(0)
        try:
            assert cache_cli.main(["--cache-dir", str(root)]) == 9
        finally:
            (root / "logs").chmod(0o700)
    assert "hint:" in capsys.readouterr().err
