"""sdrpc-launch: start ggml rpc-server instances and keep them running.

Usage::

    sdrpc-launch                                    # one server on 127.0.0.1:50052, newest build
    sdrpc-launch --host 0.0.0.0 -d Vulkan1,Vulkan2 -p 50053
    sdrpc-launch --backend cuda --visible-devices 0
    sdrpc-launch --sd-cpp ~/src/stable-diffusion.cpp   # the build for that client (built if none)
    sdrpc-launch --per-device                       # one server per device the binary offers
    sdrpc-launch --config servers.toml              # several servers ([[server]] tables)
    sdrpc-launch --config servers.toml --detach     # in the background, once all are ready
    sdrpc-launch status [--instance NAME] [--json]  # a detached instance: servers, busy/idle
    sdrpc-launch stop [--instance NAME]             # stop it (SIGTERM, wait, SIGKILL)

Stop with Ctrl-C (or SIGTERM): every server gets SIGTERM, then SIGKILL after --stop-timeout;
a second Ctrl-C SIGKILLs them at once (still exit 0). servers.toml may hold a [supervise] table
(the supervision flags' names without "--"; launch/settings.py declares them); the flags win.

This module parses and renders; launch/ does the work, with two things injected from here
(``launch_wiring``): the build locator (build/'s store and wheels) and the readiness check
(protocol's probe and compat rules).

Exit codes: 0 stopped on request (or every server exited cleanly; --detach: all ready),
2 usage, 20-29 launch failures, 130 interrupted: the table is ``sdrpc_build.errors.EXIT_CODES``
(the README's "Exit codes" shows it).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Optional

from sdrpc_build.build.url import SecretUrl
from sdrpc_build.cli._common import Parser, run_parsed
from sdrpc_build.cli.launch_ctl import main as control_main
from sdrpc_build.cli.launch_detach import detach
from sdrpc_build.cli.launch_report import PROG, ChildReporter, Reporter, security_warning
from sdrpc_build.cli.launch_wiring import BUILDS, PinArgs, client_pins, readiness_check
from sdrpc_build.errors import ServerFatalError, UsageError
from sdrpc_build.launch import settings
from sdrpc_build.launch.child import DetachedChild
from sdrpc_build.launch.config import (
    ServerOptions,
    Supervision,
    load_config,
    supervision_policy,
)
from sdrpc_build.launch.instance import DEFAULT_INSTANCE
from sdrpc_build.launch.ports import ensure_port_free, pick_free_port
from sdrpc_build.launch.procs import line_buffer_prefix, list_devices
from sdrpc_build.launch.resolve import (
    BuildMissing,
    ClientPins,
    Environment,
    resolve_build,
    resolve_servers,
)
from sdrpc_build.launch.runner import Runner
from sdrpc_build.launch.settings import Policy
from sdrpc_build.launch.supervisor import Supervisor
from sdrpc_build.paths import artifacts_dir, cache_dir, run_dir

__all__ = ["CONTROL_COMMANDS", "main"]

#: ``sdrpc-launch status ...`` / ``sdrpc-launch stop ...`` (first word only)
CONTROL_COMMANDS = ("status", "stop")
_PER_SERVER_FLAGS = (
    "binary",
    "backend",
    "build",
    "name",
    "host",
    "port",
    "device",
    "threads",
    "cache",
    "cache_max_size",
    "env",
    "visible_devices",
    "restart",
)


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Start and supervise ggml rpc-servers.",
        epilog="A --detach instance: 'sdrpc-launch status [--instance NAME]' shows it, "
        "'sdrpc-launch stop [--instance NAME]' ends it (see their --help).",
    )
    sel = p.add_argument_group("which server binary")
    sel.add_argument("--binary", type=Path, help="an rpc-server binary to run")
    sel.add_argument("--backend", help="newest sdrpc build of this backend (cuda, vulkan, ...)")
    sel.add_argument(
        "--build", metavar="KEY", help="an sdrpc build: key, key prefix or manifest.json path"
    )
    sel.add_argument("--cache-dir", help="sdrpc's cache (artifact store; default: user cache)")
    pin = p.add_argument_group(
        "the client's pins (as sdrpc-build's): only a build made for them is started, "
        "built first when the store has none"
    )
    pin.add_argument("--sd-cpp", metavar="PATH", type=Path, help="the client's sd.cpp tree")
    pin.add_argument(
        "--sd-ref", metavar="OWNER/REPO@REF", help="the client's sd.cpp, resolved remotely"
    )
    pin.add_argument("--llama-commit", metavar="SHA", help="llama.cpp commit (40 hex)")
    pin.add_argument(
        "--max-name", metavar="N", help="GGML_MAX_NAME (required with --llama-commit alone)"
    )
    pin.add_argument(
        "--exact", action="store_true", help="a build against the --sd-cpp tree's own ggml"
    )
    pin.add_argument(
        "--llama-repo", type=SecretUrl.parse, metavar="URL|PATH", help="source for a build"
    )
    pin.add_argument("--llama-src", type=Path, metavar="PATH", help="source for a build")
    pin.add_argument("--llama-sdist", metavar="NAME==VERSION", help="source for a build")
    pin.add_argument(
        "--no-build",
        action="store_true",
        help="refuse (exit 25) instead of building when no build matches the pins",
    )
    srv = p.add_argument_group("server options (one server; see --config for several)")
    srv.add_argument("--name", help="server name (log file, cache dir); default rpc-PORT")
    srv.add_argument("--host", help=f"IPv4 address to bind (default {settings.DEFAULT_HOST})")
    srv.add_argument(
        "-p", "--port", help=f"port (default {settings.DEFAULT_PORT}; 0 = a free port)"
    )
    srv.add_argument("-d", "--device", help="devices to serve, e.g. Vulkan1,Vulkan2")
    srv.add_argument("-t", "--threads", metavar="N", help="CPU threads")
    srv.add_argument(
        "-c",
        "--cache",
        nargs="?",
        const="",
        metavar="DIR",
        help="enable rpc-server's tensor cache; one dir per server under DIR "
        "(default: sdrpc's cache)",
    )
    srv.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="prune least recently used cache files above SIZE (e.g. 20G); implies -c",
    )
    srv.add_argument("--env", action="append", metavar="KEY=VAL", help="extra environment")
    srv.add_argument(
        "--visible-devices",
        metavar="LIST",
        help="GPUs the backend may see (CUDA_VISIBLE_DEVICES and the like)",
    )
    srv.add_argument(
        "--restart",
        choices=settings.RESTART_POLICIES,
        help=f"restart policy (default {settings.DEFAULT_RESTART}; a kill by signal is a failure)",
    )
    srv.add_argument(
        "--per-device",
        action="store_true",
        help="one server per device the binary offers (ports PORT, PORT+1, ...)",
    )
    p.add_argument("--config", type=Path, help="servers.toml with [[server]] tables")
    sup = p.add_argument_group("supervision")
    sup.add_argument(
        "--log-dir", type=Path, help="per-server log files (default: <sdrpc cache>/logs)"
    )
    for setting in settings.SUPERVISE:
        sup.add_argument(setting.flag, metavar=setting.metavar, help=setting.flag_help)
    sup.add_argument(
        "--detach",
        action="store_true",
        help="run in the background: return once every server is ready (or fail and leave "
        "nothing running); see 'sdrpc-launch status' and 'sdrpc-launch stop'",
    )
    sup.add_argument(
        "--instance",
        metavar="NAME",
        help=f"name of the --detach instance (default {DEFAULT_INSTANCE!r}; one per name)",
    )
    p.add_argument("--_ready-fd", dest="ready_fd", type=int, help=argparse.SUPPRESS)
    out = p.add_argument_group("output")
    out.add_argument(
        "--json",
        action="store_true",
        help="JSON events on stdout, one per line (--detach: one object)",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="do not echo server output")
    out.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    return p


def _env_pairs(items: Optional[list[str]]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r} is not KEY=VALUE", hint="e.g. --env GGML_RPC_DEBUG=1")
        pairs.append(settings.env_pair(key, value, "--env"))
    return tuple(pairs)


def _policy(args: argparse.Namespace, file: Supervision) -> Policy:
    """Supervision settings: the command line > servers.toml's [supervise] > the defaults."""
    return supervision_policy(file, {s.field: getattr(args, s.field) for s in settings.SUPERVISE})


def _settings(args: argparse.Namespace) -> tuple[list[ServerOptions], Policy]:
    """Every setting checked, before anything starts (also in the --detach parent)."""
    if args.config is not None:
        given = [f for f in _PER_SERVER_FLAGS if getattr(args, f) is not None]
        if given or args.per_device:
            flag = "--" + (given[0] if given else "per_device").replace("_", "-")
            raise UsageError(
                f"{flag} cannot be combined with --config",
                hint="put per-server settings into the [[server]] tables",
            )
        config = load_config(args.config)
        return list(config.servers), _policy(args, config.supervise)
    return _options(args), _policy(args, Supervision())


def _options(args: argparse.Namespace) -> list[ServerOptions]:
    if args.binary is not None and args.build is not None:
        raise UsageError("give --binary or --build, not both")
    o = ServerOptions(
        name=args.name,
        binary=args.binary,
        backend=args.backend and args.backend.lower(),
        build=args.build,
        host=args.host or settings.DEFAULT_HOST,
        port=settings.DEFAULT_PORT if args.port is None else settings.port(args.port, "--port"),
        devices=tuple(d.strip() for d in (args.device or "").split(",") if d.strip()),
        threads=None if args.threads is None else settings.threads(args.threads, "--threads"),
        env=_env_pairs(args.env),
        visible_devices=args.visible_devices,
        restart=args.restart or settings.DEFAULT_RESTART,
    )
    if args.cache is not None or args.cache_max_size is not None:
        path = Path(args.cache).expanduser().resolve() if args.cache else None
        size = (
            settings.parse_size(args.cache_max_size, "--cache-max-size")
            if args.cache_max_size is not None
            else None
        )
        o = replace(o, cache=True, cache_path=path, cache_max_size=size)
    return [o]


def _warn_stderr(text: str) -> None:
    """The detached supervisor's own warnings: its log."""
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def _resolve_host(host: str) -> Optional[str]:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):  # UnicodeError: a label too long or empty
        return None
    return str(infos[0][4][0]) if infos else None


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    env = dict(os.environ)
    root = cache_dir(env, args.cache_dir)
    log_dir: Path = args.log_dir or root / "logs"
    instance = args.instance or DEFAULT_INSTANCE
    # checked here, before anything starts (the --detach parent checks what its child will run)
    options, policy = _settings(args)
    pins = client_pins(_pin_args(args), env, root, PROG)
    if args.ready_fd is not None:  # we are the supervisor that --detach started
        child = DetachedChild.begin(
            args.ready_fd, run_dir(root), instance, log_dir, policy.stop_timeout, _warn_stderr
        )
        return child.run(lambda: _supervise(args, options, policy, env, root, log_dir, child, pins))
    if args.detach:
        if pins[0] is not None:  # build what is missing here, its progress on this stderr
            for o in options:
                resolve_build(o, artifacts_dir(root), BUILDS, pins=pins[0], build_missing=pins[1])
        return detach(argv, instance, env, run_dir(root), log_dir, policy, args.json)
    if args.instance is not None:
        raise UsageError(
            "--instance needs --detach",
            hint="a foreground sdrpc-launch has no instance name; status and stop take one",
        )
    return _supervise(args, options, policy, env, root, log_dir, None, pins)


def _pin_args(args: argparse.Namespace) -> PinArgs:
    return PinArgs(
        sd_cpp=args.sd_cpp,
        sd_ref=args.sd_ref,
        llama_commit=args.llama_commit,
        max_name=args.max_name,
        exact=args.exact,
        llama_repo=args.llama_repo,
        llama_src=args.llama_src,
        llama_sdist=args.llama_sdist,
        no_build=args.no_build,
    )


def _supervise(
    args: argparse.Namespace,
    options: list[ServerOptions],
    policy: Policy,
    env: Mapping[str, str],
    root: Path,
    log_dir: Path,
    child: Optional[DetachedChild],
    pins: tuple[Optional[ClientPins], Optional[BuildMissing]] = (None, None),
) -> int:
    early_warnings: list[str] = []
    world = Environment(
        env=env,
        builds=BUILDS,
        artifacts_root=artifacts_dir(root),
        cache_root=root / "rpc-cache",
        resolve_host=_resolve_host,
        ensure_port_free=ensure_port_free,
        pick_free_port=pick_free_port,
        list_devices=list_devices,
        warn=early_warnings.append,
        pins=pins[0],
        build_missing=pins[1],
    )
    specs = resolve_servers(options, world, per_device=args.per_device)
    reporter = (
        Reporter(args.json, args.quiet, specs)
        if child is None
        else ChildReporter(child, args.json, specs)
    )
    for w in early_warnings:
        reporter.warn(w)
    for spec in specs:
        security_warning(reporter, spec)
    sup = Supervisor(specs, policy)
    runner = Runner(
        sup,
        base_env=env,
        on_event=reporter.event,
        on_output=reporter.output,
        readiness=readiness_check,
        log_dir=log_dir,
        line_buffer=line_buffer_prefix(),
    )
    if child is not None:
        child.attach(sup, runner)
    # a Ctrl-C after the servers stopped must not turn a clean stop into "interrupted"
    runner.run(restore_signals=False)
    if child is not None:
        child.raise_if_start_failed()
    fatal = sup.fatal
    if fatal:
        names = ", ".join(s.spec.name for s in fatal)
        reason = fatal[0].machine.fatal_reason or "too many failures"
        raise ServerFatalError(
            f"{len(fatal)} server(s) FATAL: {names} ({reason})",
            hint=f"see the logs in {log_dir}",
        )
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in CONTROL_COMMANDS:
        return control_main(words)
    return run_parsed(PROG, _parser(), words, lambda args: _run(args, words))


if __name__ == "__main__":
    sys.exit(main())
