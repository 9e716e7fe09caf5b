"""sdrpc cache: see what sdrpc keeps on disk, and reclaim it.

sdrpc cache                    # size of artifacts, builds, sources, downloads, logs, ...
sdrpc cache --prune            # keep artifacts in use and the 3 newest; drop the rest
sdrpc cache --prune --keep 1 --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rich.table import Table

from sdrpc_build.build.diskuse import (
    CATEGORIES,
    KEPT_BY_PRUNE,
    Entry,
    busy_paths,
    plan_prune,
    remove_entries,
    survey,
)
from sdrpc_build.build.store import list_manifests
from sdrpc_build.cli._common import Parser, out_console, run_parsed
from sdrpc_build.errors import ExitCode, UsageError
from sdrpc_build.paths import artifacts_dir, cache_dir
from sdrpc_build.units import format_size

__all__ = ["DEFAULT_KEEP", "main"]

PROG = "sdrpc cache"
DEFAULT_KEEP = 3


def _keep(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise UsageError(f"--keep: {text!r} is not a count", hint="--keep N with N = 0, 1, 2, ...")
    return int(text)


def make_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Show what sdrpc keeps on disk, per kind, and reclaim space with --prune.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {c:<10} {what}" for c, (_f, what) in CATEGORIES.items()),
        exit_codes=(ExitCode.OK, ExitCode.USAGE, ExitCode.STORE, ExitCode.INTERRUPTED),
    )
    p.add_argument("--cache-dir", help="sdrpc's cache root (env SDRPC_CACHE_DIR)")
    p.add_argument(
        "--prune",
        action="store_true",
        help="remove what is not needed: keeps artifacts in use and the newest --keep, "
        "their sources and sdists, and everything a process has open",
    )
    p.add_argument(
        "--keep",
        type=_keep,
        default=DEFAULT_KEEP,
        metavar="N",
        help=f"with --prune: newest artifacts to keep (default {DEFAULT_KEEP})",
    )
    p.add_argument("--dry-run", action="store_true", help="with --prune: only say what would go")
    p.add_argument("-v", "--verbose", action="store_true", help="list every entry removed")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _totals(entries: list[Entry]) -> dict[str, dict[str, int]]:
    out = {c: {"entries": 0, "bytes": 0} for c in CATEGORIES}
    for e in entries:
        out[e.category]["entries"] += 1
        out[e.category]["bytes"] += e.size
    return out


def _body(args: argparse.Namespace) -> int:
    if (args.dry_run or args.keep != DEFAULT_KEEP) and not args.prune:
        raise UsageError(
            "--keep and --dry-run go with --prune", hint="sdrpc cache --prune --keep 1"
        )
    root = cache_dir(os.environ, args.cache_dir)
    entries = survey(root)
    totals = _totals(entries)
    result: dict[str, object] = {
        "cache_dir": str(root),
        "categories": totals,
        "total_bytes": sum(e.size for e in entries),
    }
    removed: list[Entry] = []
    skipped: list[tuple[Entry, str]] = []
    if args.prune:
        doomed = plan_prune(
            entries, list_manifests(artifacts_dir(root)), keep=args.keep, busy=busy_paths(root)
        )
        if args.dry_run:
            removed = doomed
        else:
            removed, skipped = remove_entries(root, doomed)
        result["prune"] = {
            "dry_run": args.dry_run,
            "keep": args.keep,
            "removed": [{"path": str(e.path), "bytes": e.size} for e in removed],
            "skipped": [{"path": str(e.path), "why": why} for e, why in skipped],
            "freed_bytes": sum(e.size for e in removed),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    con = out_console()
    t = Table(title=f"sdrpc cache: {root}", title_justify="left")
    for col in ("kind", "entries", "size", "what"):
        t.add_column(col, overflow="fold")
    for c, (_f, what) in CATEGORIES.items():
        t.add_row(c, str(totals[c]["entries"]), format_size(totals[c]["bytes"]), what)
    t.add_row("total", str(len(entries)), format_size(sum(e.size for e in entries)), "")
    con.print(t)
    if args.prune:
        verb = "would remove" if args.dry_run else "removed"
        freed = format_size(sum(e.size for e in removed))
        print(
            f"{verb} {len(removed)} entries, {freed}; kept: artifacts in use and the newest "
            f"{args.keep}, their sources and sdists, anything open; never "
            f"{' or '.join(sorted(KEPT_BY_PRUNE))}"
        )
        if args.verbose or args.dry_run:
            for e in removed:
                print(f"  {e.category}: {e.path} ({format_size(e.size)})")
        for e, why in skipped:
            print(f"  skipped {e.path}: {why}", file=sys.stderr)
    else:
        print("reclaim space: sdrpc cache --prune (--dry-run to see what would go)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_parsed(PROG, make_parser(), argv, _body)


if __name__ == "__main__":
    sys.exit(main())
