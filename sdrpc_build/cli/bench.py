"""sdrpc-bench: how fast can a model be loaded onto each ggml RPC server?

Usage::

    sdrpc-bench HOST:PORT[,HOST:PORT...] [--model-size 7.2G | --model FILE]
                [--sizes 4K,1M,64M] [--device N[,N...]] [--no-verify]
                [--timeout SECONDS] [--json] [--debug]

Servers are measured one after the other (at the same time they would share
the link). Per device: round-trip latency, SET_TENSOR and GET_TENSOR
throughput for each size that fits its free memory, data read back and
compared, buffer freed and free memory compared with before.

Exit codes: 0 measured, 2 usage error, 14 a server failed during the
benchmark (it is reported and the others are still measured), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdrpc_build.bench import (
    DEFAULT_SIZES,
    ServerResult,
    format_bytes,
    format_duration,
    parse_size,
    parse_sizes,
    to_json,
)
from sdrpc_build.check import parse_endpoints
from sdrpc_build.cli._common import Parser, err_console, out_console, report_error, run_parsed
from sdrpc_build.errors import UsageError
from sdrpc_build.linkbench import BenchError, BenchOptions, bench_server

__all__ = ["main"]

PROG = "sdrpc-bench"


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Measure the link to ggml RPC servers with the protocol itself "
        "(SET_TENSOR / GET_TENSOR throughput, latency, model upload time).",
        epilog="exit codes: 0 measured, 2 usage, 14 a server failed during the benchmark, "
        "130 interrupted",
    )
    p.add_argument(
        "endpoints",
        nargs="+",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="servers, e.g. 192.168.1.10:50052; IPv6 as [::1]:50052",
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--model-size", metavar="SIZE", help="estimate the upload time of a model this big (7.2G)"
    )
    model.add_argument("--model", metavar="FILE", help="estimate the upload time of this file")
    p.add_argument(
        "--sizes",
        metavar="LIST",
        help="transfer sizes, e.g. 4K,1M,64M (default 4K to 256M in steps of x4; "
        "capped by each device's free memory)",
    )
    p.add_argument("--device", metavar="N[,N...]", help="measure only these devices (default all)")
    p.add_argument("--no-verify", action="store_true", help="do not read back and compare the data")
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        default="10",
        help="per connect/reply, and longest stall inside a transfer (default 10)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise UsageError(f"--timeout: {text!r} is not a number of seconds in (0, 600]")
    return value


def _devices(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.isdigit() and int(t) < 1 << 32 for t in items):
        raise UsageError(f"--device: {text!r} is not a list of device numbers", hint="e.g. 0,1")
    return tuple(sorted({int(t) for t in items}))


def _model_bytes(args: argparse.Namespace) -> int | None:
    if args.model_size:
        return parse_size(args.model_size, "--model-size")
    if args.model:
        path = Path(args.model).expanduser()
        try:
            return path.stat().st_size
        except OSError as exc:
            raise UsageError(
                f"--model: cannot read {path}: {exc.strerror or exc}",
                hint="give the model file, or its size with --model-size",
            ) from None
    return None


def _options(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        sizes=parse_sizes(args.sizes) if args.sizes else DEFAULT_SIZES,
        timeout=_timeout(args.timeout),
        verify=not args.no_verify,
        devices=_devices(args.device),
        model_bytes=_model_bytes(args),
    )


def _run(eps: list[tuple[str, int]], opts: BenchOptions) -> list[ServerResult | BenchError]:
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    out: list[ServerResult | BenchError] = []
    con = err_console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=con,
        transient=True,
        disable=not con.is_terminal,
    ) as bar:
        for host, port in eps:
            task = bar.add_task(f"{host}:{port} probing", total=None)

            def show(endpoint: str, text: str, done: int, total: int, task: TaskID = task) -> None:
                bar.update(task, description=f"{endpoint} {text}", completed=done, total=total)

            try:
                out.append(bench_server(host, port, opts, show))
            except BenchError as exc:
                out.append(exc)
            bar.remove_task(task)
    return out


def _print(results: list[ServerResult]) -> None:
    from rich.table import Table

    con = out_console()
    for r in results:
        if r.error:
            con.print(f"[red]{r.endpoint}: failed[/red] (see the error below)")
            continue
        lat = f"{r.latency_ms:.2f} ms" if r.latency_ms is not None else "-"
        con.print(
            f"[bold]{r.endpoint}[/bold]  protocol {r.protocol}  GGML_MAX_NAME {r.max_name}  "
            f"round trip {lat}"
        )
        for d in r.devices:
            t = Table(title=f"device {d.index} ({format_bytes(d.total)})", title_justify="left")
            for col in ("size", "upload MB/s", "Gbit/s", "download MB/s", "Gbit/s "):
                t.add_column(col, justify="right")
            by_size: dict[int, dict[str, tuple[float, float]]] = {}
            for s in d.samples:
                by_size.setdefault(s.bytes, {})[s.op] = (s.mb_per_s, s.gbit_per_s)
            for n, ops in sorted(by_size.items()):
                st, gt = ops.get("set"), ops.get("get")
                t.add_row(
                    format_bytes(n),
                    f"{st[0]:,.0f}" if st else "-",
                    f"{st[1]:.2f}" if st else "-",
                    f"{gt[0]:,.0f}" if gt else "-",
                    f"{gt[1]:.2f}" if gt else "-",
                )
            if d.samples:
                con.print(t)
            for note in d.notes:
                con.print(f"  device {d.index}: {note}", markup=False)
            if d.memory_restored is False:
                con.print(
                    f"  [yellow]device {d.index}: free memory did not return to where it was "
                    f"({format_bytes(d.free_before)} before, {format_bytes(d.free_after or 0)} "
                    "after)[/yellow]"
                )
            if d.verified:
                con.print(f"  device {d.index}: data read back matches what was sent")
        if r.upload is not None:
            up = r.upload
            con.print(
                f"  uploading {format_bytes(up.model_bytes)} takes about "
                f"[bold]{format_duration(up.seconds)}[/bold] at {up.rate_mb_per_s:,.0f} MB/s"
            )
            con.print(f"  note: {up.note}", markup=False)
        for note in r.notes:
            con.print(f"  {note}", markup=False)


def _body(args: argparse.Namespace) -> int:
    endpoints = parse_endpoints(args.endpoints)
    eps = [(e.host, e.port) for e in endpoints]
    opts = _options(args)
    outcomes = _run(eps, opts)
    results: list[ServerResult] = []
    errors: list[BenchError] = []
    for endpoint, o in zip(endpoints, outcomes, strict=True):
        if isinstance(o, BenchError):
            errors.append(o)
            results.append(ServerResult(endpoint=str(endpoint), error=o.message))
        else:
            results.append(o)
    if args.json:
        print(json.dumps(to_json(results), indent=2))
    else:
        _print(results)
    code = 0
    for failure in errors:
        code = report_error(failure, PROG, args.debug)
    return code


def main(argv: list[str] | None = None) -> int:
    return run_parsed(PROG, _parser(), argv, _body)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
