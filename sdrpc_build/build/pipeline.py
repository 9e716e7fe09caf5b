"""The build pipeline: pins + recipe -> plan -> source -> cmake -> verify -> store.

Library code: takes an environment mapping and a reporter, returns values or
raises :class:`SdrpcError`. The command line lives in :mod:`sdrpc_build.cli.build`.
"""

from __future__ import annotations

import platform as _platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Protocol

from filelock import FileLock

from sdrpc_build import __version__
from sdrpc_build.build import doctor
from sdrpc_build.build.exact import exact_facts, tree_digest, write_exact_project
from sdrpc_build.build.pins import SdPins, check_max_name, format_version
from sdrpc_build.build.plan import (
    BuildPlan,
    BuildRequest,
    Commands,
    TreeFacts,
    build_dirs,
    cache_key,
    commands,
    make_plan,
    read_tree_facts,
)
from sdrpc_build.build.recipes import Recipe, load_recipe, load_recipe_file
from sdrpc_build.build.scratch import clean_stale
from sdrpc_build.build.sdist import from_sdist
from sdrpc_build.build.source import (
    DEFAULT_LLAMA_REPO,
    Source,
    cached_source,
    fetch_git,
    from_local_checkout,
)
from sdrpc_build.build.store import (
    UNKNOWN,
    ExactRef,
    Manifest,
    RecipeRef,
    SourceRef,
    ToolVersions,
    cache_error,
    install_entry,
    lookup,
    prepare_cache,
)
from sdrpc_build.build.toolchain import (
    Toolchain,
    ccache_env,
    current_platform,
    discover_toolchain,
    find_binary,
    parse_ninja_step,
    prepare_build_dir,
)
from sdrpc_build.build.url import SecretUrl
from sdrpc_build.build.verify import VerifyResult, runtime_env, verify_binary
from sdrpc_build.build.vulkan_headers import (
    REQUIREMENT as VULKAN_HEADERS,
)
from sdrpc_build.build.vulkan_headers import (
    Headers,
    HeadersChoice,
    auto_dir,
    fetch_auto,
    headers_record,
    prepare,
)
from sdrpc_build.errors import StoreError, ToolError, VerifyError
from sdrpc_build.paths import artifacts_dir, sources_dir
from sdrpc_build.run import run_logged

__all__ = [
    "BuildOptions",
    "BuildResult",
    "DryRun",
    "Reporter",
    "build",
    "dry_run",
    "resolve_recipe",
    "scratch_parents",
    "source_tree",
]


class Reporter(Protocol):
    def phase(self, name: str) -> None: ...
    def progress(self, done: int, total: int, what: str = "") -> None: ...
    def log(self, message: str) -> None: ...


class _Quiet:
    def phase(self, name: str) -> None:
        pass

    def progress(self, done: int, total: int, what: str = "") -> None:
        pass

    def log(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class BuildOptions:
    cache_root: Path
    backend: str = "cpu"
    recipe_file: Optional[Path] = None
    defines: tuple[tuple[str, str], ...] = ()
    portable: bool = False
    force: bool = False
    llama_repo: SecretUrl = DEFAULT_LLAMA_REPO
    llama_src: Optional[Path] = None
    allow_dirty: bool = False
    llama_sdist: Optional[str] = None
    jobs: Optional[int] = None
    verify: bool = True
    fetch_retries: int = 3
    exact_ggml_dir: Optional[Path] = None  # --exact: build against this ggml tree
    vulkan_headers: Optional[HeadersChoice] = None  # --vulkan-headers auto|PATH


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    cache_hit: bool
    plan: Optional[BuildPlan]
    verify: Optional[VerifyResult]
    seconds: float
    warnings: tuple[str, ...] = field(default=())


def resolve_recipe(opts: BuildOptions) -> Recipe:
    return load_recipe_file(opts.recipe_file) if opts.recipe_file else load_recipe(opts.backend)


def _request(
    pins: SdPins,
    recipe: Recipe,
    opts: BuildOptions,
    tools: Optional[Toolchain],
    source_state: str,
    exact_ggml: str = "",
    headers: Optional[Headers] = None,
) -> BuildRequest:
    return BuildRequest(
        commit=pins.llama_commit.value,
        max_name=check_max_name(pins.max_name.value, pins.max_name.source),
        recipe=recipe,
        user_defines=opts.defines,
        portable=opts.portable,
        generator="Ninja" if tools is None or tools.ninja else "Unix Makefiles",
        tool_versions=tools.versions() if tools else (),
        source_state=source_state,
        exact_ggml=exact_ggml,
        resolved_defines=headers.defines() if headers else (),
        inputs=(headers.key_input(),) if headers else (),
    )


@dataclass(frozen=True)
class DryRun:
    """What ``sdrpc-build --dry-run`` shows: the plan, notes, and the commands it would run."""

    plan: BuildPlan
    notes: tuple[str, ...]
    commands: Commands


def dry_run(pins: SdPins, opts: BuildOptions, env: Mapping[str, str]) -> DryRun:
    """The plan without network or build; the tree facts only if the source is cached."""
    recipe = resolve_recipe(opts)
    notes: list[str] = []
    choice = opts.vulkan_headers
    headers = prepare(choice, recipe, opts.defines, env, opts.cache_root)
    if choice is not None and headers is None:  # auto, not fetched yet: where it will be
        headers = Headers(
            auto_dir(opts.cache_root, choice.repo) / "include",
            (),
            "auto",
            str(choice.repo),
            "(digest of the fetched headers)",
        )
        notes.append(f"Vulkan headers would be fetched from {choice.repo}")
    source: Optional[Source] = None
    if opts.llama_src is not None:
        source = Source(opts.llama_src, pins.llama_commit.value, "local", str(opts.llama_src))
    else:
        source = cached_source(sources_dir(opts.cache_root), pins.llama_commit.value)
    try:  # the preflight sdrpc-build runs (and sdrpc doctor shows)
        doctor.require_buildable(
            recipe,
            env,
            opts.cache_root,
            (*opts.defines, *(headers.defines() if headers and headers.version else ())),
            need_git=not opts.llama_sdist or bool(choice and choice.auto),
            provided=(VULKAN_HEADERS,) if headers and not headers.version else (),
            tree=source.tree if source else None,
        )
    except ToolError as exc:
        notes.append(f"{exc.message} ({exc.hint})")
    try:
        tools: Optional[Toolchain] = discover_toolchain(recipe, env)
    except ToolError as exc:
        tools = None
        notes.append(f"{exc.message} ({exc.hint})")
    facts = read_tree_facts(source.tree) if source and source.tree.is_dir() else None
    if facts is None:
        notes.append(
            f"source not cached yet: it would be fetched from {opts.llama_sdist or opts.llama_repo}"
        )
    if facts is not None and opts.exact_ggml_dir is not None:
        facts = exact_facts(facts, opts.exact_ggml_dir)
    exact_id = "(digest of the sd.cpp ggml tree)" if opts.exact_ggml_dir else ""
    req = _request(pins, recipe, opts, tools, "clean", exact_id, headers)
    plan = make_plan(req, facts)
    tree = source.tree if source else sources_dir(opts.cache_root) / pins.llama_commit.value
    dirs = build_dirs(opts.cache_root, plan.key, tree, exact=bool(opts.exact_ggml_dir))
    cmake, ninja = (tools.cmake, tools.ninja) if tools else ("cmake", None)
    return DryRun(plan, tuple(notes), commands(plan, dirs, cmake, ninja, opts.jobs))


def _get_source(
    pins: SdPins, opts: BuildOptions, env: Mapping[str, str], reporter: Reporter
) -> Source:
    commit = pins.llama_commit.value
    sroot = sources_dir(opts.cache_root)
    if opts.llama_src is not None:
        return from_local_checkout(opts.llama_src, commit, opts.allow_dirty)
    if opts.llama_sdist is not None:
        return from_sdist(
            sroot,
            opts.cache_root / "downloads",
            opts.llama_sdist,
            commit,
            env=env,
            log=reporter.log,
        )
    return fetch_git(sroot, commit, opts.llama_repo, retries=opts.fetch_retries, log=reporter.log)


def source_tree(
    pins: SdPins,
    opts: BuildOptions,
    env: Mapping[str, str],
    reporter: Optional[Reporter] = None,
) -> Source:
    """The llama.cpp tree a build of ``pins`` uses (from the cache, or fetched/unpacked the way
    :func:`build` would): what ``sdrpc up`` ships to a host that builds."""
    cached = cached_source(sources_dir(opts.cache_root), pins.llama_commit.value)
    if cached is not None and opts.llama_src is None:
        return cached
    return _get_source(pins, opts, env, reporter or _Quiet())


def scratch_parents(cache_root: Path) -> list[Path]:
    """The cache directories in which a build creates temporary paths."""
    return [
        cache_root,
        sources_dir(cache_root),
        artifacts_dir(cache_root),
        cache_root / "builds",
        cache_root / "downloads",
        cache_root / "tmp",
    ]


def _preflight(
    recipe: Recipe,
    opts: BuildOptions,
    env: Mapping[str, str],
    known: Optional[Path],
    cache_problem: Optional[StoreError],
    rep: Reporter,
) -> Optional[Headers]:
    """The preflight sdrpc doctor shows (exit 6 with what to install, before any fetch or
    configure), then the Vulkan headers ``--vulkan-headers auto`` fetches, if any."""
    choice = opts.vulkan_headers
    headers = prepare(choice, recipe, opts.defines, env, opts.cache_root)  # no network
    fetch_headers = choice is not None and headers is None
    doctor.require_buildable(
        recipe,
        env,
        opts.cache_root,
        (*opts.defines, *(headers.defines() if headers else ())),
        need_git=not opts.llama_sdist or fetch_headers,
        need_disk=cache_problem is None,  # an unusable cache is exit 9, not "no disk"
        provided=(VULKAN_HEADERS,) if fetch_headers else (),
        tree=known,  # a tree at hand says which minimum versions it needs
    )
    if choice is None or headers is not None:
        return headers
    if cache_problem is not None:
        raise cache_problem
    rep.phase("vulkan headers")
    try:
        return fetch_auto(opts.cache_root, choice.repo, retries=opts.fetch_retries, log=rep.log)
    except OSError as exc:
        raise cache_error(exc, "write the Vulkan headers cache") from None


def build(
    pins: SdPins,
    opts: BuildOptions,
    env: Mapping[str, str],
    reporter: Optional[Reporter] = None,
) -> BuildResult:
    """Build (or find in the store) a verified server for ``pins``."""
    rep: Reporter = reporter or _Quiet()
    t0 = time.monotonic()
    recipe = resolve_recipe(opts)
    try:
        prepare_cache(opts.cache_root, ("locks",))
        cache_problem: Optional[StoreError] = None
    except StoreError as exc:  # read-only or broken cache: a cache hit may still be served
        cache_problem = exc
    if cache_problem is None:
        for path in clean_stale(scratch_parents(opts.cache_root)):
            rep.log(f"removed {path.name}, left behind by a killed build")
    rep.phase("toolchain")
    cached = cached_source(sources_dir(opts.cache_root), pins.llama_commit.value)
    # a tree at hand (cached, --llama-src: read here, checked later) says which minimum
    # versions it needs; without one the recipe's minimums stand (checked before any fetch)
    known = opts.llama_src or (cached.tree if cached is not None else None)
    headers = _preflight(recipe, opts, env, known, cache_problem, rep)
    local: Optional[Source] = None
    if opts.llama_src is not None:
        local = from_local_checkout(opts.llama_src, pins.llama_commit.value, opts.allow_dirty)
    tools = discover_toolchain(recipe, env)
    state = local.state if local is not None else "clean"
    exact_id = tree_digest(opts.exact_ggml_dir) if opts.exact_ggml_dir else ""
    req = _request(pins, recipe, opts, tools, state, exact_id, headers)
    key = cache_key(req)
    arts = artifacts_dir(opts.cache_root)
    if cache_problem is not None:
        try:
            hit = None if opts.force else lookup(arts, key)
        except OSError:
            hit = None
        if hit is None:
            raise cache_problem
        return BuildResult(hit, True, None, None, time.monotonic() - t0)
    with FileLock(str(opts.cache_root / "locks" / f"{key}.lock")):
        if not opts.force:
            hit = lookup(arts, key)
            if hit is not None:
                return BuildResult(hit, True, None, None, time.monotonic() - t0)
        rep.phase("source")
        source = local or _get_source(pins, opts, env, rep)
        facts = read_tree_facts(source.tree)
        if opts.exact_ggml_dir is not None:
            facts = exact_facts(facts, opts.exact_ggml_dir)
        plan = make_plan(req, facts)
        dirs = build_dirs(opts.cache_root, key, source.tree, exact=bool(opts.exact_ggml_dir))
        cmds = commands(plan, dirs, tools.cmake, tools.ninja, opts.jobs)
        log_path = dirs.build / "build.log"
        try:
            if opts.exact_ggml_dir is not None:
                write_exact_project(dirs.project, opts.exact_ggml_dir, source.tree, facts)
            prepare_build_dir(dirs.build, source, plan)
            log = log_path.open("w")
        except OSError as exc:
            raise cache_error(exc, "write the build directory") from None
        benv = ccache_env(env, source.tree) if tools.ccache else dict(env)
        tb = time.monotonic()
        with log:
            rep.phase("configure")
            run_logged(
                cmds.configure,
                log=log,
                env=benv,
                what="cmake configure",
                hint=f"full log: {log_path}",
            )
            rep.phase("compile")

            def on_line(line: str) -> None:
                p = parse_ninja_step(line)
                if p:
                    rep.progress(*p)

            run_logged(
                cmds.build,
                log=log,
                env=benv,
                on_line=on_line,
                what=f"building {facts.target}",
                hint=f"full log: {log_path}",
            )
        build_seconds = time.monotonic() - tb
        binary = find_binary(dirs.build, facts.target)
        vres: Optional[VerifyResult] = None
        if opts.verify:
            rep.phase("verify")
            vres = verify_binary(
                binary,
                max_name=req.max_name,
                tree_protocol=facts.protocol,
                client_protocol=pins.client_protocol.value,
                device_prefix=recipe.device_prefix,
                env=env,  # the environment the user builds (and will launch) with
                visible_devices_env=recipe.visible_devices_env,
            )
            if not vres.ok:
                raise VerifyError(
                    "the built server failed verification: " + "; ".join(vres.problems),
                    hint="nothing was stored; check the pins (--max-name, --llama-commit) "
                    f"and the log {log_path}",
                )
        manifest = _manifest(pins, opts, req, recipe, plan, facts, source, tools, vres)
        manifest = replace(
            manifest,
            extra={
                # what the server saw at verification (names and values of the backend's
                # run-time variables, never secrets), and the Vulkan headers it was built with
                "verify_env": runtime_env(env, recipe.name, recipe.visible_devices_env),
                "vulkan_headers": headers_record(recipe, headers, opts.defines, env),
            },
        )
        manifest = replace(manifest, build_seconds=round(build_seconds, 2))
        rep.phase("store")
        entry = install_entry(arts, key, binary, manifest, log_path)
    warnings = tuple(vres.warnings) if vres else ("verification skipped (--no-verify)",)
    return BuildResult(entry, False, plan, vres, time.monotonic() - t0, warnings)


def _manifest(
    pins: SdPins,
    opts: BuildOptions,
    req: BuildRequest,
    recipe: Recipe,
    plan: BuildPlan,
    facts: TreeFacts,
    source: Source,
    tools: Toolchain,
    vres: Optional[VerifyResult],
) -> Manifest:
    """What the store records about a build (the key and binary are filled in on install)."""
    return Manifest(
        sdrpc_version=__version__,
        backend=recipe.name,
        recipe=RecipeRef(recipe.name, recipe.source, recipe.sha256),
        commit=req.commit,
        max_name=req.max_name,
        target=facts.target,
        server_dir=facts.server_dir,
        protocol=format_version(facts.protocol) if facts.protocol else UNKNOWN,
        pins=pins.as_dict(),
        pins_origin=pins.origin,
        source=SourceRef(source.method, source.origin, source.state),
        exact=ExactRef(str(opts.exact_ggml_dir.resolve()), req.exact_ggml)
        if opts.exact_ggml_dir
        else None,
        defines=plan.defines,
        portable=req.portable,
        notes=plan.notes,
        tools=ToolVersions(
            tools.cmake_version, tools.ninja_version, tools.compiler, bool(tools.ccache)
        ),
        platform=f"{current_platform()}-{_platform.machine().lower()}",
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        verify=vres.as_dict() if vres else {"ok": False, "skipped": True},
    )
