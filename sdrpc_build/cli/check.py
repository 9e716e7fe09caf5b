"""sdrpc-check: is each ggml RPC server compatible with my stable-diffusion.cpp client?

Usage::

    sdrpc-check HOST:PORT[,HOST:PORT...] [--sd-cpp PATH] [--expect-proto X.Y.Z]
                [--expect-max-name N] [--timeout SECONDS] [--json] [--debug]

Servers are probed concurrently: HELLO (version), device inventory, and the
GGML_MAX_NAME the server was built with. Each is judged against the client
(pins read from ``--sd-cpp``; ``--expect-*`` override them), and the device
map sd-cli will build (RPC0, RPC1, ...) is shown. Without any of them there is
no client to compare with: a server that answers is "reachable (no client
given)", never "compatible" (JSON: ``"verdict": "reachable"``,
``"compatible": null``).

Time (``--timeout T``, default 3): every request gets T seconds (plus T per MiB
it moves); each server gets at most 3 x T in all, and since all servers are
probed at the same time the whole command ends within about 3 x T (9 s by
default). A server still answering then is reported "too slow", with what was
learned so far.

Exit codes (when several apply, the highest wins):

==  =============================================================
0   every server is compatible (or reachable, when no client was given)
1   internal error (run again with --debug)
2   usage error (bad option, malformed endpoint list)
3   ``--sd-cpp`` tree gave invalid pins
10  a server is incompatible (protocol major/minor, GGML_MAX_NAME)
11  a server is unreachable (refused, unresolvable, timed out)
12  a server is busy (no reply to HELLO in time: serving another client)
    or too slow (not done within 3 x --timeout)
13  something that is not a ggml RPC server answers on the port
14  a server broke the protocol (truncated or malformed reply, or values no
    real server reports: free memory above total, alignment 0)
130 interrupted
==  =============================================================
"""

from __future__ import annotations

import argparse
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from sdrpc_build.build import pins
from sdrpc_build.cli._common import Parser, out_console, run_parsed
from sdrpc_build.errors import ExitCode, PinsError, ProtocolError, UsageError
from sdrpc_build.protocol.compat import (
    ClientSpec,
    MappedDevice,
    Verdict,
    VerdictKind,
    device_map,
    judge,
)
from sdrpc_build.protocol.endpoint import Endpoint, parse_endpoints, parse_timeout, shown
from sdrpc_build.protocol.layouts import format_version, parse_version
from sdrpc_build.protocol.probe import DEADLINE_FACTOR, MAX_DEVICES, ProbeResult, probe
from sdrpc_build.protocol.tensor import usable_max_name

__all__ = ["EXIT_CODES", "main"]

PROG = "sdrpc-check"
EXIT_CODES: dict[VerdictKind, ExitCode] = {
    "compatible": ExitCode.OK,
    "reachable": ExitCode.OK,
    "incompatible": ExitCode.INCOMPATIBLE,
    "unreachable": ExitCode.UNREACHABLE,
    "busy": ExitCode.BUSY,
    "slow": ExitCode.BUSY,
    "not-rpc": ExitCode.NOT_RPC,
    "error": ExitCode.PROTOCOL,
}
LABELS: dict[VerdictKind, str] = {
    "compatible": "compatible",
    "reachable": "reachable (no client given)",
    "incompatible": "incompatible",
    "unreachable": "unreachable",
    "busy": "busy",
    "slow": "too slow",
    "not-rpc": "not a ggml RPC server",
    "error": "protocol error",
}
MAX_WORKERS = 256
CLIENT_HINT = (
    "give --sd-cpp the root of a stable-diffusion.cpp checkout, or name the client "
    "with --expect-proto X.Y.Z and --expect-max-name N"
)


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Check ggml RPC servers against a stable-diffusion.cpp client.",
        epilog="when several exit codes apply, the highest wins",
        exit_codes=sorted(
            {ExitCode.USAGE, ExitCode.PINS, ExitCode.INTERRUPTED, *EXIT_CODES.values()}
        ),
    )
    p.add_argument(
        "endpoints",
        nargs="+",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="servers in --rpc-servers order; IPv6 as [::1]:50052",
    )
    p.add_argument("--sd-cpp", metavar="PATH", help="judge against this stable-diffusion.cpp tree")
    p.add_argument("--expect-proto", metavar="X.Y.Z", help="client RPC protocol version")
    p.add_argument("--expect-max-name", metavar="N", help="client GGML_MAX_NAME")
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        default="3",
        help=f"seconds each request may take (plus as many per MiB it moves); each server "
        f"gets at most {DEADLINE_FACTOR} x this in all, and the command ends within about "
        f"that, as servers are probed at once (default 3: at most 9 s)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _fit_hint(hint: str | None, parser: argparse.ArgumentParser) -> str:
    """Keep a hint only if every option it names is one of ours (pins' hints are
    written for sdrpc-build)."""
    ours = set(parser._option_string_actions)
    named = re.findall(r"--[a-z][a-z-]*", hint or "")
    if hint and "sdrpc-build" not in hint and all(n in ours for n in named):
        return hint
    return CLIENT_HINT


def _client_spec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ClientSpec:
    proto = None
    max_name = None
    sources: list[str] = []
    if args.sd_cpp:
        try:
            sd_pins = pins.read_sd_tree(Path(args.sd_cpp).expanduser())
        except PinsError as exc:
            raise PinsError(
                exc.message, hint=_fit_hint(exc.hint, parser), details=exc.details
            ) from None
        proto = sd_pins.client_protocol.value
        max_name = sd_pins.max_name.value
        sources.append(f"--sd-cpp {args.sd_cpp}")
    if args.expect_proto:
        try:
            proto = parse_version(args.expect_proto)
        except ProtocolError as exc:
            raise UsageError(
                f"--expect-proto: {exc.message}", hint="e.g. --expect-proto 5.0.1"
            ) from None
        sources.append("--expect-proto")
    if args.expect_max_name:
        text = args.expect_max_name.strip()
        valid = text.isascii() and text.isdigit() and len(text) <= 5
        if not valid or not usable_max_name(int(text)):
            raise UsageError(
                f"--expect-max-name: not a valid GGML_MAX_NAME: {shown(text)}",
                hint="a multiple of 8, e.g. 64, 128 or 160",
            )
        max_name = int(text)
        sources.append("--expect-max-name")
    return ClientSpec(proto, max_name, ", ".join(sources) or "none given")


def _probe_all(eps: tuple[Endpoint, ...], timeout: float, spec: ClientSpec) -> list[ProbeResult]:
    """Probe every server at once, all against one deadline (DEADLINE_FACTOR x timeout)."""
    deadline = time.monotonic() + DEADLINE_FACTOR * timeout

    def one(ep: Endpoint) -> ProbeResult:
        return probe(
            ep.host, ep.port, timeout=timeout, expect_max_name=spec.max_name, deadline=deadline
        )

    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(eps))) as pool:
        return list(pool.map(one, eps))


def exit_code(verdicts: list[Verdict]) -> int:
    return max((EXIT_CODES[v.kind] for v in verdicts), default=0)


def _problems(r: ProbeResult, v: Verdict) -> list[str]:
    """Verdict reasons (failures already quote the probe's problems), then the rest."""
    lines = [*v.reasons] if r.status != "ok" else [*r.problems, *v.reasons]
    return list(dict.fromkeys(lines))


def _devices_cell(r: ProbeResult) -> str:
    if r.protocol is None:
        return "-"
    if r.device_count is not None and len(r.devices) < min(r.device_count, MAX_DEVICES):
        return f"{len(r.devices)} of {r.device_count}"
    return str(len(r.devices))


def _mib(n: int) -> str:
    return f"{n / 1048576:,.0f} MiB"


def _to_json(
    spec: ClientSpec,
    results: list[ProbeResult],
    verdicts: list[Verdict],
    dmap: tuple[MappedDevice, ...],
    code: int,
    timeout: float,
) -> dict[str, Any]:
    names = {(d.server, d.index): d.name for d in dmap}
    servers = []
    for s, (r, v) in enumerate(zip(results, verdicts, strict=True)):
        servers.append(
            {
                "endpoint": r.endpoint,
                "host": r.host,
                "port": r.port,
                "reachable": r.reachable,
                "status": r.status,
                "protocol": format_version(r.protocol) if r.protocol else None,
                "max_name": r.max_name,
                "device_count": r.device_count,
                "devices": [
                    {
                        "name": names.get((s, d.index)),
                        "index": d.index,
                        "free": d.free,
                        "total": d.total,
                        "alignment": d.alignment,
                        "max_size": d.max_size,
                    }
                    for d in r.devices
                ],
                "compatible": v.compatible,
                "verdict": v.kind,
                "problems": _problems(r, v),
                "elapsed_s": round(r.elapsed_s, 4),
            }
        )
    return {
        "client": {
            "protocol": format_version(spec.protocol) if spec.protocol else None,
            "max_name": spec.max_name,
            "source": spec.source,
        },
        "servers": servers,
        "device_map": [
            {
                "name": d.name,
                "endpoint": d.endpoint,
                "server": d.server,
                "index": d.index,
                "free": d.free,
                "total": d.total,
            }
            for d in dmap
        ],
        "rpc_servers": ",".join(r.endpoint for r in results),
        "timeout_s": timeout,
        "deadline_s": DEADLINE_FACTOR * timeout,
        "exit_code": code,
    }


def _print_tables(
    spec: ClientSpec,
    results: list[ProbeResult],
    verdicts: list[Verdict],
    dmap: tuple[MappedDevice, ...],
) -> None:
    """Human output. Every value is a Text (no markup: ``[::1]`` stays), and columns
    fold instead of cutting, so a narrow or piped console never hides a value; the
    values to copy (the --rpc-servers string, endpoints) also get lines of their own."""
    con = out_console()
    want = " ".join(
        x
        for x in (
            f"protocol {format_version(spec.protocol)}" if spec.protocol else "",
            f"GGML_MAX_NAME {spec.max_name}" if spec.max_name else "",
        )
        if x
    )
    con.print(Text(f"client: {want or 'none given: checking reachability only'} [{spec.source}]"))
    t = Table(title="servers")
    widest = max(len(r.endpoint) for r in results)
    t.add_column("endpoint", overflow="fold", min_width=min(widest, 24))
    for col in ("protocol", "MAX_NAME", "devices", "verdict"):
        t.add_column(col, overflow="fold")
    for r, v in zip(results, verdicts, strict=True):
        style = "green" if v.ok else "red"
        t.add_row(
            Text(r.endpoint),
            Text(format_version(r.protocol) if r.protocol else "-"),
            Text(str(r.max_name) if r.max_name else ("unknown" if r.protocol else "-")),
            Text(_devices_cell(r)),
            Text(LABELS[v.kind], style=style),
        )
    con.print(t)
    if dmap:
        d = Table(title="sd-cli devices (--backend names)")
        for col in ("device", "server", "index", "free", "total"):
            d.add_column(col, overflow="fold")
        for m in dmap:
            d.add_row(
                Text(m.name), Text(m.endpoint), Text(str(m.index)), _mib(m.free), _mib(m.total)
            )
        con.print(d)
    for r, v in zip(results, verdicts, strict=True):
        for line in _problems(r, v):
            con.print(Text(f"{r.endpoint}: {line}"))
    con.print(Text("--rpc-servers " + ",".join(r.endpoint for r in results)), crop=False)


def _body(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    eps = parse_endpoints(args.endpoints)
    timeout = parse_timeout(args.timeout)
    spec = _client_spec(args, parser)
    results = _probe_all(eps, timeout, spec)
    verdicts = [judge(r, spec) for r in results]
    dmap = device_map(results)
    code = exit_code(verdicts)
    if args.json:
        print(json.dumps(_to_json(spec, results, verdicts, dmap, code, timeout), indent=2))
    else:
        _print_tables(spec, results, verdicts, dmap)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    return run_parsed(PROG, parser, argv, lambda args: _body(args, parser))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
