"""Server wheels: a built server as a platform wheel that worker machines ``pip install``.

:func:`build_wheel` turns a store entry (``bin/<server>`` + ``manifest.json``)
into ``sdrpc_server_<backend>-<version>+<commit7>.n<N>-py3-none-<platform>.whl``
with scikit-build-core: a throw-away project whose CMakeLists.txt only
``install()``s the prebuilt binary and manifest next to a small Python package.
The package has a console script (``sdrpc-server-<backend>``) that execs the
binary, ``manifest()``, and an entry point in the ``sdrpc.servers`` group, by
which :func:`installed_servers` (and so sdrpc-launch) finds it.

The installed package directory has the layout of a store entry, so
:meth:`Manifest.load` reads it as one.

The project is assembled in a :mod:`sdrpc_build.build.scratch` directory of the cache
(removed by the next build if this one is killed), and the wheel enters the
output directory by an atomic rename: never a half-written ``.whl``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Optional

from sdrpc_build import __version__
from sdrpc_build.build.scratch import clean_stale, scratch_path
from sdrpc_build.build.store import MANIFEST, Manifest, WheelRef
from sdrpc_build.errors import BuildError, StoreError, ToolError, UsageError
from sdrpc_build.run import run_logged

__all__ = [
    "DIST_PREFIX",
    "ENTRY_POINT_GROUP",
    "build_wheel",
    "distribution_name",
    "installed_servers",
    "project_files",
    "script_name",
    "wheel_version",
]

DIST_PREFIX = "sdrpc_server_"
ENTRY_POINT_GROUP = "sdrpc.servers"
_LOCAL_PART = re.compile(r"^[a-z0-9]+(?:\.[a-z0-9]+)*$")
_PUBLIC = re.compile(r"^\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?$")


def distribution_name(backend: str) -> str:
    """``sdrpc_server_cuda``: the import package and (normalized) distribution name."""
    clean = re.sub(r"[^a-z0-9]+", "_", backend.lower()).strip("_")
    if not clean:
        raise UsageError(
            f"backend name {backend!r} cannot name a wheel",
            hint="use a recipe name such as cpu, cuda or vulkan",
        )
    return DIST_PREFIX + clean


def script_name(backend: str) -> str:
    """``sdrpc-server-cuda``: the console script that runs the server."""
    return distribution_name(backend).replace("_", "-")


def wheel_version(entry: Manifest) -> str:
    """``0.1.0+4df29be.n160``: sdrpc's version, local part = llama.cpp commit + GGML_MAX_NAME.

    PEP 440 local versions are dot-separated ASCII letters and digits; the
    public part is the sdrpc release that built the server.
    """
    public = (entry.sdrpc_version or __version__).split("+")[0]
    if not _PUBLIC.match(public):
        public = __version__.split("+")[0]
    local = f"{entry.commit[:7].lower()}.n{entry.max_name}"
    if not _LOCAL_PART.match(local):
        raise StoreError(
            f"store entry {entry.path} has a malformed commit {entry.commit!r}",
            hint=f"delete {entry.path} and build again",
        )
    return f"{public}+{local}"


_BUILD_HOOK = """\
import os, sys
from scikit_build_core.build import build_wheel
os.chdir(sys.argv[1])
os.makedirs(sys.argv[2], exist_ok=True)
print(build_wheel(sys.argv[2]))
"""

_CMAKELISTS = """\
cmake_minimum_required(VERSION 3.15)
project({dist} LANGUAGES NONE)
# Only packaging: the server was built (and verified) by sdrpc-build.
install(PROGRAMS "payload/{server}" DESTINATION "{dist}/bin")
install(FILES "payload/{manifest}" DESTINATION "{dist}")
"""

_PYPROJECT = """\
[build-system]
requires = ["scikit-build-core>=0.9"]
build-backend = "scikit_build_core.build"

[project]
name = "{dist}"
version = "{version}"
description = "{description}"
requires-python = ">=3.8"
license = {{ text = "MIT" }}

[project.scripts]
{script} = "{dist}:main"

[project.entry-points."{group}"]
{backend} = "{dist}"

[tool.scikit-build]
wheel.py-api = "py3"
wheel.packages = ["src/{dist}"]
cmake.version = ">=3.15"
"""

_INIT = '''\
"""{description}

Run it with ``{script} -H 127.0.0.1 -p 50052``; the arguments go to the server.
Installed by an sdrpc server wheel; ``sdrpc-launch`` finds it.
"""

import json
import os
import stat
import sys
from pathlib import Path

__all__ = ["BACKEND", "SERVER", "binary", "main", "manifest", "manifest_path"]

BACKEND = {backend!r}
SERVER = {server!r}
_HERE = Path(__file__).resolve().parent


def binary():
    """The server executable inside this package."""
    return _HERE / "bin" / SERVER


def manifest_path():
    return _HERE / "manifest.json"


def manifest():
    """The build manifest: commit, GGML_MAX_NAME, protocol, defines, verification."""
    return json.loads(manifest_path().read_text())


def main():
    exe = binary()
    if not os.access(str(exe), os.X_OK) and os.name != "nt":
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    argv = [str(exe), *sys.argv[1:]]
    if os.name == "nt":
        import subprocess

        return subprocess.call(argv)
    os.execv(str(exe), argv)  # the server takes over this process (same PID, same signals)
    return 1


if __name__ == "__main__":
    sys.exit(main())
'''


def project_files(entry: Manifest, version: Optional[str] = None) -> dict[str, str]:
    """The text files of the wheel project (path relative to the project -> content). Pure."""
    dist = distribution_name(entry.backend)
    version = version or wheel_version(entry)
    server = entry.binary.name
    description = (
        f"{entry.target} {entry.protocol} ({entry.backend}) for llama.cpp "
        f"{entry.commit[:12]}, GGML_MAX_NAME={entry.max_name}, built by sdrpc"
    )
    fields: dict[str, Any] = {
        "dist": dist,
        "version": version,
        "server": server,
        "manifest": MANIFEST,
        "script": script_name(entry.backend),
        "group": ENTRY_POINT_GROUP,
        "backend": entry.backend,
        "description": description.replace('"', "'"),
    }
    return {
        "pyproject.toml": _PYPROJECT.format(**fields),
        "CMakeLists.txt": _CMAKELISTS.format(**fields),
        f"src/{dist}/__init__.py": _INIT.format(**fields),
        f"src/{dist}/__main__.py": f"import sys\n\nfrom {dist} import main\n\nsys.exit(main())\n",
    }


@contextlib.contextmanager
def _work_dir(scratch_root: Optional[Path], stem: str) -> Iterator[Path]:
    """A fresh directory under ``scratch_root`` (owner-named), else in the system temp dir."""
    tmp: Optional[Path] = None
    if scratch_root is not None:
        try:
            scratch_root.mkdir(parents=True, exist_ok=True)
            clean_stale([scratch_root])
            tmp = scratch_path(scratch_root, stem)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError:
            tmp = None  # a read-only cache: the system temp dir will do
    if tmp is None:
        with tempfile.TemporaryDirectory(prefix="sdrpc-wheel-") as name:
            yield Path(name)
        return
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_wheel(
    entry: Manifest,
    out_dir: Path,
    *,
    env: Optional[Mapping[str, str]] = None,
    scratch_root: Optional[Path] = None,
) -> Path:
    """Package ``entry`` as a wheel in ``out_dir``; return the wheel's path.

    Calls scikit-build-core's ``build_wheel`` hook in a child Python (what ``pip wheel
    --no-build-isolation`` does, without needing pip), so it works offline;
    scikit-build-core (``sdrpc[wheel]``) must be installed.
    ``scratch_root`` (the cache's ``tmp/``) holds the work directory.
    """
    if importlib.util.find_spec("scikit_build_core") is None:
        raise ToolError(
            "building a server wheel needs scikit-build-core",
            hint="python -m pip install 'sdrpc[wheel]'",
        )
    if not entry.binary.is_file():
        raise StoreError(
            f"store entry {entry.path} has no server binary",
            hint=f"delete {entry.path} and build again",
        )
    version = wheel_version(entry)
    dist = distribution_name(entry.backend)
    out_dir = out_dir.expanduser().resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create wheel directory {out_dir}: {exc.strerror}",
            hint="pass a writable --out DIR",
        ) from None
    with _work_dir(scratch_root, f"wheel-{dist}") as tmp:
        project = tmp / "project"
        for rel, text in project_files(entry, version).items():
            path = project / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        payload = project / "payload"
        payload.mkdir()
        shutil.copy2(entry.binary, payload / entry.binary.name)
        (payload / entry.binary.name).chmod(
            (payload / entry.binary.name).stat().st_mode
            | stat.S_IXUSR
            | stat.S_IXGRP
            | stat.S_IXOTH
        )
        carried = replace(
            entry, binary_path=f"bin/{entry.binary.name}", wheel=WheelRef(dist, version)
        )
        (payload / MANIFEST).write_text(carried.to_json())
        build_out = tmp / "dist"
        # scikit-build-core's PEP 517 hook, called the way a frontend without build isolation
        # calls it (what `pip wheel --no-build-isolation` does): no pip needed, nothing fetched
        argv = [sys.executable, "-c", _BUILD_HOOK, str(project), str(build_out)]
        log_path = tmp / "wheel.log"
        benv = dict(os.environ if env is None else env)
        with log_path.open("w") as log:
            run_logged(
                argv,
                log=log,
                env=benv,
                what=f"building the {dist} wheel",
                hint="check that scikit-build-core and cmake are installed "
                "(python -m pip install 'sdrpc[wheel]')",
            )
        built = sorted(build_out.glob(f"{dist}-*.whl"))
        if len(built) != 1:
            raise BuildError(
                f"the wheel build produced {len(built)} wheels for {dist}",
                hint="run again with --debug and report it",
            )
        final = out_dir / built[0].name
        staged = scratch_path(out_dir, f".{built[0].name}")
        try:
            clean_stale([out_dir])
            shutil.copy2(built[0], staged)
            os.replace(staged, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)
            raise UsageError(
                f"cannot write {final}: {exc.strerror or exc}",
                hint="pass a writable --out DIR with free space",
            ) from None
    return final


def _entry_points() -> list[tuple[str, str]]:
    eps: Any = entry_points()
    if hasattr(eps, "select"):
        group = eps.select(group=ENTRY_POINT_GROUP)
    else:  # Python 3.9: a dict of group -> entry points
        group = eps.get(ENTRY_POINT_GROUP, [])
    return [(str(ep.name), str(ep.value)) for ep in group]


def installed_servers() -> list[Manifest]:
    """Servers installed from sdrpc server wheels in this environment, newest first.

    Found by the ``sdrpc.servers`` entry points without importing the packages;
    broken installs (no manifest, no binary) are skipped.
    """
    out = []
    seen: set[Path] = set()
    for _name, module in _entry_points():
        try:
            spec = importlib.util.find_spec(module.split(":")[0])
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        pkg = Path(next(iter(spec.submodule_search_locations))).resolve()
        if pkg in seen or not (pkg / MANIFEST).is_file():
            continue
        seen.add(pkg)
        try:
            m = Manifest.load(pkg)
        except StoreError:
            continue
        if m.binary.is_file():
            out.append(m)
    return sorted(out, key=lambda m: m.created, reverse=True)
