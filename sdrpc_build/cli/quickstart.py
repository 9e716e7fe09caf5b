"""sdrpc quickstart: the whole job on an embedded default that needs no GitHub.

Build a CPU server for the llama.cpp commit that sd.cpp master pinned in
2026-08's protocol family (llama.cpp 4df29be, protocol 5.0.0, GGML_MAX_NAME 160)
from the llama-cpp-python 0.3.35 sdist on PyPI, launch it on 127.0.0.1, check
it with the ggml RPC protocol, print the sd-cli command line, and stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from sdrpc_build.build import BuildOptions, build
from sdrpc_build.cli._common import run_main
from sdrpc_build.errors import LaunchError
from sdrpc_build.paths import cache_dir
from sdrpc_build.pins import Pin, SdPins

__all__ = ["DEFAULT_PINS", "main"]

PROG = "sdrpc quickstart"
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _body(args: argparse.Namespace) -> int:
    from sdrpc_build.check import device_map
    from sdrpc_build.protocol.client import probe

    root = cache_dir(os.environ, args.cache_dir)
    print(
        f"[1/3] build: llama.cpp {DEFAULT_PINS.llama_commit.value[:12]}, GGML_MAX_NAME=160, "
        f"CPU, source {DEFAULT_SDIST} (cache {root})",
        flush=True,
    )
    res = build(DEFAULT_PINS, BuildOptions(cache_root=root, llama_sdist=DEFAULT_SDIST), os.environ)
    m = res.manifest
    print(
        f"      {'cache hit' if res.cache_hit else f'built in {res.seconds:.0f}s'}, "
        f"verified={m.verified}: {m.binary}",
        flush=True,
    )
    port = args.port or _free_port()
    argv = [str(m.binary), "-H", "127.0.0.1", "-p", str(port)]
    if shutil.which("stdbuf"):
        argv = ["stdbuf", "-oL", *argv]
    print(f"[2/3] launch: {' '.join(argv)}", flush=True)
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        result = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            r = probe("127.0.0.1", port, timeout=2.0, expect_max_name=160)
            if r.status == "ok":
                result = r
                break
            time.sleep(0.1)
        if result is None:
            raise LaunchError(
                "the server did not become ready",
                hint=f"run {m.binary} -p {port} by hand to see why",
            )
        print(
            f"[3/3] check: 127.0.0.1:{port} protocol "
            f"{'.'.join(map(str, result.protocol or ()))}, GGML_MAX_NAME {result.max_name}, "
            f"{len(result.devices)} device(s)",
            flush=True,
        )
        ok = result.protocol is not None and result.protocol[0] == 5 and result.max_name == 160
        for d in device_map([result]):
            print(
                f"      {d.name}: {d.endpoint} device {d.index}, "
                f"{d.free // 2**20} MiB free of {d.total // 2**20} MiB"
            )
        print(f"sd-cli --rpc-servers 127.0.0.1:{port} --backend RPC0 ...")
        print("quickstart: " + ("OK, the server is compatible" if ok else "FAILED"))
        return 0 if ok else 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--cache-dir", type=Path, help="cache root (env SDRPC_CACHE_DIR)")
    p.add_argument("-p", "--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    return run_main(PROG, lambda: _body(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
