"""Every command keeps the CLI contract: --version, --json, and usage errors as
one ``error:`` line plus one ``hint:`` line with exit code 2 (never argparse's
usage block, never a traceback)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sdrpc_build import __version__
from sdrpc_build.cli import bench, build, check, doctor, launch, launch_ctl, quickstart

Main = Callable[[list[str]], int]

COMMANDS: dict[str, Main] = {
    "sdrpc-build": build.main,
    "sdrpc-check": check.main,
    "sdrpc-launch": launch.main,
    "sdrpc-bench": bench.main,
    "sdrpc doctor": doctor.main,
    "sdrpc quickstart": quickstart.main,
    "sdrpc-launch status": lambda argv: launch_ctl.main(["status", *argv]),
    "sdrpc-launch stop": lambda argv: launch_ctl.main(["stop", *argv]),
}


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_version(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert COMMANDS[prog](["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{prog} {__version__}"


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_json_is_offered(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert COMMANDS[prog](["--help"]) == 0
    assert "--json" in capsys.readouterr().out


@pytest.mark.parametrize("prog", list(COMMANDS))
@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--json=maybe"]])
def test_usage_error_is_one_line_and_a_hint(
    prog: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert COMMANDS[prog](argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith(f"{prog}: error: ")
    assert err[1] == f"{prog}: hint: '{prog} --help' lists the options and their values"


@pytest.mark.parametrize(
    ("prog", "argv"),
    [
        ("sdrpc-build", ["--max-name", "twelve"]),
        ("sdrpc-check", ["127.0.0.1:50052", "--timeout", "soon"]),
        ("sdrpc-launch", ["-p", "port"]),
        ("sdrpc quickstart", ["-p", "x"]),
    ],
)
def test_bad_typed_value_names_the_flag(
    prog: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert COMMANDS[prog](argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    flag = next(a for a in argv if a.startswith("-"))
    assert flag in err.splitlines()[0]
    assert "hint:" in err
