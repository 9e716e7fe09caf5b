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
        (["--threads", "0"], "--threads must be a whole number from 1 to 4096"),
        (["-p", "70000"], "--port must be a whole number from 0 to 65535"),
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


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--failure-window", "-5"], "--failure-window"),
        (["--failure-window", "nan"], "--failure-window"),
        (["--ready-timeout", "-1"], "--ready-timeout"),
        (["--ready-timeout", "nan"], "--ready-timeout"),
        (["--ready-timeout", "inf"], "--ready-timeout"),
        (["--stop-timeout", "-1"], "--stop-timeout"),
        (["--max-failures", "0"], "--max-failures"),
        (["--max-failures", "-3"], "--max-failures"),
        (["-p", "5²"], "--port"),
        (["-p", "9" * 400], "--port"),
        (["--threads", "²"], "--threads"),
        (["--threads", "9" * 400], "--threads"),
        (["--cache-max-size", "9" * 400], "--cache-max-size"),
        (["--cache-max-size", "9" * 400 + "G"], "--cache-max-size"),
        (["--cache-max-size", "5²G"], "--cache-max-size"),
    ],
)
def test_bad_numbers_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], binary: Path, argv: list[str], flag: str
) -> None:
    code, err = run(capsys, "--binary", str(binary), "-q", *argv)
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith(f"sdrpc-launch: error: {flag}")
    assert len(lines[0]) < 150
    assert lines[1].startswith("sdrpc-launch: hint: ")
    assert len(lines) == 2


def test_bad_numbers_refused_before_a_detached_start(
    capsys: pytest.CaptureFixture[str], binary: Path, tmp_path: Path
) -> None:
    argv = ["--binary", str(binary), "--cache-dir", str(tmp_path), "--detach"]
    code, err = run(capsys, *argv, "--max-failures", "0")
    assert code == 2
    assert "--max-failures must be" in err
    assert not (tmp_path / "run").exists()  # nothing was started


def _config(tmp_path: Path, text: str | bytes) -> Path:
    cfg = tmp_path / "servers.toml"
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    return cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[supervise]\nfailure-window = -5\n", "[supervise]: 'failure-window' must be"),
        ("[supervise]\nready-timeout = nan\n", "[supervise]: 'ready-timeout' must be"),
        ("[supervise]\nready-timeout = inf\n", "[supervise]: 'ready-timeout' must be"),
        ("[supervise]\nstop-timeout = -1\n", "[supervise]: 'stop-timeout' must be"),
        ("[supervise]\nmax-failures = 0\n", "[supervise]: 'max-failures' must be"),
        ('[[server]]\nenv = { "A=B" = "1" }\n', "invalid environment variable name 'A=B'"),
        ('[[server]]\nenv = { A = "x\\u0000" }\n', "the value of A contains a NUL character"),
        ("[[server]]\nport = " + "9" * 400 + "\n", "'port' must be a whole number"),
        ('[[server]]\ncache-max-size = "' + "9" * 400 + 'G"\n', "invalid size"),
    ],
)
def test_bad_config_exit_21_naming_the_key(
    capsys: pytest.CaptureFixture[str], binary: Path, tmp_path: Path, text: str, message: str
) -> None:
    if not text.startswith("[[server]]"):
        text += f'[[server]]\nbinary = "{binary}"\nport = 0\n'
    code, err = run(capsys, "-q", "--config", str(_config(tmp_path, text)))
    assert code == 21
    lines = err.splitlines()
    assert message in lines[0]
    assert len(lines[0]) < 300
    assert lines[1].startswith("sdrpc-launch: hint: ")


def test_config_file_errors_exit_21(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    latin1 = _config(tmp_path, b'[[server]]\nname = "caf\xe9"\n')
    code, err = run(capsys, "--config", str(latin1))
    assert (code, "is not UTF-8 text" in err, "hint:" in err) == (21, True, True)
    code, err = run(capsys, "--config", str(tmp_path))  # a directory: cannot be read
    assert (code, "cannot read" in err, "hint:" in err) == (21, True, True)
    code, err = run(capsys, "--config", "/tmp/" + "c" * 100_000)
    assert (code, "cannot read" in err) == (21, True)
    assert len(err) < 1000


def test_duplicate_ports_in_config_exit_21(
    capsys: pytest.CaptureFixture[str], binary: Path, tmp_path: Path
) -> None:
    server = f'[[server]]\nbinary = "{binary}"\nport = 50999\n'
    code, err = run(capsys, "--config", str(_config(tmp_path, server + "\n" + server)))
    assert code == 21
    assert "[[server]] #2: port 50999 is given to two servers" in err


def test_missing_address_with_port_0_exit_22(
    capsys: pytest.CaptureFixture[str], binary: Path
) -> None:
    # no packet is sent: binding a local socket to an address we lack fails at once
    code, err = run(capsys, "--binary", str(binary), "--host", "10.255.255.1", "-p", "0")
    assert code == 22
    assert "this machine has no address 10.255.255.1" in err
    assert "hint:" in err


def test_long_binary_path_exit_25(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "--binary", "/tmp/" + "b" * 100_000)
    assert code == 25
    assert "File name too long" in err
    assert len(err) < 1000


@pytest.mark.parametrize("where", ["file", "sys", "long"])
@pytest.mark.parametrize("detach", [False, True])
def test_unwritable_cache_dir_exit_20(
    capsys: pytest.CaptureFixture[str], binary: Path, tmp_path: Path, where: str, detach: bool
) -> None:
    if where == "file":
        cache = tmp_path / "a-file"
        cache.write_text("")
    elif where == "sys":
        cache = Path("/sys/sdrpc-test-cache")  # read-only for everybody, root included
    else:
        cache = tmp_path / ("d" * 100_000)
    extra = ["--detach"] if detach else []
    code, err = run(capsys, "--binary", str(binary), "-p", "0", "--cache-dir", str(cache), *extra)
    assert code == 20
    lines = err.splitlines()
    assert lines[0].startswith("sdrpc-launch: error: cannot write ")
    assert len(lines[0]) < 400
    assert lines[1].startswith("sdrpc-launch: hint: ")


def test_unreadable_artifact_store_exit_9(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "--cache-dir", "/tmp/" + "s" * 100_000, "--backend", "cpu")
    assert code == 9
    assert "cannot read the" in err and "store" in err
    assert "hint:" in err
    assert len(err) < 1000


@pytest.mark.parametrize("host", ["a" * 400, "a..b"])
def test_host_names_that_cannot_be_encoded_exit_24(
    capsys: pytest.CaptureFixture[str], binary: Path, host: str
) -> None:
    code, err = run(capsys, "--binary", str(binary), "-p", "0", "--host", host)
    assert code == 24
    assert "does not resolve to an IPv4 address" in err
