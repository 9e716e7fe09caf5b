"""From what the user asked (:class:`ServerOptions`) to runnable :class:`ServerSpec` values.

Checks everything that can be checked before starting: the binary (or a build from the
artifact store), the host (literal IPv4), ports (free, no duplicates), devices (offered by the
binary), cache directories. I/O is injected so unit tests stay pure; so are sdrpc's builds
(:class:`BuildLocator`: the CLI makes it from the build wing's store and wheels).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from sdrpc_build.errors import (
    DeviceError,
    LaunchConfigError,
    NoServerBinaryError,
    SdrpcError,
    StoreError,
    UsageError,
)
from sdrpc_build.launch.banner import BannerDevice
from sdrpc_build.launch.config import ServerOptions
from sdrpc_build.launch.match import (
    Build,
    ClientPins,
    choose,
    describe,
    mismatch,
    pin_groups,
    usable,
)
from sdrpc_build.launch.private import show_path
from sdrpc_build.launch.spec import (
    VISIBLE_DEVICES_VARS,
    Resolver,
    ServerSpec,
    backend_from_devices,
    build_env,
    check_host,
    valid_name,
)

__all__ = [
    "Build",
    "BuildLocator",
    "BuildMissing",
    "ClientPins",
    "Environment",
    "hidden_devices_hint",
    "resolve_build",
    "resolve_servers",
]

MAX_PORT = 65535
DeviceLister = Callable[[Path, Mapping[str, str]], Optional[tuple[BannerDevice, ...]]]
#: builds a server of this backend (None: the default one) for the client's pins
BuildMissing = Callable[[Optional[str]], Build]


@dataclass(frozen=True)
class BuildLocator:
    """sdrpc's builds, as launch needs them (injected: launch does not import the build wing).

    ``platform()``: this machine as builds name it ("linux-x86_64"). ``entry_of(binary)``: the
    build whose store entry holds this (resolved) binary; None when it is in none, or its
    manifest cannot be read. ``find(root, selector)``: a build by key, unique key prefix or
    manifest path; raises SdrpcError when there is none (or several), OSError when the store
    cannot be read. ``available(root)``: every build in the store and from installed server
    wheels; OSError when the store cannot be read.
    """

    platform: Callable[[], str]
    entry_of: Callable[[Path], Optional[Build]]
    find: Callable[[Path, str], Build]
    available: Callable[[Path], list[Build]]


@dataclass(frozen=True)
class Environment:
    """The outside world, injected: environment, builds, resolver, port and device probes."""

    env: Mapping[str, str]
    builds: BuildLocator
    artifacts_root: Path
    cache_root: Path  # default root of per-server -c cache dirs
    resolve_host: Optional[Resolver]
    ensure_port_free: Callable[[str, int], None]
    pick_free_port: Callable[[str], int]
    list_devices: DeviceLister
    warn: Callable[[str], None]
    pins: Optional[ClientPins] = None  # the client's pins: only a build that fits them
    build_missing: Optional[BuildMissing] = None  # builds one for (pins, backend) when none fits


def resolve_build(
    o: ServerOptions,
    artifacts_root: Path,
    builds: BuildLocator,
    *,
    pins: Optional[ClientPins] = None,
    build_missing: Optional[BuildMissing] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> Build:
    """``binary`` as given, else a build from the store: by key, by backend, or the newest.

    With the client's ``pins``: only a build made for them (a ``--binary``/``--build`` made
    for other pins is refused); none in the store is built with ``build_missing`` (refused
    when None).
    """
    found = _resolve_build(o, artifacts_root, builds, pins, build_missing, warn or _no_warn)
    if pins is not None and (o.binary is not None or o.build is not None):
        if found.commit is None and found.key is None:  # a bare binary: no manifest to check
            (warn or _no_warn)(
                f"{_where(o)}{found.binary.name} has no sdrpc manifest: its llama.cpp commit "
                f"cannot be checked; only GGML_MAX_NAME {pins.max_name} is (at readiness)"
            )
            return replace(found, max_name=pins.max_name)
        why = mismatch(found, pins)
        if why is not None:
            raise NoServerBinaryError(
                f"{_where(o)}{describe(found)} does not match the client's pins: {why}",
                hint=_pins_hint(o.backend),
            )
    return found


def _no_warn(text: str) -> None:
    pass


def _pins_hint(backend: Optional[str]) -> str:
    return (
        "leave out --binary/--build: sdrpc-launch picks (or builds) the matching one"
        + (f" of --backend {backend}" if backend else "")
        + "; or drop the pins options to run it anyway"
    )


def _resolve_build(
    o: ServerOptions,
    artifacts_root: Path,
    builds: BuildLocator,
    pins: Optional[ClientPins],
    build_missing: Optional[BuildMissing],
    warn: Callable[[str], None],
) -> Build:
    if o.binary is not None:
        b = o.binary.expanduser()
        try:
            b.stat()
        except OSError as exc:
            what = "does not exist" if isinstance(exc, FileNotFoundError) else f"({exc.strerror})"
            raise NoServerBinaryError(
                f"{_where(o)}server binary {show_path(b)} {what}",
                hint="give the path of an rpc-server binary (or --backend / --build)",
            ) from None
        if not b.is_file():
            raise NoServerBinaryError(f"{_where(o)}server binary {b} is not a file")
        if not os.access(b, os.X_OK):
            raise NoServerBinaryError(f"{_where(o)}{b} is not executable", hint=f"chmod +x {b}")
        entry = builds.entry_of(b.resolve())  # a binary inside an sdrpc store entry
        if entry is None:
            return Build(b.resolve(), o.backend)
        return replace(entry, binary=b.resolve(), backend=o.backend or entry.backend)
    store_hint = "check --cache-dir (the artifact store is its artifacts/ directory)"
    if o.build is not None:
        try:
            return builds.find(artifacts_root, o.build)
        except SdrpcError as exc:
            raise NoServerBinaryError(f"{_where(o)}{exc.message}", hint=exc.hint) from None
        except OSError as exc:
            raise StoreError(
                f"cannot read the artifact store {show_path(artifacts_root)}: {exc.strerror}",
                hint=store_hint,
            ) from None
    here = builds.platform()
    try:
        candidates = builds.available(artifacts_root)
    except OSError as exc:
        raise StoreError(
            f"cannot read the artifact store {show_path(artifacts_root)}: {exc.strerror}",
            hint=store_hint,
        ) from None
    if pins is not None:
        return _matching_build(o, artifacts_root, candidates, pins, here, build_missing)
    found = usable(candidates, o.backend, here)
    if not found:
        what = f"no {o.backend} build" if o.backend else "no build"
        raise NoServerBinaryError(
            f"{_where(o)}{what} for {here} in {show_path(artifacts_root)}",
            hint="build one with sdrpc-build"
            + (f" --backend {o.backend}" if o.backend else "")
            + ", or give --binary PATH",
        )
    groups = pin_groups(candidates, o.backend, here)
    if groups > 1:
        what = f"{o.backend} builds" if o.backend else "builds"
        warn(
            f"{_where(o)}picked {describe(found[0])}, the newest of {len(found)} "
            f"{what} made for {groups} different clients; give --sd-cpp PATH (or "
            "--llama-commit SHA --max-name N) to pick the one that matches your sd.cpp"
        )
    return found[0]


def _matching_build(
    o: ServerOptions,
    artifacts_root: Path,
    candidates: list[Build],
    pins: ClientPins,
    here: str,
    build_missing: Optional[BuildMissing],
) -> Build:
    choice = choose(candidates, pins, o.backend, here)
    if choice.build is not None:
        return choice.build
    if build_missing is not None:
        return build_missing(o.backend)
    what = f"no {o.backend} build" if o.backend else "no build"
    listing = "\n".join(f"  {describe(b)}: {why}" for b, why in choice.rejected)
    raise NoServerBinaryError(
        f"{_where(o)}{what} for {here} in {show_path(artifacts_root)} matches the client's "
        f"pins (llama.cpp {pins.commit[:10]}, GGML_MAX_NAME {pins.max_name}"
        + (", --exact" if pins.exact else "")
        + ")",
        hint="leave out --no-build to build it, or build it with sdrpc-build and the same pins",
        details=listing or None,
    )


def _where(o: ServerOptions) -> str:
    return "" if o.origin == "command line" else f"{o.origin}: "


def _conflict(o: ServerOptions, message: str, hint: Optional[str] = None) -> SdrpcError:
    """Two servers clash: a usage error on the command line, an invalid servers.toml in one."""
    if o.origin == "command line":
        return UsageError(message, hint=hint)
    return LaunchConfigError(f"{o.origin}: {message}", hint=hint)


_PICK_TRIES = 20  # a port picked for another server may come back: pick again, a bounded times


def _free_port(world: Environment, host: str, taken: Mapping[int, str]) -> int:
    for _ in range(_PICK_TRIES):
        port = world.pick_free_port(host)
        if port not in taken:
            return port
    return port


def hidden_devices_hint(
    asked: str, offered: Sequence[str], backend: Optional[str]
) -> Optional[str]:
    """Why a GPU device may be missing when a binary offers only the CPU: the backend's
    visible-devices variable hides it (ggml-vulkan hides CPU-type devices such as lavapipe
    unless GGML_VK_VISIBLE_DEVICES names them). None when a GPU is offered, or no variable
    applies."""
    if any(not n.startswith("CPU") for n in offered):
        return None
    guess = backend_from_devices([asked])
    wanted = guess if guess not in (None, "cpu", "blas") else backend
    var = VISIBLE_DEVICES_VARS.get((wanted or "").lower())
    if var is None:
        return None
    hint = (
        f"the {asked} device may be hidden: {var} decides which devices the server sees; "
        f"pass --visible-devices 0,1,... (it sets {var}) or set {var} yourself"
    )
    if var == "GGML_VK_VISIBLE_DEVICES":
        hint += "; ggml-vulkan hides CPU-type devices (lavapipe, llvmpipe) unless it lists them"
    return hint + "; else check the GPU driver"


def _check_devices(
    o: ServerOptions,
    offered: Optional[tuple[BannerDevice, ...]],
    binary: Path,
    warn: Callable[[str], None],
    backend: Optional[str] = None,
) -> None:
    if not o.devices:
        return
    if offered is None:
        warn(
            f"{_where(o)}cannot list the devices of {binary.name} (too old for -d?); "
            "starting anyway"
        )
        return
    names = [d.name for d in offered]
    unknown = [d for d in o.devices if d not in names]
    if unknown:
        listing = "\n".join(f"  {d.name}: {d.description} ({d.total_mib} MiB)" for d in offered)
        raise DeviceError(
            f"{_where(o)}unknown device {unknown[0]!r}; {binary.name} offers: "
            + (", ".join(names) or "no devices"),
            hint=hidden_devices_hint(unknown[0], names, backend)
            or "device names are case-sensitive; pick from the list above",
            details=listing or None,
        )


def _expand(
    o: ServerOptions, build: Build, per_device: bool, world: Environment, host: str
) -> list[ServerSpec]:
    spec = ServerSpec(
        name=o.name or "",
        binary=build.binary,
        host=host,
        port=o.port,
        devices=o.devices,
        threads=o.threads,
        visible_devices=o.visible_devices,
        backend=build.backend,
        env=o.env,
        restart=o.restart,
        max_name=build.max_name,
        protocol=build.protocol,
        cache_max_size=o.cache_max_size,
    )
    offered: Optional[tuple[BannerDevice, ...]] = None
    if spec.visible_devices is not None and spec.backend is None:
        offered = world.list_devices(
            build.binary, build_env(replace(spec, visible_devices=None), world.env)
        )
        guess = backend_from_devices([d.name for d in offered or ()])
        spec = replace(spec, backend=guess)
        offered = None
    if o.devices or per_device:
        offered = world.list_devices(build.binary, build_env(spec, world.env))
        _check_devices(o, offered, build.binary, world.warn, spec.backend)
    if not per_device:
        return [spec]
    if offered is None:
        raise UsageError(
            f"--per-device: cannot list the devices of {build.binary}",
            hint="start servers one by one with -d DEVICE, or use --config",
        )
    devices = [d for d in offered if not o.devices or d.name in o.devices]
    gpus = [d for d in devices if not d.name.startswith("CPU")] or devices
    out = []
    for i, d in enumerate(gpus):
        name = f"{o.name}-{d.name.lower()}" if o.name else d.name.lower()
        port = 0 if o.port == 0 else o.port + i
        if port > MAX_PORT:
            raise UsageError(
                f"--per-device: {len(gpus)} servers from port {o.port} would need port {port}",
                hint="start from a lower port, or -p 0 for free ones",
            )
        out.append(replace(spec, name=name, port=port, devices=(d.name,)))
    return out


def resolve_servers(
    options: Sequence[ServerOptions], world: Environment, per_device: bool = False
) -> list[ServerSpec]:
    """Resolve, expand (``--per-device``), name, place and check every server."""
    pairs: list[tuple[ServerSpec, ServerOptions]] = []
    for o in options:
        host, note = check_host(o.host, world.resolve_host)
        if note:
            world.warn(note)
        build = resolve_build(
            o,
            world.artifacts_root,
            world.builds,
            pins=world.pins,
            build_missing=world.build_missing,
            warn=world.warn,
        )
        pairs += [(spec, o) for spec in _expand(o, build, per_device, world, host)]
    taken: dict[int, str] = {}
    named: list[tuple[ServerSpec, ServerOptions]] = []
    for s, o in pairs:
        port = s.port if s.port != 0 else _free_port(world, s.host, taken)
        name = s.name or f"rpc-{port}"
        if port in taken:
            raise _conflict(
                o,
                f"port {port} is given to two servers ({taken[port]} and {name})",
                hint="give each server its own port (0 picks a free one)",
            )
        taken[port] = name
        named.append((replace(s, port=port, name=name), o))
    specs: list[ServerSpec] = []
    dirs: dict[Path, str] = {}
    for s, o in named:
        if not valid_name(s.name):
            raise _conflict(o, f"server name {s.name!r} must be letters, digits, '.', '_' or '-'")
        if any(x.name == s.name for x in specs):
            raise _conflict(o, f"server name {s.name!r} is used twice")
        if o.cache:
            root = o.cache_path or world.cache_root
            cache_dir = (root / s.name) if o.cache_per_server else root
            if cache_dir in dirs:
                raise _conflict(
                    o,
                    f"servers {dirs[cache_dir]} and {s.name} would share the cache dir {cache_dir}",
                    hint="give each its own 'cache'",
                )
            dirs[cache_dir] = s.name
            specs.append(replace(s, cache_dir=cache_dir))
        else:
            specs.append(s)
    for s in specs:
        build_env(s, {})  # refuses --visible-devices the backend cannot map, before any start
        world.ensure_port_free(s.host, s.port)
    return specs
