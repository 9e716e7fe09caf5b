"""Benchmark sdrpc-build against the hand-run seed recipe, in the same run, on the same tree.

Measures (CPU backend, llama.cpp from the llama-cpp-python 0.3.35 sdist):
- seed: the guide's manual recipe (cmake configure + --target build) with ccache off;
- cold: `sdrpc-build` into an empty cache with ccache off (goal: cold/seed <= 1.10);
- warm: the same request again, a store hit (goal: < 1 s, zero compiler invocations);
- ccache: `sdrpc-build --force` into a fresh build dir with a warm ccache
  (goal: ccache/cold <= 0.10).

Usage: python bench/bench_build.py --out bench/results/build.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import servers

COMMIT = servers.LLAMA_SDISTS["0.3.35"][0]


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def _sdrpc(cache: Path, env: dict[str, str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sdrpc_build.cli.build",
        "--cache-dir",
        str(cache),
        "--llama-commit",
        COMMIT,
        "--max-name",
        "160",
        "--llama-repo",
        servers.bare_repo("0.3.35").as_uri(),
        "--json",
        *extra,
    ]


def _compiles(build_dir: Path) -> int:
    log = build_dir / ".ninja_log"
    return (
        sum(1 for ln in log.read_text().splitlines() if not ln.startswith("#"))
        if log.exists()
        else 0
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results/build.json"))
    args = ap.parse_args()
    tree = servers.llama_tree("0.3.35")
    work = Path(tempfile.mkdtemp(prefix="sdrpc-bench-build-"))
    try:
        ccache_dir = work / "ccache"
        base = dict(os.environ, CCACHE_DIR=str(ccache_dir))
        base.pop("SDRPC_CACHE_DIR", None)
        cold_env = dict(base, CCACHE_DISABLE="1")
        defs = "-DGGML_MAX_NAME=160"
        # seed and cold alternate (twice each) so machine noise hits both alike
        seeds: list[float] = []
        colds: list[float] = []
        seed_objs = cold_objs = 0
        cache = work / "cache"
        for rnd in range(2):
            sdir = work / f"seed{rnd}"
            t = _timed(
                [
                    "cmake",
                    "-S",
                    str(tree),
                    "-B",
                    str(sdir),
                    "-G",
                    "Ninja",
                    "-DGGML_RPC=ON",
                    "-DBUILD_SHARED_LIBS=OFF",
                    "-DLLAMA_CURL=OFF",
                    "-DCMAKE_BUILD_TYPE=Release",
                    f"-DCMAKE_C_FLAGS={defs}",
                    f"-DCMAKE_CXX_FLAGS={defs}",
                ],
                cold_env,
            )
            t += _timed(["cmake", "--build", str(sdir), "--target", "ggml-rpc-server"], cold_env)
            seeds.append(t)
            seed_objs = _compiles(sdir)
            shutil.rmtree(sdir)
            # the source cache is warm, so cold measures configure+build+verify+store
            shutil.rmtree(cache, ignore_errors=True)
            shutil.copytree(servers.sdrpc_cache() / "sources" / COMMIT, cache / "sources" / COMMIT)
            colds.append(_timed(_sdrpc(cache, cold_env), cold_env))
            cold_objs = _compiles(next((cache / "builds").iterdir()))
        seed, cold = min(seeds), min(colds)
        build_dir = next((cache / "builds").iterdir())
        before = _compiles(build_dir)
        warm = _timed(_sdrpc(cache, base), base)
        warm_compiles = _compiles(build_dir) - before
        # ccache: populate it once, then a fresh build dir
        cache2 = work / "cache2"
        shutil.copytree(cache / "sources", cache2 / "sources")
        _timed(_sdrpc(cache2, base), base)
        shutil.rmtree(cache2 / "builds")
        shutil.rmtree(cache2 / "artifacts")
        ccache = _timed(_sdrpc(cache2, base, "--force"), base)
        result = {
            "benchmark": "build",
            "commit": COMMIT,
            "seed_recipe_s": round(seed, 2),
            "seed_runs_s": [round(x, 2) for x in seeds],
            "sdrpc_cold_runs_s": [round(x, 2) for x in colds],
            "seed_compiled_objects": seed_objs,
            "sdrpc_compiled_objects": cold_objs,
            "sdrpc_cold_s": round(cold, 2),
            "sdrpc_warm_hit_s": round(warm, 3),
            "warm_hit_compiles": warm_compiles,
            "sdrpc_ccache_fresh_dir_s": round(ccache, 2),
            "ratios": {
                "cold_vs_seed": round(cold / seed, 3),
                "ccache_vs_cold": round(ccache / cold, 3),
            },
            "goals": {
                "cold_vs_seed <= 1.10": cold / seed <= 1.10,
                "warm < 1 s and 0 compiles": warm < 1.0 and warm_compiles == 0,
                "ccache_vs_cold <= 0.10": ccache / cold <= 0.10,
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
