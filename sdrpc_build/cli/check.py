"""sdrpc-check: is each ggml RPC server compatible with my stable-diffusion.cpp client?

Usage::

    sdrpc-check HOST:PORT[,HOST:PORT...] [--sd-cpp PATH] [--expect-proto X.Y.Z]
                [--expect-max-name N] [--timeout SECONDS] [--json] [--debug]

Servers are probed concurrently: HELLO (version), device inventory, and the
GGML_MAX_NAME the server was built with. Each is judged against the client
(pins read from ``--sd-cpp``; ``--expect-*`` override them), and the device
map sd-cli will build (RPC0, RPC1, ...) is shown.

Exit codes (when several apply, the highest wins):

==  =============================================================
0   every server is reachable and compatible
1   internal error (run again with --debug)
2   usage error (bad option, malformed endpoint list)
3   ``--sd-cpp`` tree gave invalid pins
10  a server is incompatible (protocol major/minor, GGML_MAX_NAME)
11  a server is unreachable (refused, unresolvable, timed out)
12  a server is busy (serving another client; no reply in time)
13  something that is not a ggml RPC server answers on the port
14  a server broke the protocol (truncated or malformed reply)
130 interrupted
==  =============================================================
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sdrpc_build.check import (
    ClientSpec,
    Endpoint,
    MappedDevice,
    Verdict,
    device_map,
    judge,
    parse_endpoints,
)
from sdrpc_build.cli._common import Parser, out_console, run_parsed
from sdrpc_build.errors import ProtocolError, UsageError
from sdrpc_build.protocol.client import ProbeResult, probe
from sdrpc_build.protocol.codec import format_version, parse_version

__all__ = ["EXIT_CODES", "main"]

PROG = "sdrpc-check"
EXIT_CODES: dict[str, int] = {
    "compatible": 0,
    "incompatible": 10,
    "unreachable": 11,
    "busy": 12,
    "not-rpc": 13,
    "error": 14,
}


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Check ggml RPC servers against a stable-diffusion.cpp client.",
        epilog="exit codes: 0 all compatible, 2 usage, 3 bad --sd-cpp pins, 10 incompatible, "
        "11 unreachable, 12 busy, 13 not a ggml RPC server, 14 protocol error",
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
        "--timeout", metavar="SECONDS", default="3", help="per connect/reply timeout (default 3)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _client_spec(args: argparse.Namespace) -> ClientSpec:
    proto = None
    max_name = None
    sources: list[str] = []
    if args.sd_cpp:
        from sdrpc_build.pins import read_sd_tree

        pins = read_sd_tree(Path(args.sd_cpp).expanduser())
        proto = pins.client_protocol.value
        max_name = pins.max_name.value
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
        if not text.isdigit() or not 8 <= int(text) <= 65536 or int(text) % 8:
            raise UsageError(
                f"--expect-max-name: not a valid GGML_MAX_NAME: {text!r}",
                hint="a multiple of 8, e.g. 64, 128 or 160",
            )
        max_name = int(text)
        sources.append("--expect-max-name")
    return ClientSpec(proto, max_name, ", ".join(sources) or "none given")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise UsageError(f"--timeout: {text!r} is not a number of seconds in (0, 600]")
    return value


def _probe_all(eps: tuple[Endpoint, ...], timeout: float, spec: ClientSpec) -> list[ProbeResult]:
    def one(ep: Endpoint) -> ProbeResult:
        return probe(ep.host, ep.port, timeout=timeout, expect_max_name=spec.max_name)

    with ThreadPoolExecutor(max_workers=min(32, len(eps))) as pool:
        return list(pool.map(one, eps))


def exit_code(verdicts: list[Verdict]) -> int:
    return max((EXIT_CODES[v.kind] for v in verdicts), default=0)


def _problems(r: ProbeResult, v: Verdict) -> list[str]:
    """Verdict reasons (failures already quote the probe's problems), then the rest."""
    lines = [*v.reasons] if r.status != "ok" else [*r.problems, *v.reasons]
    return list(dict.fromkeys(lines))


def _mib(n: int) -> str:
    return f"{n / 1048576:,.0f} MiB"


def _to_json(
    spec: ClientSpec,
    results: list[ProbeResult],
    verdicts: list[Verdict],
    dmap: tuple[MappedDevice, ...],
    code: int,
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
        "exit_code": code,
    }


def _print_tables(
    spec: ClientSpec,
    results: list[ProbeResult],
    verdicts: list[Verdict],
    dmap: tuple[MappedDevice, ...],
) -> None:
    from rich.table import Table

    con = out_console()
    want = " ".join(
        x
        for x in (
            f"protocol {format_version(spec.protocol)}" if spec.protocol else "",
            f"GGML_MAX_NAME {spec.max_name}" if spec.max_name else "",
        )
        if x
    )
    con.print(f"client: {want or 'no expectations (reachability only)'} [{spec.source}]")
    t = Table(title="servers")
    for col in ("endpoint", "status", "protocol", "MAX_NAME", "devices", "verdict"):
        t.add_column(col, overflow="fold")
    for r, v in zip(results, verdicts, strict=True):
        style = "green" if v.compatible else "red"
        t.add_row(
            r.endpoint,
            r.status,
            format_version(r.protocol) if r.protocol else "-",
            str(r.max_name) if r.max_name else ("unknown" if r.protocol else "-"),
            str(len(r.devices)) if r.protocol else "-",
            f"[{style}]{v.kind}[/{style}]",
        )
    con.print(t)
    if dmap:
        d = Table(title="sd-cli devices (--backend names)")
        for col in ("device", "server", "index", "free", "total"):
            d.add_column(col)
        for m in dmap:
            d.add_row(m.name, m.endpoint, str(m.index), _mib(m.free), _mib(m.total))
        con.print(d)
    for r, v in zip(results, verdicts, strict=True):
        for line in _problems(r, v):
            con.print(f"{r.endpoint}: {line}", markup=False)


def _body(args: argparse.Namespace) -> int:
    eps = parse_endpoints(args.endpoints)
    timeout = _timeout(args.timeout)
    spec = _client_spec(args)
    results = _probe_all(eps, timeout, spec)
    verdicts = [judge(r, spec) for r in results]
    dmap = device_map(results)
    code = exit_code(verdicts)
    if args.json:
        print(json.dumps(_to_json(spec, results, verdicts, dmap, code), indent=2))
    else:
        _print_tables(spec, results, verdicts, dmap)
    return code


def main(argv: list[str] | None = None) -> int:
    return run_parsed(PROG, _parser(), argv, _body)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
