"""What sdrpc-build (and quickstart) show: progress while building, pins, the dry-run plan,
the result, the backends and the cached builds, in tables that never cut values.

Progress goes to stderr everywhere: a live bar on a terminal; elsewhere (a pipe,
a CI log, ``sdrpc quickstart``) plain lines: each phase, a compile step at most
every few seconds (``[12/34] building ggml-cpu.c.o``, always the first and the
last), and a heartbeat when a phase (a download, configure) runs long silently.

Tables fold long cells on a terminal and are printed at their full width
elsewhere: keys, commits, paths and URLs are never cut.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional, TextIO

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sdrpc_build.build.pins import SdPins
from sdrpc_build.build.pipeline import BuildResult, DryRun, Reporter
from sdrpc_build.build.recipes import Recipe
from sdrpc_build.build.store import MANIFEST, Manifest
from sdrpc_build.cli._common import err_console, out_console

__all__ = [
    "PlainReporter",
    "RichReporter",
    "build_reporter",
    "print_backends",
    "print_builds",
    "print_dry_run",
    "print_pins",
    "print_result",
    "print_table",
    "shout",
]

#: seconds between two compile-step lines when not on a terminal
STEP_INTERVAL = 5.0
#: seconds of silence after which a plain reporter says it is still working
HEARTBEAT = 15.0


class RichReporter:
    """A transient progress bar on a terminal."""

    def __init__(self, progress: Progress) -> None:
        self.p = progress
        self.task = progress.add_task("starting", total=None)

    def phase(self, name: str) -> None:
        self.p.update(self.task, description=name, completed=0, total=None)

    def progress(self, done: int, total: int, what: str = "") -> None:
        desc = f"compile {what}" if what else "compile"
        self.p.update(self.task, completed=done, total=total, description=desc)

    def log(self, message: str) -> None:
        self.p.console.print(f"[dim]{message}[/dim]")


class PlainReporter:
    """Plain, throttled progress lines for pipes and logs (``PROG: [12/34] building x.o``)."""

    def __init__(
        self,
        prog: str,
        stream: TextIO,
        *,
        interval: float = STEP_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prog = prog
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.lock = threading.Lock()
        self.current = "starting"
        self.phase_started = clock()
        self.last_line = clock()
        self.last_step = -1.0e9

    def _say(self, text: str) -> None:
        with self.lock:
            print(f"{self.prog}: {text}", file=self.stream, flush=True)
            self.last_line = self.clock()

    def phase(self, name: str) -> None:
        self.current = name
        self.phase_started = self.clock()
        self.last_step = -1.0e9
        self._say(f"{name}...")

    def progress(self, done: int, total: int, what: str = "") -> None:
        now = self.clock()
        if done in (1, total) or now - self.last_step >= self.interval:
            self.last_step = now
            pct = 100 * done // total if total else 0
            self._say(f"[{done}/{total}] {pct}% {what}".rstrip())

    def log(self, message: str) -> None:
        self._say(message)

    def heartbeat(self, silence: float = HEARTBEAT) -> None:
        """Say "still <phase>" if nothing was printed for ``silence`` seconds."""
        now = self.clock()
        if now - self.last_line >= silence:
            self._say(f"still {self.current} ({now - self.phase_started:.0f}s)")


@contextlib.contextmanager
def _heartbeats(rep: PlainReporter, every: float = 1.0) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            rep.heartbeat()

    t = threading.Thread(target=beat, name="sdrpc-progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)


@contextlib.contextmanager
def build_reporter(prog: str, stream: Optional[TextIO] = None) -> Iterator[Reporter]:
    """The reporter for a build: a live bar on a terminal, plain lines elsewhere."""
    out = stream or sys.stderr
    if out.isatty():
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console(out),
            transient=True,
        )
        with progress:
            yield RichReporter(progress)
        return
    plain = PlainReporter(prog, out)
    with _heartbeats(plain):
        yield plain


def print_table(table: Table, file: Optional[TextIO] = None) -> None:
    """Print ``table`` without cutting a cell: folded on a terminal, full width elsewhere."""
    for col in table.columns:
        col.overflow = "fold"
        col.no_wrap = False
    con = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)
    if not con.is_terminal:
        for col in table.columns:
            col.no_wrap = True
        width = Measurement.get(con, con.options.update(max_width=1 << 20), table).maximum
        if width > con.width:
            con = Console(file=file or sys.stdout, highlight=False, soft_wrap=True, width=width)
    con.print(table)


def print_pins(pins: SdPins) -> None:
    t = Table(title="pins", show_header=True)
    t.add_column("pin")
    t.add_column("value")
    t.add_column("from")
    for name, d in pins.as_dict().items():
        t.add_row(name, "unknown" if d["value"] is None else str(d["value"]), str(d["source"]))
    print_table(t)


def print_dry_run(pins: SdPins, dry: DryRun, as_json: bool) -> None:
    """The pins, the plan and the two commands the build would run."""
    plan, cmds = dry.plan, dry.commands
    if as_json:
        doc = {
            "pins": pins.as_dict(),
            "plan": plan.describe(),
            "configure": list(cmds.configure),
            "build": list(cmds.build),
            "notes": list(dry.notes),
        }
        print(json.dumps(doc, indent=2))
        return
    print_pins(pins)
    con = out_console()
    con.print(f"plan key: {plan.key}")
    for n in (*plan.notes, *dry.notes):
        con.print(f"note: {n}")
    con.print("configure: " + " ".join(cmds.configure))
    con.print("build:     " + " ".join(cmds.build))


def print_result(res: BuildResult, wheel: Optional[Path], as_json: bool) -> None:
    """Warnings on stderr; the JSON object, or a summary line, the manifest and the binary."""
    cpu_only = res.verify is not None and res.verify.cpu_only  # a GPU build found no GPU
    for w in res.warnings:
        if cpu_only and w.startswith("ONLY THE CPU"):
            shout("sdrpc-build", w)
        else:
            err_console().print(f"[bold yellow]warning:[/bold yellow] {w}")
    m = res.manifest
    if as_json:
        doc = {
            "binary": str(m.binary),
            "manifest": str(m.path / MANIFEST),
            "key": m.key,
            "commit": m.commit,
            "backend": m.backend,
            "max_name": m.max_name,
            "target": m.target,
            "protocol": m.protocol,
            "cache_hit": res.cache_hit,
            "verified": m.verified,
            "seconds": round(res.seconds, 3),
            "warnings": list(res.warnings),
            "wheel": str(wheel) if wheel else None,
        }
        print(json.dumps(doc))
        return
    if wheel:
        print(f"wheel: {wheel}")
    how = "cache hit" if res.cache_hit else f"built in {res.seconds:.1f}s"
    verified = "verified" if m.verified else "NOT verified"
    print(
        f"{m.target} {m.protocol} ({m.backend}, GGML_MAX_NAME={m.max_name}, "
        f"llama.cpp {m.commit}): {how}, {verified}"
    )
    print(f"manifest: {m.path / MANIFEST}")
    print(str(m.binary))


def print_backends(recipes: Sequence[Recipe], as_json: bool) -> None:
    """``--list-backends``."""
    if as_json:
        rows = [
            {
                "backend": r.name,
                "description": r.description,
                "platforms": list(r.platforms),
                "tools": [t.name for t in r.requires],
            }
            for r in recipes
        ]
        print(json.dumps(rows))
        return
    t = Table(title="backends")
    for col in ("backend", "platforms", "needs", "description"):
        t.add_column(col)
    for r in recipes:
        needs = ", ".join(x.name for x in r.requires) or "-"
        t.add_row(r.name, ", ".join(r.platforms), needs, r.description)
    out_console().print(t)


def print_builds(manifests: Sequence[Manifest], as_json: bool) -> None:
    """``--list``: the cached builds, newest first."""
    if as_json:
        rows = [
            {
                "key": m.key,
                "binary": str(m.binary),
                "backend": m.backend,
                "commit": m.commit,
                "max_name": m.max_name,
                "protocol": m.protocol,
                "created": m.created,
                "verified": m.verified,
            }
            for m in manifests
        ]
        print(json.dumps(rows))
        return
    t = Table(title="cached builds (newest first)")
    for col in ("key", "backend", "commit", "max_name", "protocol", "verified", "created"):
        t.add_column(col)
    for m in manifests:
        verified = "yes" if m.verified else "no"
        t.add_row(m.key, m.backend, m.commit, str(m.max_name), m.protocol, verified, m.created)
    print_table(t)


def shout(prog: str, text: str, file: Optional[TextIO] = None) -> None:
    """A warning nobody scrolls past: framed, every line ``PROG: WARNING:``, on stderr."""
    stream = file or sys.stderr
    bar = "*" * 72
    print(f"{prog}: WARNING: {bar}", file=stream)
    print(f"{prog}: WARNING: {text}", file=stream)
    print(f"{prog}: WARNING: {bar}", file=stream, flush=True)
