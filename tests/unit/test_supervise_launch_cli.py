"""sdrpc-launch's argument handling and early errors (nothing is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdrpc_build.cli.launch import main


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    b = tmp_path / "ggml-rpc-server"
    b.write_text("#!/bin/sh\n")
    b.chmod(0o755)
    return b


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_missing_binary_exit_25(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "--binary", str(tmp_path / "nope"))
    assert code == 25
    assert "sdrpc-launch: error: server binary" in err
    assert "Traceback" not in err


def test_ipv6_host_exit_24(capsys: pytest.CaptureFixture[str], binary: Path) -> None:
    code, err = run(capsys, "--binary", str(binary), "--host", "::1")
    assert code == 24
    assert "IPv6" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "NOEQUALS"], "is not KEY=VALUE"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["-p", "70000"], "out of range"),
        (["--cache-max-size", "lots"], "invalid size"),
        (["--build", "abc"], "--binary or --build"),
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str], binary: Path, argv: list[str], message: str
) -> None:
    code, err = run(capsys, "--binary", str(binary), *argv)
    assert code == 2
    assert message in err


def test_config_refuses_per_server_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[[server]]\nport = 1\n")
    code, err = run(capsys, "--config", str(cfg), "-p", "5")
    assert code == 2
    assert "--port cannot be combined with --config" in err


def test_config_error_exit_21(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[[server]]\nprot = 1\n")
    code, err = run(capsys, "--config", str(cfg))
    assert code == 21
    assert "did you mean 'port'" in err
