"""Verify a built server with a real handshake before it enters the store.

Start the binary on 127.0.0.1 on a free port the way ``sdrpc-launch`` starts servers
(launch's trial run: own process group, parent-death signal, line-buffered output), wait
(bounded) until it answers a ggml RPC HELLO and the GGML_MAX_NAME probe, judge what it reports
with protocol.compat's rules (protocol version, name length) and against the tree's header,
read its device list from the banner, and stop it (SIGTERM, then SIGKILL), always.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdrpc_build.build.url import redact_text
from sdrpc_build.errors import VerifyError
from sdrpc_build.launch.banner import parse_device_list
from sdrpc_build.launch.ports import pick_free_port
from sdrpc_build.launch.procs import line_buffer_prefix
from sdrpc_build.launch.readiness import Readiness, trial_run
from sdrpc_build.protocol.compat import device_problems, name_length_problem, version_problem
from sdrpc_build.protocol.layouts import Version, format_version
from sdrpc_build.protocol.probe import DEADLINE_FACTOR, ProbeResult, probe

__all__ = [
    "PROBE_TIMEOUT",
    "RUNTIME_ENV_PREFIXES",
    "VerifyResult",
    "judge_verification",
    "runtime_env",
    "verify_binary",
]

HOST = "127.0.0.1"
PROBE_TIMEOUT = 2.0  # seconds per exchange of one probe
TAIL = 15  # lines of the server's output shown when it never answered
#: per backend, the environment variables that decide which devices its server sees
#: (loader, drivers, device filters): recorded in the manifest as verification saw them
RUNTIME_ENV_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "vulkan": ("VK_", "GGML_VK_", "MESA_", "LP_", "RADV_", "ANV_"),
    "cuda": ("CUDA_", "GGML_CUDA_"),
    "hip": ("HIP_", "ROCR_", "HSA_", "GGML_HIP_"),
    "sycl": ("ONEAPI_", "SYCL_", "GGML_SYCL_"),
}
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PWD|CREDENTIAL|AUTH|(^|_)KEY($|_)", re.I)


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
    #: a GPU build whose server listed only the CPU: it would compute on the CPU
    cpu_only: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "protocol": self.protocol,
            "max_name": self.max_name,
            "devices": list(self.devices),
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "cpu_only": self.cpu_only,
            "seconds": round(self.seconds, 3),
        }


def runtime_env(
    env: Mapping[str, str], backend: str, visible_devices_env: Optional[str] = None
) -> dict[str, str]:
    """The backend's run-time variables in ``env`` (names and values), for the manifest.

    Never a secret: a name that looks like one is left out, and credentials in a value
    (a URL's userinfo) are masked."""
    prefixes = RUNTIME_ENV_PREFIXES.get(backend, ())
    return {
        k: redact_text(v)
        for k, v in sorted(env.items())
        if (k.startswith(prefixes) or k == visible_devices_env) and not _SECRET_NAME.search(k)
    }


def cpu_only_warning(
    device_prefix: str, devices: tuple[str, ...], visible_env: Optional[str]
) -> str:
    """What to say, loudly, when a GPU build's server lists only the CPU."""
    text = (
        f"ONLY THE CPU: no {device_prefix} device listed (only {', '.join(devices)}): started "
        "in this environment, the server computes on the CPU; check the GPU driver"
    )
    if visible_env:
        text += (
            f" and {visible_env} (a device it does not list is hidden; ggml-vulkan hides "
            "CPU-type devices such as lavapipe unless it lists them)"
            if visible_env == "GGML_VK_VISIBLE_DEVICES"
            else f" and {visible_env} (a device it does not list is hidden)"
        )
    return text + "; the manifest records the environment verification used (verify_env)"


def judge_verification(
    result: ProbeResult,
    *,
    tree_protocol: Optional[Version],
    client_protocol: Optional[Version],
    max_name: int,
    devices: tuple[str, ...],
    device_prefix: str,
    visible_devices_env: Optional[str] = None,
) -> tuple[list[str], list[str]]:
    """Pure: (problems, warnings) for what a server reported against what was expected.

    The client rules are protocol.compat's (``version_problem``,
    ``name_length_problem``, ``device_problems``); the tree's header must match exactly.
    """
    problems: list[str] = []
    warnings: list[str] = []
    reported = result.protocol
    if reported is None:
        problems.append("the server did not answer a ggml RPC HELLO")
        return problems, warnings
    if tree_protocol is not None and reported != tree_protocol:
        problems.append(
            f"server reports protocol {format_version(reported)}, the tree's ggml-rpc.h says "
            f"{format_version(tree_protocol)}"
        )
    if result.max_name is None:
        warnings.append("GGML_MAX_NAME could not be confirmed over the wire")
    if client_protocol is not None:
        problems.extend(filter(None, [version_problem(reported, client_protocol)]))
    if result.max_name is not None:
        problems.extend(filter(None, [name_length_problem(result.max_name, max_name)]))
    problems.extend(device_problems(result))
    if devices and not any(d.startswith(device_prefix) for d in devices):
        warnings.append(cpu_only_warning(device_prefix, devices, visible_devices_env))
    elif not devices:
        warnings.append("the server's device list could not be read from its banner")
    return problems, warnings


def verify_binary(
    binary: Path,
    *,
    max_name: int,
    tree_protocol: Optional[Version],
    client_protocol: Optional[Version],
    device_prefix: str,
    env: Mapping[str, str],
    timeout: float = 60.0,
    visible_devices_env: Optional[str] = None,
) -> VerifyResult:
    """Run the server briefly on loopback and check it answers like the build promised."""
    port = pick_free_port(HOST)
    argv = [*(line_buffer_prefix() or []), str(binary), "-H", HOST, "-p", str(port)]
    answered: list[ProbeResult] = []

    def check(deadline: float) -> Readiness:
        limit = min(deadline, time.monotonic() + DEADLINE_FACTOR * PROBE_TIMEOUT)
        r = probe(HOST, port, timeout=PROBE_TIMEOUT, expect_max_name=max_name, deadline=limit)
        if r.status != "ok":
            return Readiness("retry", "; ".join(r.problems) or r.status)
        answered.append(r)
        return Readiness("ready")

    try:
        run = trial_run(argv, env, check, timeout)
    except (OSError, ValueError) as exc:
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise VerifyError(
            f"cannot start {binary}: {why}", hint="the binary may be for another platform"
        ) from None
    if not answered:
        tail = "\n".join("  | " + ln for ln in run.output.strip().splitlines()[-TAIL:])
        why = (
            f"exited with status {run.returncode} before answering"
            if run.returncode is not None
            else f"did not answer within {timeout:.0f}s"
        )
        raise VerifyError(
            f"the built server {why}",
            details=tail or None,
            hint="run the binary by hand to see why; rebuild with --force",
        )
    result = answered[-1]
    devices = tuple(d.name for d in parse_device_list(run.output))
    problems, warnings = judge_verification(
        result,
        tree_protocol=tree_protocol,
        client_protocol=client_protocol,
        max_name=max_name,
        devices=devices,
        device_prefix=device_prefix,
        visible_devices_env=visible_devices_env,
    )
    return VerifyResult(
        ok=not problems,
        protocol=format_version(result.protocol) if result.protocol else None,
        max_name=result.max_name,
        devices=devices,
        problems=tuple(problems),
        warnings=tuple(warnings),
        seconds=run.seconds,
        endpoint=f"{HOST}:{port}",
        cpu_only=bool(devices) and not any(d.startswith(device_prefix) for d in devices),
    )
