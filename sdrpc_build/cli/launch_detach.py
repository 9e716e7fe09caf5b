"""``sdrpc-launch --detach``: the output of a background start (the logic: ``launch.detach``).

While the detached supervisor starts, its events are shown as they come; on success the
``--rpc-servers`` string, the device map and how to reach the instance; on failure one JSON
object (``--json``) and the error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

from sdrpc_build.cli._common import out_console
from sdrpc_build.cli.launch_report import Reporter, row_json
from sdrpc_build.launch.detach import DetachedStartError, DetachRequest, Started, start_detached
from sdrpc_build.launch.instance import instance_flag
from sdrpc_build.launch.settings import Policy
from sdrpc_build.launch.supervisor import DeviceRow, Event

__all__ = ["detach"]


def detach(
    argv: list[str],
    instance: str,
    env: Mapping[str, str],
    run_dir: Path,
    log_dir: Path,
    policy: Policy,
    as_json: bool,
) -> int:
    """Start ``sdrpc-launch ARGV`` in the background; 0 once every server is ready."""
    reporter = Reporter(as_json=False, quiet=True, specs=[])

    def on_event(e: Event) -> None:
        if not as_json and e.kind not in ("fatal", "restarting"):
            reporter.event(e)  # (a failure's tail comes once, with the error)

    req = DetachRequest(
        instance=instance,
        command=lambda fd: [
            sys.executable,
            "-m",
            "sdrpc_build.cli.launch",
            *argv,
            "--_ready-fd",
            str(fd),
        ],
        env=env,
        run_dir=run_dir,
        log_dir=log_dir,
        policy=policy,
    )
    try:
        started = start_detached(req, on_event=on_event, warn=reporter.warn)
    except DetachedStartError as err:
        if as_json:
            _emit(
                {
                    "ok": False,
                    "error": err.message,
                    "exit_code": err.exit_code,
                    "supervisor_pid": err.supervisor_pid,
                    "supervisor_log": str(err.log),
                }
            )
        raise
    if as_json:
        _emit(_started_json(started))
    else:
        _print_started(started)
    return 0


def _emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _rows(started: Started) -> list[DeviceRow]:
    rows: list[DeviceRow] = list(started.ready.data["devices"])  # type: ignore[call-overload]
    return rows


def _started_json(s: Started) -> dict[str, object]:
    return {
        "ok": True,
        "instance": s.instance,
        "supervisor_pid": s.supervisor_pid,
        "state_file": str(s.state_file),
        "supervisor_log": str(s.log),
        "rpc_servers": str(s.ready.data["rpc_servers"]),
        "device_map": [row_json(r) for r in _rows(s)],
        "servers": [
            {
                "name": r.name,
                "endpoint": r.endpoint,
                "pid": r.process.pid if r.process else None,
                "log": str(r.log),
            }
            for r in (s.state.servers if s.state else ())
        ],
        "warnings": list(s.warnings),
    }


def _print_started(s: Started) -> None:
    rows = _rows(s)
    rep = Reporter(as_json=False, quiet=True, specs=[])
    rep.width = max((len(r.server) for r in rows), default=4)
    rep.event(s.ready)
    flag = instance_flag(s.instance)
    out = out_console()
    rep.say(
        f"running in the background: instance {s.instance!r}, supervisor pid {s.supervisor_pid}"
    )
    out.print(f"    logs:   {s.log.parent} (supervisor: {s.log.name})", highlight=False)
    out.print(f"    status: sdrpc-launch status{flag}", highlight=False)
    out.print(f"    stop:   sdrpc-launch stop{flag}", highlight=False)
