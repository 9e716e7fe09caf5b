"""A battery of bad inputs, each run as a user would: the real console scripts.

Every one must end with its documented exit code (never 1, the internal-error
code), print no traceback, and end its error with a ``hint:`` line. Nothing here
needs the network or builds anything: a bad input is refused before any work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"
BIG = "9" * 400


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    code: int


def _sd_tree(root: Path, name: str, max_name: str = "160", sync: bytes | None = None) -> Path:
    t = root / name
    (t / "ggml" / "scripts").mkdir(parents=True)
    (t / "ggml" / "include").mkdir()
    (t / "CMakeLists.txt").write_text(
        f'project("stable-diffusion")\nadd_definitions(-DGGML_MAX_NAME={max_name})\n',
        encoding="utf-8",
    )
    (t / "ggml" / "scripts" / "sync-llama.last").write_bytes(
        (SHA + "\n").encode() if sync is None else sync
    )
    (t / "ggml" / "include" / "ggml-rpc.h").write_text(
        "#define RPC_PROTO_MAJOR_VERSION 5\n#define RPC_PROTO_MINOR_VERSION 0\n"
        "#define RPC_PROTO_PATCH_VERSION 0\n"
    )
    return t


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files the cases point at: odd trees, configs and cache dirs."""
    d = tmp_path_factory.mktemp("bad")
    _sd_tree(d, "sup2", max_name="1²")
    _sd_tree(d, "huge", max_name=BIG)
    _sd_tree(d, "seven", max_name="7")
    _sd_tree(d, "badsync", sync=b"not a commit\n")
    (d / "empty").mkdir()
    (d / "a-file").write_text("not a directory\n")
    (d / "latin1.toml").write_bytes(b'[[server]]\nname = "caf\xe9"\nbinary = "/bin/true"\n')
    (d / "dup.toml").write_text(
        '[[server]]\nname = "a"\nbinary = "/bin/true"\nport = 50100\n'
        '[[server]]\nname = "b"\nbinary = "/bin/true"\nport = 50100\n'
    )
    (d / "envkey.toml").write_text(
        '[[server]]\nname = "a"\nbinary = "/bin/true"\nport = 50101\nenv = { "A=B" = "1" }\n'
    )
    (d / "envnul.toml").write_text(
        '[[server]]\nname = "a"\nbinary = "/bin/true"\nport = 50102\nenv = { A = "x\\u0000y" }\n'
    )
    (d / "window.toml").write_text(
        '[[server]]\nname = "a"\nbinary = "/bin/false"\nport = 50103\n'
        "[supervisor]\nfailure-window = -5\n"
    )
    (d / "maxfail.toml").write_text(
        '[[server]]\nname = "a"\nbinary = "/bin/false"\nport = 50104\nmax-failures = 0\n'
    )
    (d / "badport.toml").write_text('[[server]]\nname = "a"\nbinary = "/bin/true"\nport = 1e3\n')
    (d / "recipe-latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    (d / "recipe-junk.toml").write_text("this is = = not toml\n")
    return d


def _cases(d: Path) -> dict[str, Case]:
    long_path = "/tmp/" + "x" * 100_000
    pinned = ("sdrpc-build", "--llama-commit", SHA, "--max-name", "160")
    c = {
        # sdrpc (umbrella)
        "sdrpc-no-command": Case(("sdrpc",), 2),
        "sdrpc-unknown": Case(("sdrpc", "biuld"), 2),
        # sdrpc-check
        "check-unicode-port": Case(("sdrpc-check", "127.0.0.1:5²"), 2),
        "check-unicode-proto": Case(("sdrpc-check", "--expect-proto", "5.0.²", "127.0.0.1:1"), 2),
        "check-unicode-name": Case(("sdrpc-check", "--expect-max-name", "1²", "127.0.0.1:1"), 2),
        "check-big-port": Case(("sdrpc-check", f"127.0.0.1:{BIG}"), 2),
        "check-port-70000": Case(("sdrpc-check", "127.0.0.1:70000"), 2),
        "check-port-0": Case(("sdrpc-check", "127.0.0.1:0"), 2),
        "check-no-port": Case(("sdrpc-check", "127.0.0.1:"), 2),
        "check-no-host": Case(("sdrpc-check", ":50052"), 2),
        "check-empty": Case(("sdrpc-check", ""), 2),
        "check-commas": Case(("sdrpc-check", ",,"), 2),
        "check-timeout-nan": Case(("sdrpc-check", "--timeout", "nan", "127.0.0.1:1"), 2),
        "check-timeout-inf": Case(("sdrpc-check", "--timeout", "inf", "127.0.0.1:1"), 2),
        "check-timeout-neg": Case(("sdrpc-check", "--timeout", "-1", "127.0.0.1:1"), 2),
        "check-timeout-big": Case(("sdrpc-check", "--timeout", BIG, "127.0.0.1:1"), 2),
        "check-proto-words": Case(("sdrpc-check", "--expect-proto", "five", "127.0.0.1:1"), 2),
        "check-name-big": Case(("sdrpc-check", "--expect-max-name", BIG, "127.0.0.1:1"), 2),
        "check-sd-cpp-not-a-tree": Case(("sdrpc-check", "--sd-cpp", str(d / "empty"), "x:1"), 3),
        "check-sd-cpp-missing": Case(("sdrpc-check", "--sd-cpp", str(d / "nope"), "x:1"), 3),
        "check-unknown-flag": Case(("sdrpc-check", "--frobnicate", "127.0.0.1:1"), 2),
        # sdrpc-bench
        "bench-unicode-device": Case(("sdrpc-bench", "--device", "²", "127.0.0.1:1"), 2),
        "bench-big-model": Case(("sdrpc-bench", "--model-size", BIG, "127.0.0.1:1"), 2),
        "bench-bad-size": Case(("sdrpc-bench", "--sizes", "4K,lots", "127.0.0.1:1"), 2),
        "bench-unicode-size": Case(("sdrpc-bench", "--sizes", "1²M", "127.0.0.1:1"), 2),
        "bench-timeout-zero": Case(("sdrpc-bench", "--timeout", "0", "127.0.0.1:1"), 2),
        "bench-model-missing": Case(("sdrpc-bench", "--model", str(d / "nope"), "127.0.0.1:1"), 2),
        "bench-unicode-port": Case(("sdrpc-bench", "127.0.0.1:5²"), 2),
        # sdrpc-build (all refused before any network or compile)
        "build-short-commit": Case(
            ("sdrpc-build", "--llama-commit", "abc", "--max-name", "160"), 2
        ),
        "build-commit-no-name": Case(("sdrpc-build", "--llama-commit", SHA, "--dry-run"), 2),
        "build-name-7": Case(
            ("sdrpc-build", "--llama-commit", SHA, "--max-name", "7", "--dry-run"), 2
        ),
        "build-name-100": Case(
            ("sdrpc-build", "--llama-commit", SHA, "--max-name", "100", "--dry-run"), 2
        ),
        "build-name-20-digits": Case(
            ("sdrpc-build", "--llama-commit", SHA, "--max-name", "9" * 20, "--dry-run"), 2
        ),
        "build-name-unicode": Case(
            ("sdrpc-build", "--llama-commit", SHA, "--max-name", "1²", "--dry-run"), 2
        ),
        "build-unknown-backend": Case((*pinned, "--backend", "cuad", "--dry-run"), 4),
        "build-recipe-missing": Case((*pinned, "--recipe", str(d / "nope.toml"), "--dry-run"), 4),
        "build-recipe-latin1": Case(
            (*pinned, "--recipe", str(d / "recipe-latin1.toml"), "--dry-run"), 4
        ),
        "build-recipe-junk": Case(
            (*pinned, "--recipe", str(d / "recipe-junk.toml"), "--dry-run"), 4
        ),
        "build-tree-unicode-name": Case(
            ("sdrpc-build", "--sd-cpp", str(d / "sup2"), "--dry-run"), 3
        ),
        "build-tree-huge-name": Case(("sdrpc-build", "--sd-cpp", str(d / "huge"), "--dry-run"), 3),
        "build-tree-name-7": Case(("sdrpc-build", "--sd-cpp", str(d / "seven"), "--dry-run"), 3),
        "build-tree-bad-sync": Case(
            ("sdrpc-build", "--sd-cpp", str(d / "badsync"), "--dry-run"), 3
        ),
        "build-tree-empty": Case(("sdrpc-build", "--sd-cpp", str(d / "empty"), "--dry-run"), 3),
        "build-tree-is-file": Case(("sdrpc-build", "--sd-cpp", str(d / "a-file"), "--dry-run"), 3),
        "build-tree-long-path": Case(("sdrpc-build", "--sd-cpp", long_path, "--dry-run"), 3),
        "build-define-no-eq": Case(
            ("sdrpc-build", "--sd-cpp", str(d / "sup2"), "-D", "NOEQUALS", "--dry-run"), 2
        ),
        "build-jobs-unicode": Case(("sdrpc-build", "-j", "²", "--dry-run"), 2),
        "build-jobs-zero": Case(("sdrpc-build", "-j", "0", "--dry-run"), 2),
        "build-sd-ref-junk": Case(("sdrpc-build", "--sd-ref", "no-slash-here", "--dry-run"), 2),
        "build-sdist-junk": Case(
            (
                "sdrpc-build",
                "--llama-commit",
                SHA,
                "--max-name",
                "160",
                "--llama-sdist",
                "not a requirement",
            ),
            2,
        ),
        "build-cache-is-file": Case(
            (
                "sdrpc-build",
                "--llama-commit",
                SHA,
                "--max-name",
                "160",
                "--llama-repo",
                "file:///nonexistent",
                "--cache-dir",
                str(d / "a-file"),
            ),
            9,
        ),
        "build-list-cache-is-file": Case(
            ("sdrpc-build", "--list", "--cache-dir", str(d / "a-file")), 9
        ),
        # sdrpc-launch (refused before any server starts)
        "launch-failure-window-neg": Case(
            ("sdrpc-launch", "--binary", "/bin/false", "--failure-window", "-5"), 2
        ),
        "launch-failure-window-nan": Case(
            ("sdrpc-launch", "--binary", "/bin/false", "--failure-window", "nan"), 2
        ),
        "launch-ready-timeout-neg": Case(
            ("sdrpc-launch", "--binary", "/bin/false", "--ready-timeout", "-1"), 2
        ),
        "launch-ready-timeout-nan": Case(
            ("sdrpc-launch", "--binary", "/bin/false", "--ready-timeout", "nan"), 2
        ),
        "launch-ready-timeout-inf": Case(
            ("sdrpc-launch", "--binary", "/bin/false", "--ready-timeout", "inf"), 2
        ),
        "launch-stop-timeout-neg": Case(
            ("sdrpc-launch", "--binary", "/bin/false", "--stop-timeout", "-1"), 2
        ),
        "launch-max-failures-0": Case(
            ("sdrpc-launch", "--binary", "/bin/false", "--max-failures", "0"), 2
        ),
        "launch-max-failures-neg": Case(
            ("sdrpc-launch", "--binary", "/bin/false", "--max-failures", "-3"), 2
        ),
        "launch-port-unicode": Case(("sdrpc-launch", "--binary", "/bin/false", "-p", "5²"), 2),
        "launch-port-big": Case(("sdrpc-launch", "--binary", "/bin/false", "-p", BIG), 2),
        "launch-config-latin1": Case(("sdrpc-launch", "--config", str(d / "latin1.toml")), 21),
        "launch-config-dup-ports": Case(("sdrpc-launch", "--config", str(d / "dup.toml")), 21),
        "launch-config-env-key": Case(("sdrpc-launch", "--config", str(d / "envkey.toml")), 21),
        "launch-config-env-nul": Case(("sdrpc-launch", "--config", str(d / "envnul.toml")), 21),
        "launch-config-max-failures": Case(
            ("sdrpc-launch", "--config", str(d / "maxfail.toml")), 21
        ),
        "launch-config-port-float": Case(("sdrpc-launch", "--config", str(d / "badport.toml")), 21),
        "launch-config-missing": Case(("sdrpc-launch", "--config", str(d / "nope.toml")), 21),
        "launch-config-long-path": Case(("sdrpc-launch", "--config", long_path), 21),
        "launch-config-is-dir": Case(("sdrpc-launch", "--config", str(d / "empty")), 21),
        "launch-bad-instance": Case(("sdrpc-launch", "status", "--instance", "../x"), 2),
        "launch-status-none": Case(("sdrpc-launch", "status", "--instance", "nobody"), 27),
        "launch-stop-none": Case(("sdrpc-launch", "stop", "--instance", "nobody"), 27),
        "launch-stop-timeout-nan": Case(("sdrpc-launch", "stop", "--timeout", "nan"), 2),
        # sdrpc doctor / cache / quickstart
        "doctor-unknown-backend": Case(("sdrpc", "doctor", "--backend", "cuad"), 4),
        "cache-keep-unicode": Case(("sdrpc", "cache", "--keep", "²"), 2),
        "cache-root-is-file": Case(("sdrpc", "cache", "--cache-dir", str(d / "a-file")), 9),
        "quickstart-port-unicode": Case(("sdrpc", "quickstart", "-p", "5²"), 2),
    }
    return c


CASE_IDS = list(_cases(Path("/nonexistent")))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input(case_id: str, lab: Path, tmp_path: Path) -> None:
    case = _cases(lab)[case_id]
    exe = shutil.which(
        case.argv[0], path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    )
    assert exe, f"{case.argv[0]} is not installed"
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "SDRPC_CACHE_DIR": str(tmp_path / "cache"),
        "COLUMNS": "80",
    }
    done = subprocess.run(
        [exe, *case.argv[1:]],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    err = done.stderr
    shown = f"argv={case.argv[:3]}... rc={done.returncode}\nstderr={err[-800:]}"
    assert "Traceback" not in err + done.stdout, shown
    assert done.returncode == case.code, shown
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(": error:" in line for line in lines), shown
    assert lines and ": hint: " in lines[-1], shown


def test_battery_is_large() -> None:
    assert len(CASE_IDS) >= 60
