"""Run every benchmark of the project and write one JSON file plus a markdown summary.

    python bench/run_all.py [--only link,check] [--skip build] [--timeout 1800]

Runs each ``bench/bench_*.py`` in turn (one at a time: they time things),
collects the JSON document each one writes, and writes
``bench/results/<date>-<host>.json`` and ``bench/results/<date>-<host>.md``.

Convention for bench scripts: ``python bench/bench_X.py --out FILE`` writes one
JSON document to FILE (scripts without ``--out`` are run without it and their
document is read from stdout: the first top-level JSON object printed). Goals
are picked up from the document wherever they are: a ``goals`` list of
``{"name", "met", ...}``, a ``goals`` mapping of name -> bool, or any
``*goal_met`` boolean (or mapping of name -> bool); ratios from any
``ratios`` mapping or ``*ratio*`` number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def discover() -> dict[str, Path]:
    """``{"link": bench/bench_link.py, ...}``, sorted by name."""
    return {p.stem[len("bench_") :]: p for p in sorted(HERE.glob("bench_*.py"))}


def _first_json(text: str) -> dict[str, Any] | None:
    dec = json.JSONDecoder()
    for i, line in enumerate(text.splitlines(keepends=True)):
        if line.startswith("{"):
            start = sum(len(x) for x in text.splitlines(keepends=True)[:i])
            with contextlib.suppress(ValueError):
                obj, _ = dec.raw_decode(text, start)
                if isinstance(obj, dict):
                    return obj
    return None


def run_one(script: Path, timeout: float) -> dict[str, Any]:
    """Run one bench script; returns ``{"rc", "seconds", "doc" | "error", "tail"}``."""
    takes_out = '"--out"' in script.read_text()
    with tempfile.TemporaryDirectory(prefix="sdrpc-bench-") as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(script), *(["--out", str(out)] if takes_out else [])]
        print(f"+ {' '.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            text, _ = proc.communicate(timeout=timeout)
            rc: int | None = proc.returncode
        except BaseException:  # timeout or Ctrl-C: end its whole process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            rc = None
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
        seconds = round(time.monotonic() - t0, 2)
        doc = None
        if out.is_file():
            with contextlib.suppress(ValueError):
                doc = json.loads(out.read_text())
        if doc is None:
            doc = _first_json(text or "")
    entry: dict[str, Any] = {"script": str(script.relative_to(ROOT)), "rc": rc, "seconds": seconds}
    if rc is None:
        entry["error"] = f"timed out after {timeout:g} s"
    elif rc != 0 and doc is None:
        entry["error"] = f"exited with {rc}"
    if doc is not None:
        entry["doc"] = doc
    elif "error" not in entry:
        entry["error"] = "wrote no JSON document"
    entry["tail"] = (text or "").splitlines()[-15:]
    return entry


def goals(doc: Any, prefix: str = "") -> list[tuple[str, bool]]:
    """Every goal verdict found in a bench document."""
    found: list[tuple[str, bool]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            name = f"{prefix}{k}"
            if k == "goals" and isinstance(v, dict):
                found += [(f"{prefix}{g}", m) for g, m in v.items() if isinstance(m, bool)]
            elif k == "goals" and isinstance(v, list):
                for g in v:
                    if isinstance(g, dict) and isinstance(g.get("met"), bool):
                        found.append((f"{prefix}{g.get('name', '?')}", g["met"]))
            elif k.endswith("goal_met") and isinstance(v, bool):
                found.append((name, v))
            elif k.endswith("goal_met") and isinstance(v, dict):
                found += [(f"{name}.{g}", m) for g, m in v.items() if isinstance(m, bool)]
            elif isinstance(v, (dict, list)):
                found += goals(v, f"{name}.")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += goals(v, f"{prefix}{i}.")
    return found


def ratios(doc: Any, prefix: str = "") -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            name = f"{prefix}{k}"
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if "ratio" in prefix or "ratio" in k:
                    found.append((name, float(v)))
            elif isinstance(v, (dict, list)):
                found += ratios(v, f"{name}.")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += ratios(v, f"{prefix}{i}.")
    return found


def _link_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "MB/s are best of all runs; the goal (sdrpc >= 0.9 x native) is judged on medians.",
        "",
        "| protocol | op | sdrpc MB/s | native MB/s | raw TCP MB/s | sdrpc/native "
        "| sdrpc/native (median) | sdrpc/raw |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc.get("results", []):
        t, ra = r["timings"], r["ratios"]
        for op in ("set", "get"):
            lines.append(
                f"| {r['protocol']} | {op.upper()} | {t[f'sdrpc_{op}']['best_mb_per_s']:.0f} "
                f"| {t[f'native_{op}']['best_mb_per_s']:.0f} "
                f"| {t['raw_tcp']['best_mb_per_s']:.0f} "
                f"| {ra[f'sdrpc_vs_native_{op}']:.2f} | {ra[f'sdrpc_vs_native_{op}_median']:.2f} "
                f"| {ra[f'sdrpc_vs_raw_tcp_{op}']:.2f} |"
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    out = [
        f"# sdrpc benchmarks, {report['date']} on {report['host']}",
        "",
        f"{report['machine']['cpus']} CPUs, Python {report['machine']['python']}, "
        f"{report['machine']['platform']}. Ratios are against baselines measured in the "
        "same run.",
        "",
    ]
    for name, e in report["benches"].items():
        out += [f"## {name} ({e['seconds']:.0f} s)", ""]
        if "error" in e:
            out += [f"**failed**: {e['error']}", "", "```", *e.get("tail", []), "```", ""]
        doc = e.get("doc")
        if doc is None:
            continue
        if name == "link":
            out += [*_link_table(doc), ""]
        gs = goals(doc)
        for g, met in gs:
            out.append(f"- {'met' if met else '**NOT met**'}: {g}")
        if not gs:
            out.append("- (no goal verdicts in this document)")
        rs = ratios(doc)
        if rs and name != "link":
            out.append("")
            out += [f"- {r} = {v:g}" for r, v in rs]
        out.append("")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma list of bench names (link, check, ...)")
    p.add_argument("--skip", help="comma list of bench names to leave out")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per bench script")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args()
    found = discover()
    only = {x.strip() for x in (args.only or "").split(",") if x.strip()}
    skip = {x.strip() for x in (args.skip or "").split(",") if x.strip()}
    unknown = (only | skip) - set(found)
    if unknown:
        print(f"run_all: unknown bench {sorted(unknown)}; have {sorted(found)}", file=sys.stderr)
        return 2
    chosen = {n: s for n, s in found.items() if (not only or n in only) and n not in skip}
    host = platform.node() or "host"
    date = time.strftime("%Y-%m-%d")
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "benches": {},
    }
    for name, script in chosen.items():
        report["benches"][name] = run_one(script, args.timeout)
    args.results.mkdir(parents=True, exist_ok=True)
    partial = "" if chosen == found else "-" + "-".join(chosen)  # never clobber a full run
    stem = args.results / f"{date}-{host}{partial}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report) + "\n")
    print(f"written: {stem}.json and {stem}.md")
    failed = [n for n, e in report["benches"].items() if "error" in e]
    unmet = [(n, g) for n, e in report["benches"].items() for g, m in goals(e.get("doc")) if not m]
    for n in failed:
        print(f"run_all: {n} failed: {report['benches'][n]['error']}", file=sys.stderr)
    for n, g in unmet:
        print(f"run_all: {n}: goal not met: {g}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
