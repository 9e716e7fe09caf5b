"""sdrpc-bench: how fast can a model be loaded onto each ggml RPC server?

Usage::

    sdrpc-bench HOST:PORT[,HOST:PORT...] [--model-size 7.2G | --model FILE]
                [--sizes 4K,1M,64M] [--device N[,N...]] [--no-verify]
                [--timeout SECONDS] [--json] [--debug]

Servers are measured one after the other (at the same time they would share
the link). Per device: round-trip latency, SET_TENSOR and GET_TENSOR
throughput for each size that fits its free memory, data read back and
compared, buffer freed and free memory compared with before. The test data is
streamed through two 4 MiB buffers, whatever the sizes.

Time (``--timeout T``, default 10): every request gets T seconds plus T per MiB
it moves (so the slowest link accepted moves 1 MiB per T), no transfer may
stall for T, and each server gets at most 60 x T in all (10 min by default);
the command ends within 60 x T per server. A server past that is "too slow":
what was measured until then is still reported.

Exit codes: 0 measured, 2 usage error, 14 a server failed or was too slow
during the benchmark (it is reported and the others are still measured),
130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from sdrpc_build.bench.failures import BenchError
from sdrpc_build.bench.link import bench_server
from sdrpc_build.bench.maths import (
    DEFAULT_SIZES,
    ServerResult,
    format_duration,
    parse_sizes,
    to_json,
)
from sdrpc_build.bench.options import DEADLINE_FACTOR, BenchOptions
from sdrpc_build.cli._common import Parser, err_console, out_console, report_error, run_parsed
from sdrpc_build.errors import ExitCode, UsageError
from sdrpc_build.protocol.endpoint import Endpoint, parse_endpoints, parse_timeout, shown
from sdrpc_build.units import format_size, parse_size

__all__ = ["main"]

PROG = "sdrpc-bench"


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Measure the link to ggml RPC servers with the protocol itself "
        "(SET_TENSOR / GET_TENSOR throughput, latency, model upload time).",
        exit_codes=(ExitCode.OK, ExitCode.USAGE, ExitCode.PROTOCOL, ExitCode.INTERRUPTED),
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
        help="seconds each request may take, plus as many per MiB it moves, and the "
        f"longest stall inside a transfer; each server gets at most {DEADLINE_FACTOR} x this "
        "in all (default 10: at most 10 min per server)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _devices(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses
    valid = all(t.isascii() and t.isdigit() and len(t) <= 10 for t in items)
    if not items or not valid or not all(int(t) < 1 << 32 for t in items):
        raise UsageError(
            f"--device: {shown(text)} is not a list of device numbers", hint="e.g. --device 0,1"
        )
    return tuple(sorted({int(t) for t in items}))


def _model_bytes(args: argparse.Namespace) -> int | None:
    if args.model_size:
        return parse_size(args.model_size, "--model-size", minimum=1)
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
        timeout=parse_timeout(args.timeout),
        verify=not args.no_verify,
        devices=_devices(args.device),
        model_bytes=_model_bytes(args),
    )


def _run(eps: list[Endpoint], opts: BenchOptions) -> list[ServerResult | BenchError]:
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
        for ep in eps:
            task = bar.add_task(escape(f"{ep} probing"), total=None)

            def show(endpoint: str, text: str, done: int, total: int, task: TaskID = task) -> None:
                desc = escape(f"{endpoint} {text}")
                bar.update(task, description=desc, completed=done, total=total)

            try:
                out.append(bench_server(ep.host, ep.port, opts, show))
            except BenchError as exc:
                out.append(exc)
            bar.remove_task(task)
    return out


def _print(results: list[ServerResult]) -> None:
    """Human output; user values are escaped (``[::1]`` is not markup) and tables fold."""
    con = out_console()
    for r in results:
        ep = escape(r.endpoint)
        if r.protocol is not None:
            lat = f"{r.latency_ms:.2f} ms" if r.latency_ms is not None else "-"
            con.print(
                f"[bold]{ep}[/bold]  protocol {r.protocol}  GGML_MAX_NAME {r.max_name}  "
                f"round trip {lat}"
            )
        if r.error:
            partial = " (the results above are partial)" if r.samples else ""
            con.print(f"[red]{ep}: failed[/red]{partial} (see the error below)")
        for d in r.devices:
            t = Table(title=f"device {d.index} ({format_size(d.total)})", title_justify="left")
            for col in ("size", "upload MB/s", "Gbit/s", "download MB/s", "Gbit/s "):
                t.add_column(col, justify="right", overflow="fold")
            by_size: dict[int, dict[str, tuple[float, float]]] = {}
            for s in d.samples:
                by_size.setdefault(s.bytes, {})[s.op] = (s.mb_per_s, s.gbit_per_s)
            for n, ops in sorted(by_size.items()):
                st, gt = ops.get("set"), ops.get("get")
                t.add_row(
                    format_size(n),
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
                    f"({format_size(d.free_before)} before, {format_size(d.free_after or 0)} "
                    "after)[/yellow]"
                )
            if d.verified:
                con.print(f"  device {d.index}: data read back matches what was sent")
        if r.upload is not None:
            up = r.upload
            con.print(
                f"  uploading {format_size(up.model_bytes)} takes about "
                f"[bold]{format_duration(up.seconds)}[/bold] at {up.rate_mb_per_s:,.0f} MB/s"
            )
            con.print(f"  note: {up.note}", markup=False)
        for note in r.notes:
            con.print(f"  {note}", markup=False)


def _body(args: argparse.Namespace) -> int:
    endpoints = parse_endpoints(args.endpoints)
    opts = _options(args)
    outcomes = _run(list(endpoints), opts)
    results: list[ServerResult] = []
    errors: list[BenchError] = []
    for endpoint, o in zip(endpoints, outcomes, strict=True):
        if isinstance(o, BenchError):
            errors.append(o)
            partial = o.partial or ServerResult(endpoint=str(endpoint))
            results.append(dataclasses.replace(partial, error=o.message))
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
