"""sdrpc-build: from a stable-diffusion.cpp checkout to a cached, verified rpc-server.

Exit codes: :data:`CODES` (listed by ``--help``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Optional

from sdrpc_build.build.ci_matrix import main_ci_matrix
from sdrpc_build.build.pins import Pin, SdPins, is_full_sha, parse_max_name_value, read_sd_tree
from sdrpc_build.build.pipeline import BuildOptions, build, dry_run
from sdrpc_build.build.plan import parse_define
from sdrpc_build.build.recipes import list_recipes
from sdrpc_build.build.remote import RemoteConfig, read_remote_ref
from sdrpc_build.build.source import DEFAULT_LLAMA_REPO
from sdrpc_build.build.store import list_manifests
from sdrpc_build.build.url import SecretUrl
from sdrpc_build.build.wheel import build_wheel
from sdrpc_build.cli._common import Parser, run_parsed
from sdrpc_build.cli.build_report import (
    build_reporter,
    print_backends,
    print_builds,
    print_dry_run,
    print_pins,
    print_result,
)
from sdrpc_build.cli.build_vulkan import add_vulkan_options, headers_choice
from sdrpc_build.errors import ExitCode, PinsError, Terminated, UsageError
from sdrpc_build.paths import artifacts_dir, cache_dir, shown_path

__all__ = ["CODES", "exact_ggml_dir", "main", "make_parser", "read_pins"]

PROG = "sdrpc-build"
#: what sdrpc-build may exit with
CODES = (
    ExitCode.OK,
    ExitCode.INTERNAL,
    ExitCode.USAGE,
    ExitCode.PINS,
    ExitCode.RECIPE,
    ExitCode.SOURCE,
    ExitCode.TOOL,
    ExitCode.BUILD,
    ExitCode.VERIFY,
    ExitCode.STORE,
    ExitCode.INTERRUPTED,
    ExitCode.TERMINATED,
)


def make_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Build a ggml rpc-server that matches a stable-diffusion.cpp client, "
        "cache it, and verify it with a real handshake.",
        exit_codes=CODES,
    )
    src = p.add_argument_group("pins (where the client's requirements come from)")
    src.add_argument(
        "--sd-cpp",
        metavar="PATH",
        type=Path,
        help="sd.cpp checkout or unpacked tree (default: the current directory)",
    )
    src.add_argument(
        "--sd-ref",
        metavar="OWNER/REPO@REF",
        help="resolve the pins remotely, e.g. leejet/stable-diffusion.cpp@master",
    )
    src.add_argument("--llama-commit", metavar="SHA", help="override the llama.cpp commit (40 hex)")
    src.add_argument(
        "--max-name",
        metavar="N",
        help="override GGML_MAX_NAME (a multiple of 16; required with --llama-commit alone)",
    )
    src.add_argument(
        "--github-api",
        metavar="URL",
        type=SecretUrl.parse,
        default=None,
        help="base URL of the GitHub API (default https://api.github.com; env SDRPC_GITHUB_API)",
    )
    src.add_argument(
        "--github-raw",
        metavar="URL",
        type=SecretUrl.parse,
        default=None,
        help="base URL for raw files (default https://raw.githubusercontent.com; "
        "env SDRPC_GITHUB_RAW)",
    )
    b = p.add_argument_group("build")
    b.add_argument("--backend", default="cpu", help="recipe name (default cpu; --list-backends)")
    b.add_argument("--recipe", metavar="FILE", type=Path, help="use a custom recipe file")
    b.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra CMake define (repeatable); wins over the recipe",
    )
    b.add_argument(
        "--portable", action="store_true", help="GGML_NATIVE=OFF: a binary for other machines' CPUs"
    )
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("-j", "--jobs", metavar="N", help="parallel compile jobs")
    b.add_argument("--no-verify", action="store_true", help="skip the handshake verification")
    b.add_argument(
        "--exact",
        action="store_true",
        help="build llama.cpp's rpc-server against the sd.cpp tree's own ggml submodule: "
        "the server speaks exactly the client's protocol version (forks' extra ops included)",
    )
    s = p.add_argument_group("llama.cpp source")
    s.add_argument(
        "--llama-repo",
        type=SecretUrl.parse,
        default=DEFAULT_LLAMA_REPO,
        metavar="URL|PATH",
        help="git URL or path to fetch from (default: %(default)s)",
    )
    s.add_argument("--llama-src", type=Path, metavar="PATH", help="use an existing checkout")
    s.add_argument("--allow-dirty", action="store_true", help="accept a modified --llama-src")
    s.add_argument(
        "--llama-sdist",
        metavar="NAME==VERSION",
        help="use the llama.cpp vendored in a PyPI sdist, e.g. llama-cpp-python==0.3.35",
    )
    add_vulkan_options(p)
    o = p.add_argument_group("output")
    o.add_argument("--cache-dir", type=Path, help="cache root (env SDRPC_CACHE_DIR)")
    o.add_argument("--dry-run", action="store_true", help="print pins, plan and cmake lines only")
    o.add_argument("--json", action="store_true", help="print one JSON object")
    o.add_argument("--list-backends", action="store_true", help="list recipes and exit")
    o.add_argument("--list", action="store_true", help="list cached builds and exit")
    o.add_argument(
        "--ci-matrix", action="store_true", help="print the CI build matrix (JSON) and exit"
    )
    o.add_argument(
        "--wheel", action="store_true", help="also package the server as a platform wheel"
    )
    o.add_argument(
        "--out", type=Path, default=Path("dist"), help="wheel output directory (default: dist)"
    )
    o.add_argument("--debug", action="store_true", help="tracebacks for errors")
    return p


def _jobs(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    raw = text.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 4 or not 1 <= int(raw) <= 4096:
        raise UsageError(f"--jobs {text[:20]!r} is not a number from 1 to 4096", hint="e.g. -j 4")
    return int(raw)


def _pins(args: argparse.Namespace, env: Mapping[str, str]) -> SdPins:
    return read_pins(
        env,
        sd_cpp=args.sd_cpp,
        sd_ref=args.sd_ref,
        llama_commit=args.llama_commit,
        max_name_text=args.max_name,
        github_api=args.github_api,
        github_raw=args.github_raw,
    )


def read_pins(
    env: Mapping[str, str],
    *,
    sd_cpp: Optional[Path],
    sd_ref: Optional[str],
    llama_commit: Optional[str],
    max_name_text: Optional[str],
    github_api: Optional[SecretUrl] = None,
    github_raw: Optional[SecretUrl] = None,
) -> SdPins:
    """The client's pins from the pin options (sdrpc-build's and sdrpc-launch's): a remote
    ref, a tree (default: the current directory), or ``--llama-commit`` + ``--max-name``."""
    if llama_commit is not None and not is_full_sha(llama_commit):
        raise UsageError(
            f"--llama-commit {llama_commit[:60]!r} is not a full 40-hex commit",
            hint="pinned means a full SHA; abbreviations and branch names are refused",
        )
    max_name: Optional[int] = None
    if max_name_text is not None:
        max_name = parse_max_name_value(max_name_text, "--max-name", UsageError)
    if sd_ref:
        cfg = RemoteConfig.from_env(env, api=github_api, raw=github_raw)
        return read_remote_ref(sd_ref, cfg, llama_commit=llama_commit, max_name=max_name)
    if sd_cpp is None and llama_commit is not None:
        # no tree: the commit and the name length must both be given
        if max_name is None:
            raise UsageError(
                "--llama-commit without an sd.cpp tree needs --max-name N",
                hint="give the client's GGML_MAX_NAME: --max-name 160 for sd.cpp since "
                "2026-07 (128 before); ggml's default 64 fits no sd.cpp client. Or pass "
                "--sd-cpp PATH / --sd-ref OWNER/REPO@REF to read it",
            )
        return SdPins(
            llama_commit=Pin(llama_commit, "--llama-commit"),
            max_name=Pin(max_name, "--max-name"),
            client_protocol=Pin(None, "unknown (no sd.cpp tree)"),
            ggml_url=Pin(None, "unknown (no sd.cpp tree)"),
            ggml_commit=Pin(None, "unknown (no sd.cpp tree)"),
            sd_commit=Pin(None, "unknown (no sd.cpp tree)"),
            rpc_client=Pin(None, "unknown (no sd.cpp tree)"),
            origin="command line",
        )
    tree = sd_cpp or Path(os.getcwd())
    try:
        return read_sd_tree(tree, llama_commit=llama_commit, max_name=max_name)
    except PinsError as exc:
        if sd_cpp is None and "not a stable-diffusion.cpp tree" in exc.message:
            raise PinsError(
                "the current directory is not a stable-diffusion.cpp tree",
                hint="cd into an sd.cpp checkout, pass --sd-cpp PATH or --sd-ref OWNER/REPO@REF, "
                "or give --llama-commit SHA --max-name N",
            ) from None
        raise


def exact_ggml_dir(sd_cpp: Optional[Path], sd_ref: Optional[str]) -> Path:
    """``--exact``: the sd.cpp tree's ggml submodule (default tree: the current directory)."""
    if sd_ref:
        raise UsageError(
            "--exact needs a local sd.cpp tree, not --sd-ref",
            hint="clone it with submodules and pass --sd-cpp PATH",
        )
    exact_dir = ((sd_cpp or Path(os.getcwd())) / "ggml").expanduser()
    try:
        is_tree = (exact_dir / "CMakeLists.txt").is_file()
    except OSError as exc:
        raise PinsError(
            f"cannot read {shown_path(exact_dir)}: {exc.strerror or exc}",
            hint="check the --sd-cpp path and its permissions",
        ) from None
    if not is_tree:
        raise UsageError(
            f"--exact: {shown_path(exact_dir)} is not a ggml tree",
            hint="run: git submodule update --init ggml (in the sd.cpp tree)",
        )
    return exact_dir


def _options(args: argparse.Namespace, env: Mapping[str, str]) -> BuildOptions:
    if args.llama_src and args.llama_sdist:
        raise UsageError("--llama-src and --llama-sdist are exclusive", hint="pick one source")
    jobs = _jobs(args.jobs)
    exact_dir = exact_ggml_dir(args.sd_cpp, args.sd_ref) if args.exact else None
    return BuildOptions(
        cache_root=cache_dir(env, args.cache_dir),
        backend=args.backend,
        recipe_file=args.recipe,
        defines=tuple(parse_define(d) for d in args.defines),
        portable=args.portable,
        force=args.force,
        llama_repo=args.llama_repo,
        llama_src=args.llama_src,
        allow_dirty=args.allow_dirty,
        llama_sdist=args.llama_sdist,
        jobs=jobs,
        verify=not args.no_verify,
        exact_ggml_dir=exact_dir,
        vulkan_headers=headers_choice(args),
    )


def _cmd(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.ci_matrix:
        return main_ci_matrix()
    if args.list_backends:
        print_backends(list_recipes(), args.json)
        return 0
    if args.list:
        print_builds(list_manifests(artifacts_dir(cache_dir(env, args.cache_dir))), args.json)
        return 0
    opts = _options(args, env)  # usage errors first: before any network access
    pins = _pins(args, env)
    if args.dry_run:
        print_dry_run(pins, dry_run(pins, opts, env), args.json)
        return 0
    if not args.json:
        print_pins(pins)
    with build_reporter(PROG) as reporter:
        res = build(pins, opts, env, reporter)
    wheel_path: Optional[Path] = None
    if args.wheel:
        wheel_path = build_wheel(
            res.manifest, args.out, env=env, scratch_root=opts.cache_root / "tmp"
        )
    print_result(res, wheel_path, args.json)
    return 0


def _on_sigterm(_signum: int, _frame: Optional[FrameType]) -> None:
    """SIGTERM stops a build like Ctrl-C (compile jobs stopped, nothing stored), exit 143."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup must not be cut short
    raise Terminated(
        "terminated (SIGTERM)", hint="run the same command again; nothing half-written was kept"
    )


def main(argv: Optional[list[str]] = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    return run_parsed(PROG, make_parser(), argv, lambda args: _cmd(args, os.environ))


if __name__ == "__main__":
    sys.exit(main())
