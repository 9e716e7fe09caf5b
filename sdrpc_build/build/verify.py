"""Verify a built server with a real handshake before it enters the store.

Start the binary on 127.0.0.1 on a free port, wait (bounded) until it answers
a ggml RPC HELLO and the GGML_MAX_NAME probe, compare what it reports with
what the tree and the client expect, read its device list from the banner,
and stop it (SIGTERM, then SIGKILL), always.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdrpc_build.errors import VerifyError

__all__ = ["VerifyResult", "judge_verification", "verify_binary"]


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    protocol: Optional[str]
    max_name: Optional[int]
    devices: tuple[str, ...]
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    endpoint: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "protocol": self.protocol,
            "max_name": self.max_name,
            "devices": list(self.devices),
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def judge_verification(
    *,
    reported: Optional[tuple[int, int, int]],
    tree_protocol: Optional[tuple[int, int, int]],
    client_protocol: Optional[tuple[int, int, int]],
    detected_max_name: Optional[int],
    max_name: int,
    devices: tuple[str, ...],
    device_prefix: str,
) -> tuple[list[str], list[str]]:
    """Pure: (problems, warnings) for what a server reported against what was expected."""
    problems: list[str] = []
    warnings: list[str] = []
    if reported is None:
        problems.append("the server did not answer a ggml RPC HELLO")
        return problems, warnings
    rv = ".".join(map(str, reported))
    if tree_protocol is not None and reported != tree_protocol:
        problems.append(
            f"server reports protocol {rv}, the tree's ggml-rpc.h says "
            f"{'.'.join(map(str, tree_protocol))}"
        )
    if client_protocol is not None:
        cv = ".".join(map(str, client_protocol))
        if reported[0] != client_protocol[0]:
            problems.append(f"protocol major {reported[0]} differs from the sd.cpp client's {cv}")
        elif reported[1] > client_protocol[1]:
            problems.append(f"server protocol {rv} is newer than the sd.cpp client's {cv}")
    if detected_max_name is None:
        warnings.append("GGML_MAX_NAME could not be confirmed over the wire")
    elif detected_max_name != max_name:
        problems.append(
            f"server answers with GGML_MAX_NAME {detected_max_name}, expected {max_name}"
        )
    if devices and not any(d.startswith(device_prefix) for d in devices):
        warnings.append(
            f"no {device_prefix} device listed (only {', '.join(devices)}): the "
            "server will run on the CPU; check drivers / visible devices"
        )
    elif not devices:
        warnings.append("the server's device list could not be read from its banner")
    return problems, warnings


def verify_binary(
    binary: Path,
    *,
    max_name: int,
    tree_protocol: Optional[tuple[int, int, int]],
    client_protocol: Optional[tuple[int, int, int]],
    device_prefix: str,
    env: Mapping[str, str],
    timeout: float = 60.0,
) -> VerifyResult:
    """Run the server briefly on loopback and check it answers like the build promised."""
    from sdrpc_build.launch.banner import parse_device_list
    from sdrpc_build.launch.procs import stop_process
    from sdrpc_build.protocol.probe import probe

    port = _free_port()
    argv = [str(binary), "-H", "127.0.0.1", "-p", str(port)]
    stdbuf = shutil.which("stdbuf")
    if stdbuf:
        argv = [stdbuf, "-oL", "-eL", *argv]
    start = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
            )
        except OSError as exc:
            raise VerifyError(
                f"cannot start {binary}: {exc.strerror}",
                hint="the binary may be for another platform",
            ) from None
        result = None
        try:
            deadline = start + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                r = probe("127.0.0.1", port, timeout=2.0, expect_max_name=max_name)
                if r.status == "ok":
                    result = r
                    break
                time.sleep(0.1)
        finally:
            stop_process(proc)
        out.seek(0)
        output = out.read()
    elapsed = time.monotonic() - start
    if result is None:
        tail = "\n".join("  | " + ln for ln in output.strip().splitlines()[-15:])
        why = (
            f"exited with status {proc.returncode} before answering"
            if proc.returncode is not None
            else f"did not answer within {timeout:.0f}s"
        )
        raise VerifyError(
            f"the built server {why}",
            details=tail or None,
            hint="run the binary by hand to see why; rebuild with --force",
        )
    devices = tuple(d.name for d in parse_device_list(output))
    problems, warnings = judge_verification(
        reported=result.protocol,
        tree_protocol=tree_protocol,
        client_protocol=client_protocol,
        detected_max_name=result.max_name,
        max_name=max_name,
        devices=devices,
        device_prefix=device_prefix,
    )
    return VerifyResult(
        ok=not problems,
        protocol=".".join(map(str, result.protocol)) if result.protocol else None,
        max_name=result.max_name,
        devices=devices,
        problems=tuple(problems),
        warnings=tuple(warnings),
        seconds=elapsed,
        endpoint=f"127.0.0.1:{port}",
    )
