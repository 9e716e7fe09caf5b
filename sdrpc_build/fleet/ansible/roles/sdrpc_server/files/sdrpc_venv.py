"""sdrpc's host side of ``sdrpc up``: sdrpc's venv, installed offline from the wheelhouse.

Standard library only (the host has no sdrpc yet); one JSON object on stdout. The client ships
it as the ``__main__.py`` of the wheelhouse (sdrpc_build/fleet/wheelhouse.py: a zip of it and of
the wheels of sdrpc and its dependencies, resolved by pip on the client), which Ansible's
``script`` copies and runs (tasks/venv.yml): ``python3 WHEELHOUSE.pyz JSON``, one task, no
module. ``JSON``: ``{"root", "digest", "project"}`` (and ``"wheelhouse"``, a path, to read the
wheels of another zip). ``ROOT`` (0755) is created; ``ROOT/venv`` is made anew; its marker
``ROOT/venv/.sdrpc-wheelhouse`` (``digest``) is written last, so an install cut short is done
again by the next ``up``.

The fast way does what pip does with wheels it has already chosen, without ensurepip and
without pip (starting pip costs seconds of CPU per host, the whole of a first ``up``):
``venv --without-pip``, each wheel unpacked into the venv's site-packages (its ``.data``
directories into the scheme's paths), ``#!python`` scripts and console-script shims pointing at
the venv's python, ``RECORD``/``INSTALLER`` rewritten. Python writes the .pyc files on first
import. It is taken only when every wheel needed is plainly installable here: its tags fit this
interpreter, and every dependency this host's Python needs (Requires-Dist, markers evaluated
here) is in the wheelhouse. Otherwise pip decides, as it always did (``venv`` with ensurepip,
then ``pip install --no-index``), and its answer, good or bad, is the result.
"""

from __future__ import annotations

import configparser
import csv
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

WHEEL_NAME = re.compile(
    r"(?P<name>[^-]+)-(?P<version>[^-]+)(?:-(?P<build>\d[^-]*))?"
    r"-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl"
)
MANYLINUX_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
SCHEME_KEYS = ("purelib", "platlib", "scripts", "data", "headers")
SHEBANG_MAX = 127  # the kernel reads this much of a #! line
PIP_TIMEOUT = 900
SHIM = """\
#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {head}
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit({call}())
"""


class Unsure(Exception):
    """Something the fast way does not judge: pip decides."""


@dataclass(frozen=True)
class Interp:
    """What a wheel's tags and a requirement's markers are judged against."""

    impl: str  # "cp", "pp"
    major: int
    minor: int
    arch: str  # as in platform tags: x86_64, aarch64, i686
    glibc: Optional[tuple[int, int]]
    markers: dict[str, str]


def this_interp() -> Interp:
    impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
    arch = platform.machine()
    if arch == "x86_64" and sys.maxsize <= 2**32:
        arch = "i686"
    glibc = None
    try:
        m = re.fullmatch(r"glibc (\d+)\.(\d+).*", os.confstr("CS_GNU_LIBC_VERSION") or "")
        glibc = (int(m.group(1)), int(m.group(2))) if m else None
    except (OSError, ValueError):
        pass
    iv = sys.implementation.version
    markers = {
        "os_name": os.name,
        "sys_platform": sys.platform,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "python_full_version": platform.python_version(),
        "implementation_name": sys.implementation.name,
        "implementation_version": f"{iv.major}.{iv.minor}.{iv.micro}",
        "extra": "",  # the project is installed without extras
    }
    return Interp(impl, sys.version_info[0], sys.version_info[1], arch, glibc, markers)


# ------------------------------------------------------------------------------ tags and markers


def wheel_tags(filename: str) -> tuple[str, list[tuple[str, str, str]]]:
    """(normalized project name, [(python, abi, platform) tags]) of a wheel's file name."""
    m = WHEEL_NAME.fullmatch(filename)
    if not m:
        raise Unsure(f"{filename}: not a wheel file name")
    tags = [
        (py, abi, plat)
        for py in m["py"].split(".")
        for abi in m["abi"].split(".")
        for plat in m["plat"].split(".")
    ]
    return normalize(m["name"]), tags


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _py_fits(py: str, abi: str, it: Interp) -> bool:
    m = re.fullmatch(r"([a-z]+)(\d)(\d*)", py)
    if not m or int(m.group(2)) != it.major:
        return False
    minor = int(m.group(3)) if m.group(3) else None
    if m.group(1) == "py":
        return minor is None or minor <= it.minor
    if m.group(1) != it.impl or minor is None:
        return False
    return minor <= it.minor if abi == "abi3" else minor == it.minor


def _abi_fits(abi: str, it: Interp) -> bool:
    return (
        abi == "none"
        or (abi == "abi3" and it.impl == "cp")
        or abi == f"{it.impl}{it.major}{it.minor}"
    )


def _plat_fits(plat: str, it: Interp) -> bool:
    if plat == "any":
        return True
    if it.markers["platform_system"] != "Linux":
        return False
    if plat == f"linux_{it.arch}":
        return True
    if it.glibc is None or not plat.endswith("_" + it.arch):
        return False
    kind = plat[: -len(it.arch) - 1]
    if kind in MANYLINUX_LEGACY:
        return it.glibc >= MANYLINUX_LEGACY[kind]
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)", kind)
    return m is not None and it.glibc >= (int(m.group(1)), int(m.group(2)))


def tag_fits(tag: tuple[str, str, str], it: Interp) -> bool:
    """Whether this interpreter plainly runs a wheel with this tag (False: pip decides)."""
    py, abi, plat = tag
    return _py_fits(py, abi, it) and _abi_fits(abi, it) and _plat_fits(plat, it)


MARKER_TOKEN = re.compile(
    r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>===|==|!=|<=|>=|~=|<|>|\(|\)|not\s+in\b|in\b)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = MARKER_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise Unsure(f"marker {text!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        out.append((kind, " ".join(value.split()) if kind == "op" else value))
        pos = m.end()
    return out


def _version(v: str) -> Optional[tuple[int, ...]]:
    return tuple(int(x) for x in v.split(".")) if re.fullmatch(r"\d+(\.\d+)*", v) else None


def _compare(left: str, op: str, right: str) -> bool:
    if op == "in":
        return left in right
    if op == "not in":
        return left not in right
    lv, rv = _version(left), _version(right)
    if lv is not None and rv is not None and op in ("<", "<=", ">", ">=", "==", "!="):
        width = max(len(lv), len(rv))
        a, b = lv + (0,) * (width - len(lv)), rv + (0,) * (width - len(rv))
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[op]
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    raise Unsure(f"{left!r} {op} {right!r}")


def marker_true(text: str, env: dict[str, str]) -> bool:
    """A PEP 508 marker under ``env`` (Unsure for what this small reader does not know)."""
    toks = _tokens(text)
    pos = 0

    def value() -> str:
        nonlocal pos
        kind, v = toks[pos] if pos < len(toks) else ("", "")
        pos += 1
        if kind == "str":
            return v[1:-1]
        if kind == "word" and v in env:
            return env[v]
        raise Unsure(f"marker {text!r}")

    def atom() -> bool:
        nonlocal pos
        if pos < len(toks) and toks[pos] == ("op", "("):
            pos += 1
            r = either()
            if pos >= len(toks) or toks[pos] != ("op", ")"):
                raise Unsure(f"marker {text!r}")
            pos += 1
            return r
        left = value()
        if pos >= len(toks) or toks[pos][0] != "op":
            raise Unsure(f"marker {text!r}")
        op = toks[pos][1]
        pos += 1
        right = value()
        try:
            return _compare(left, op, right)
        except Unsure:
            raise Unsure(f"marker {text!r}") from None

    def both() -> bool:
        nonlocal pos
        r = atom()
        while pos < len(toks) and toks[pos] == ("word", "and"):
            pos += 1
            r = atom() and r
        return r

    def either() -> bool:
        nonlocal pos
        r = both()
        while pos < len(toks) and toks[pos] == ("word", "or"):
            pos += 1
            r = both() or r
        return r

    result = either()
    if pos != len(toks):
        raise Unsure(f"marker {text!r}")
    return result


# ---------------------------------------------------------------------------------- the wheels


@dataclass(frozen=True)
class Wheel:
    filename: str
    name: str  # normalized
    tags: tuple[tuple[str, str, str], ...]
    dist_info: str  # "name-version.dist-info"
    purelib: bool
    needs: tuple[str, ...]
    requires_python: str
    data: bytes


def _headers(text: str) -> list[tuple[str, str]]:
    """The ``Key: value`` lines of a METADATA or WHEEL text (up to the first empty line)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            break
        k, sep, v = line.partition(":")
        if sep and not line[0].isspace():
            out.append((k.strip(), v.strip()))
    return out


def read_wheel(filename: str, data: bytes, env: dict[str, str]) -> Wheel:
    """What the fast way needs to know of one wheel (Unsure where pip should judge it)."""
    name, tags = wheel_tags(filename)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        tops = {n.split("/", 1)[0] for n in z.namelist() if "/" in n}
        infos = [t for t in tops if t.endswith(".dist-info")]
        if len(infos) != 1:
            raise Unsure(f"{filename}: {len(infos)} .dist-info directories")
        wheel = dict(_headers(z.read(f"{infos[0]}/WHEEL").decode("utf-8")))
        metadata = _headers(z.read(f"{infos[0]}/METADATA").decode("utf-8"))
    if not wheel.get("Wheel-Version", "").startswith("1."):
        raise Unsure(f"{filename}: Wheel-Version {wheel.get('Wheel-Version')!r}")
    needed = []
    for key, req in metadata:
        if key != "Requires-Dist":
            continue
        spec, _, marker = req.partition(";")
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if not m:
            raise Unsure(f"{filename}: requirement {req!r}")
        try:
            if not marker.strip() or marker_true(marker, env):
                needed.append(normalize(m.group(1)))
        except Unsure as exc:
            raise Unsure(f"{filename}: {exc}") from None
    return Wheel(
        filename,
        name,
        tuple(tags),
        infos[0],
        wheel.get("Root-Is-Purelib", "").lower() == "true",
        tuple(needed),
        dict(metadata).get("Requires-Python", ""),
        data,
    )


def python_fits(spec: str, full_version: str) -> bool:
    """A Requires-Python specifier (``>=3.10``, ``!=3.0.*``, ``~=3.9``) for this Python."""
    have = _version(full_version) or ()
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(~=|==|!=|>=|<=|>|<)\s*(\d+(?:\.\d+)*)(\.\*)?", clause)
        if not m or (m.group(3) and m.group(1) not in ("==", "!=")):
            raise Unsure(f"Requires-Python {spec!r}")
        op, v, wild = m.group(1), m.group(2), m.group(3)
        if wild or op == "~=":
            prefix = _version(v) or ()
            if op == "~=":
                if len(prefix) < 2 or not _compare(full_version, ">=", v):
                    return False
                prefix = prefix[:-1]
            same = have[: len(prefix)] + (0,) * (len(prefix) - len(have)) == prefix
            if same != (op != "!="):
                return False
        elif not _compare(full_version, op, v):
            return False
    return True


def unfit(w: Wheel, it: Interp) -> Optional[str]:
    """Why the fast way leaves this wheel to pip (None: it installs here as it is)."""
    if not any(tag_fits(t, it) for t in w.tags):
        return f"{w.filename}: no tag of it fits this {it.impl}{it.major}{it.minor} {it.arch}"
    if w.requires_python and not python_fits(w.requires_python, it.markers["python_full_version"]):
        return f"{w.filename}: Requires-Python {w.requires_python}"
    return None


def plan(wheels: dict[str, Wheel], project: str, it: Interp) -> list[Wheel]:
    """The wheels ``project`` needs here, walked from it (Unsure when one is missing or
    does not plainly fit this interpreter)."""
    todo, seen = [normalize(project)], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        if n not in wheels:
            raise Unsure(f"{n} is needed here and not in the wheelhouse")
        why = unfit(wheels[n], it)
        if why:
            raise Unsure(why)
        seen.add(n)
        todo.extend(wheels[n].needs)
    return [wheels[n] for n in sorted(seen)]


def shim(python: str, entry: str) -> str:
    """A console script: pip's template for ``module:attr.attr``."""
    m = re.fullmatch(r"\s*([\w.]+)\s*:\s*([\w.]+)\s*(\[[^\]]*\])?\s*", entry)
    if not m:
        raise Unsure(f"entry point {entry!r}")
    module, attrs = m.group(1), m.group(2)
    return SHIM.format(python=python, module=module, head=attrs.split(".")[0], call=attrs)


def _hash(data: bytes) -> str:
    return "sha256=" + urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class Writer:
    """Files into a fresh venv, as pip makes them: 0666 or 0777 (executable) less the umask;
    5000 files: plain strings and one makedirs per directory."""

    def __init__(self) -> None:
        self.dirs: set[str] = set()

    def write(self, path: str, data: bytes, executable: bool) -> None:
        d = os.path.dirname(path)
        if d not in self.dirs:
            os.makedirs(d, exist_ok=True)
            self.dirs.add(d)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o777 if executable else 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def _join(base: str, rel: str) -> str:
    """``base/rel`` for a path named in a wheel, which must stay below ``base``."""
    parts = rel.split("/")
    if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise SystemExit(f"sdrpc_venv: unsafe path {rel!r} in a wheel")
    return f"{base}/{rel}"


def install_wheel(w: Wheel, paths: dict[str, str], python: str, out: Writer) -> int:
    """Unpack one wheel into the venv whose scheme is ``paths``; files written."""
    root = paths["purelib" if w.purelib else "platlib"]
    data_dir = w.dist_info[: -len(".dist-info")] + ".data"
    own = (f"{w.dist_info}/RECORD", f"{w.dist_info}/INSTALLER")
    rows: list[list[str]] = []
    with zipfile.ZipFile(io.BytesIO(w.data)) as z:
        try:
            record = z.read(f"{w.dist_info}/RECORD").decode()
        except KeyError:
            record = ""
        given = {row[0]: row[1:3] for row in csv.reader(io.StringIO(record)) if row}
        for info in z.infolist():
            name = info.filename
            if name.endswith("/") or name in own:
                continue
            data = z.read(info)
            executable = bool((info.external_attr >> 16) & 0o111)
            parts = name.split("/", 2)
            if parts[0] != data_dir:
                out.write(_join(root, name), data, executable)
                kept = given.get(name, [])
                ok = len(kept) == 2 and kept[0]
                rows.append([name, *(kept if ok else [_hash(data), str(len(data))])])
                continue
            if len(parts) < 3 or parts[1] not in SCHEME_KEYS:
                raise SystemExit(f"sdrpc_venv: {w.filename}: unknown data file {name!r}")
            if parts[1] == "scripts":
                executable = True
                if data.startswith(b"#!python"):
                    data = f"#!{python}\n".encode() + data.split(b"\n", 1)[-1]
            dest = _join(paths[parts[1]], parts[2])
            out.write(dest, data, executable)
            rows.append([os.path.relpath(dest, root), _hash(data), str(len(data))])
        entry_points = f"{w.dist_info}/entry_points.txt"
        entry_text = z.read(entry_points).decode() if entry_points in z.namelist() else ""
    if entry_text:
        cp = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string(entry_text)
        for section in ("console_scripts", "gui_scripts"):
            for script, entry in cp.items(section) if cp.has_section(section) else []:
                data = shim(python, entry).encode()
                dest = _join(paths["scripts"], script)
                out.write(dest, data, True)
                rows.append([os.path.relpath(dest, root), _hash(data), str(len(data))])
    installer = b"sdrpc\n"
    out.write(f"{root}/{w.dist_info}/INSTALLER", installer, False)
    rows.append([f"{w.dist_info}/INSTALLER", _hash(installer), str(len(installer))])
    rows.append([f"{w.dist_info}/RECORD", "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    out.write(f"{root}/{w.dist_info}/RECORD", buf.getvalue().encode(), False)
    return len(rows)


# ------------------------------------------------------------------------------------- the venv


def _wheels_of(path: Path) -> dict[str, bytes]:
    """file name -> bytes of each wheel of the wheelhouse zip (its other members: the code)."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.filename.endswith(".whl"):
                if "/" in info.filename or info.is_dir():
                    raise SystemExit(f"sdrpc_venv: bad wheelhouse member {info.filename!r}")
                out[info.filename] = z.read(info)
    return out


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _run(argv: list[str], what: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # the wheels only
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        env=env,
        check=False,
    )
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"sdrpc_venv: {what} failed (exit {r.returncode}):\n{tail}")
    return r.stdout


def fast_install(target: Path, wheels: list[Wheel]) -> int:
    """``venv --without-pip`` + the wheels unpacked; files written."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(str(target))
    query = "import json,sys,sysconfig;print(json.dumps([sysconfig.get_paths(),sys.executable]))"
    paths, python = json.loads(_run([str(target / "bin" / "python"), "-I", "-c", query], "venv"))
    paths["headers"] = str(
        target / "include" / "site" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    if len(python) + 2 > SHEBANG_MAX or " " in python:
        raise Unsure(f"{python}: too long or spaced for a #! line")
    out, n = Writer(), 0
    for w in wheels:
        n += install_wheel(w, dict(paths, headers=f"{paths['headers']}/{w.name}"), python, out)
    return n


def pip_install(root: Path, target: Path, wheels: dict[str, bytes], project: str) -> None:
    """What sdrpc up did before: ensurepip, then pip install --no-index from the wheels."""
    with tempfile.TemporaryDirectory(dir=root, prefix=".wheelhouse-") as tmp:
        for name, data in wheels.items():
            (Path(tmp) / name).write_bytes(data)
        _run([sys.executable, "-m", "venv", str(target)], "python3 -m venv")
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index"]
        _run([*pip, "--find-links", tmp, project], "pip install")


def install(a: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    root, target = Path(a["root"]), Path(a["root"]) / "venv"
    files = _wheels_of(Path(a.get("wheelhouse") or sys.argv[0]))
    it = this_interp()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    _remove(target)
    why = None
    try:
        found: dict[str, Wheel] = {}
        for filename, data in sorted(files.items()):
            w = read_wheel(filename, data, it.markers)
            if w.name in found:
                raise Unsure(f"two wheels of {w.name}")
            found[w.name] = w
        chosen = plan(found, a["project"], it)
        n = fast_install(target, chosen)
        installer = "sdrpc"
    except Unsure as exc:
        why = str(exc)
        _remove(target)
        pip_install(root, target, files, a["project"])
        installer, n, chosen = "pip", 0, []
    (target / ".sdrpc-wheelhouse").write_text(a["digest"] + "\n", encoding="utf-8")
    return {
        "installer": installer,
        "why": why,
        "wheels": [w.filename for w in chosen],
        "files": n,
        "seconds": round(time.monotonic() - t0, 3),
    }


def main(argv: list[str]) -> int:
    print(json.dumps(install(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
