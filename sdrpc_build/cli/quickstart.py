"""sdrpc quickstart: the whole job on an embedded default that needs no GitHub.

Build a CPU server for the llama.cpp commit that sd.cpp master pinned in
2026-08's protocol family (llama.cpp 4df29be, protocol 5.0.0, GGML_MAX_NAME 160)
from the llama-cpp-python 0.3.35 sdist on PyPI, launch it on 127.0.0.1, check
it with the ggml RPC protocol, print the sd-cli command line, and stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from sdrpc_build.build.pins import Pin, SdPins
from sdrpc_build.build.pipeline import BuildOptions, build
from sdrpc_build.cli._common import Parser, run_parsed
from sdrpc_build.cli.build_report import build_reporter
from sdrpc_build.errors import ExitCode, LaunchError
from sdrpc_build.launch.procs import stop_process
from sdrpc_build.paths import cache_dir
from sdrpc_build.run import run

__all__ = ["DEFAULT_PINS", "main"]

PROG = "sdrpc quickstart"
#: seconds the check step may take (sdrpc-check itself ends within 9 s by default)
CHECK_TIMEOUT = 60.0
DEFAULT_SDIST = "llama-cpp-python==0.3.35"
_EMBEDDED = "embedded default (sd.cpp master 2026-08, RPC 5.x)"
DEFAULT_PINS = SdPins(
    llama_commit=Pin("4df29be4f4c3673f428170fda944a5b19f743bb8", _EMBEDDED),
    max_name=Pin(160, _EMBEDDED),
    client_protocol=Pin((5, 0, 0), _EMBEDDED),
    ggml_url=Pin(None, "not needed"),
    ggml_commit=Pin(None, "not needed"),
    sd_commit=Pin(None, "not needed"),
    rpc_client=Pin(True, _EMBEDDED),
    origin=_EMBEDDED,
)


def _read_events(proc: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    """JSON events from sdrpc-launch until all servers are ready (bounded by ``deadline``)."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "all-ready":
            return dict(event)
        if event.get("event") == "fatal":
            break
    raise LaunchError(
        "sdrpc-launch did not report the server ready",
        hint="run the launch step by hand: sdrpc-launch --binary BINARY -p 0",
    )


def _body(args: argparse.Namespace) -> int:
    # progress goes to stderr under --json, so stdout carries one JSON object
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    root = cache_dir(os.environ, args.cache_dir)
    say(
        f"[1/3] sdrpc-build: llama.cpp {DEFAULT_PINS.llama_commit.value[:12]}, "
        f"GGML_MAX_NAME=160, CPU, source {DEFAULT_SDIST} (cache {root})"
    )
    with build_reporter(PROG) as rep:  # progress on stderr, plain lines when piped
        res = build(
            DEFAULT_PINS, BuildOptions(cache_root=root, llama_sdist=DEFAULT_SDIST), os.environ, rep
        )
    m = res.manifest
    how = "cache hit" if res.cache_hit else f"built in {res.seconds:.0f}s"
    say(f"      {how}, verified={m.verified}: {m.binary}")
    argv = [
        sys.executable,
        "-m",
        "sdrpc_build.cli.launch",
        "--binary",
        str(m.binary),
        "-p",
        str(args.port),
        "--json",
        "-q",
        "--cache-dir",
        str(root),
    ]
    say("[2/3] sdrpc-launch --binary ... -p " + str(args.port))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = _read_events(proc, time.monotonic() + 60)
        endpoint = str(ready["rpc_servers"])
        say(f"      ready: {endpoint}")
        expect = ["--expect-proto", "5.0.0", "--expect-max-name", "160"]
        say(f"[3/3] sdrpc-check {endpoint} {' '.join(expect)}")
        check_argv = [sys.executable, "-m", "sdrpc_build.cli.check", endpoint, *expect]
        if args.json:
            check_argv.append("--json")
        # sdrpc-check ends within 3 x its --timeout; CHECK_TIMEOUT only guards against a hang
        done = run(check_argv, timeout=CHECK_TIMEOUT, capture=args.json)
        sys.stderr.write(done.stderr)
        rc = ExitCode.BUSY if done.returncode is None else done.returncode
        if done.problem:
            say(f"      sdrpc-check: {done.problem}")
        report: Any = None
        with contextlib.suppress(ValueError):
            report = json.loads(done.stdout) if args.json else None
        ok = rc == 0
        if ok:
            say(f"sd-cli --rpc-servers {endpoint} --backend RPC0 ...")
            say("quickstart: OK: built, launched and checked a compatible server")
        else:
            say(f"quickstart: FAILED: sdrpc-check exited {rc}")
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": ok,
                        "binary": str(m.binary),
                        "key": m.key,
                        "cache_hit": res.cache_hit,
                        "rpc_servers": endpoint,
                        "sd_cli": f"--rpc-servers {endpoint} --backend RPC0",
                        "check_exit_code": rc,
                        "check": report,
                    }
                )
            )
        return rc
    finally:
        # SIGINT to the launcher alone, as Ctrl-C would: it stops its servers itself
        stop_process(proc, signal.SIGINT, grace=15, group=False)


def main(argv: Optional[list[str]] = None) -> int:
    p = Parser(
        prog=PROG,
        description=__doc__,
        exit_codes=(
            ExitCode.OK,
            ExitCode.USAGE,
            *(c for c in ExitCode if ExitCode.PINS <= c <= ExitCode.PROTOCOL),
            ExitCode.LAUNCH,
            ExitCode.INTERRUPTED,
        ),
    )
    p.add_argument("--cache-dir", type=Path, help="cache root (env SDRPC_CACHE_DIR)")
    p.add_argument("-p", "--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument(
        "--json", action="store_true", help="one JSON object on stdout; progress on stderr"
    )
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return run_parsed(PROG, p, argv, _body)


if __name__ == "__main__":
    sys.exit(main())
