"""The umbrella ``sdrpc`` command dispatches to the sdrpc-* entry points lazily."""

from __future__ import annotations

import sys
import types

import pytest

from sdrpc_build.cli import main as umbrella


def test_usage_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert umbrella.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("build", "check", "launch", "bench", "doctor", "quickstart", "cache"):
        assert f"  {name}" in out


def test_no_command_is_a_usage_error_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert umbrella.main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "sdrpc: error: no command given"
    assert err[1].startswith("sdrpc: hint: ") and "cache" in err[1]


def test_dispatch_passes_the_rest_of_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    fake = types.ModuleType("sdrpc_build.cli.bench")

    def fake_main(argv: object = None) -> int:
        seen.append(argv)
        return 7

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sdrpc_build.cli.bench", fake)
    assert umbrella.main(["bench", "--json", "x"]) == 7
    assert seen == [["--json", "x"]]


def test_unknown_command_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert umbrella.main(["lauch"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'lauch' (did you mean 'launch'?)" in err


def test_missing_module_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sdrpc_build.cli.quickstart", None)  # import fails
    assert umbrella.main(["quickstart"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sdrpc: error: the 'quickstart' command is not available")
    assert "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert umbrella.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sdrpc ")
