"""sdrpc doctor on this real machine: the tools the test-suite itself needs are found."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdrpc_build.cli.main", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_json_finds_the_cpu_toolchain() -> None:
    proc = _doctor("--json", "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["buildable"] == ["cpu"]
    checks = {c["name"]: c for c in doc["checks"]}
    for name in ("cmake", "c-compiler", "cxx-compiler", "git", "disk"):
        assert checks[name]["ok"], checks[name]
    assert checks["cmake"]["detail"][0].isdigit()  # a version was read from the real cmake


def test_doctor_table_lists_every_backend() -> None:
    proc = _doctor()
    assert proc.returncode == 0, proc.stderr
    for backend in ("cpu", "cuda", "vulkan", "metal"):
        assert backend in proc.stdout
    assert "can build here:" in proc.stdout and "cpu" in proc.stdout.split("can build here:")[1]


def test_doctor_unknown_backend_is_one_line() -> None:
    proc = _doctor("--backend", "vulcan")
    assert proc.returncode == 4
    assert "did you mean 'vulkan'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--recipe" not in proc.stderr  # an sdrpc-build option: doctor has none
