"""Pins: what a stable-diffusion.cpp tree says the matching server must be.

Parsers are pure functions over text; :func:`read_sd_tree` reads a local tree
(git checkout or plain directory) and :mod:`sdrpc_build.build.remote` resolves the
same pins from a remote ref. Every value carries where it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, Optional, TypeVar

from sdrpc_build.build.url import SecretUrl
from sdrpc_build.errors import PinsError, SdrpcError
from sdrpc_build.paths import shown_path
from sdrpc_build.protocol.tensor import MAX_NAME_LIMIT
from sdrpc_build.run import run

__all__ = [
    "DEFAULT_MAX_NAME",
    "MAX_NAME_ALIGN",
    "Pin",
    "SdPins",
    "apply_overrides",
    "check_max_name",
    "format_version",
    "is_full_sha",
    "max_name_problem",
    "parse_gitmodules",
    "parse_max_name",
    "parse_max_name_value",
    "parse_rpc_version",
    "parse_sync_llama_last",
    "read_sd_tree",
]

T = TypeVar("T")

#: ggml's own default (a server no sd.cpp client can use: sdrpc never assumes it).
DEFAULT_MAX_NAME = 64
#: ggml static-asserts ``sizeof(ggml_tensor) % GGML_MEM_ALIGN == 0`` (ggml.c; 16 on 64-bit)
#: and ``sizeof(rpc_tensor) % 8 == 0`` (ggml-rpc.cpp). ``ggml_tensor`` is 272 bytes plus
#: the name rounded up to 8, ``rpc_tensor`` 232 plus the name: both hold only for
#: multiples of 16 (checked by compiling ggml.h with GGML_MAX_NAME = 7..65536).
MAX_NAME_ALIGN = 16
_MAX_NAME_DIGITS = len(str(MAX_NAME_LIMIT))
_MAX_NAME_HINT = (
    f"GGML_MAX_NAME must be a multiple of {MAX_NAME_ALIGN} from {MAX_NAME_ALIGN} to "
    f"{MAX_NAME_LIMIT} (ggml asserts it at compile time); sd.cpp uses 160 "
    "(128 before 2026-07), ggml's default is 64"
)

SYNC_FILE = "ggml/scripts/sync-llama.last"
RPC_HEADER = "ggml/include/ggml-rpc.h"

#: seconds a local git query (rev-parse, ls-tree) may take
GIT_TIMEOUT = 30.0
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_MAX_NAME_RE = re.compile(
    r"""(?:add_definitions|add_compile_definitions|target_compile_definitions)\s*\(
        [^)]*?["']?(?:-D)?GGML_MAX_NAME=(?P<value>[^\s"')]*)""",
    re.VERBOSE | re.IGNORECASE,
)
_IF_RE = re.compile(r"^\s*(if|elseif|else|endif)\s*\((.*?)\)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Pin(Generic[T]):
    """A value and where it came from (a file, a command-line flag, a URL)."""

    value: T
    source: str


@dataclass(frozen=True)
class SdPins:
    """Everything sdrpc needs to know about the client side."""

    llama_commit: Pin[str]
    max_name: Pin[int]
    client_protocol: Pin[Optional[tuple[int, int, int]]]
    ggml_url: Pin[Optional[SecretUrl]]
    ggml_commit: Pin[Optional[str]]
    sd_commit: Pin[Optional[str]]
    rpc_client: Pin[Optional[bool]]
    origin: str

    def as_dict(self) -> dict[str, dict[str, object]]:
        proto = self.client_protocol.value
        return {
            "llama_commit": {"value": self.llama_commit.value, "source": self.llama_commit.source},
            "max_name": {"value": self.max_name.value, "source": self.max_name.source},
            "client_protocol": {
                "value": format_version(proto) if proto else None,
                "source": self.client_protocol.source,
            },
            "ggml_url": {
                "value": None if self.ggml_url.value is None else self.ggml_url.value.to_json(),
                "source": self.ggml_url.source,
            },
            "ggml_commit": {"value": self.ggml_commit.value, "source": self.ggml_commit.source},
            "sd_commit": {"value": self.sd_commit.value, "source": self.sd_commit.source},
            "rpc_client": {"value": self.rpc_client.value, "source": self.rpc_client.source},
        }


def is_full_sha(text: str) -> bool:
    return bool(_SHA_RE.fullmatch(text))


def format_version(v: tuple[int, int, int]) -> str:
    return f"{v[0]}.{v[1]}.{v[2]}"


def max_name_problem(value: int) -> Optional[str]:
    """Why ggml cannot be built with ``GGML_MAX_NAME = value``, or None when it can.

    THE rule for GGML_MAX_NAME values (see :data:`MAX_NAME_ALIGN`).
    """
    if value < MAX_NAME_ALIGN or value > MAX_NAME_LIMIT:
        return f"out of range ({MAX_NAME_ALIGN}..{MAX_NAME_LIMIT})"
    if value % MAX_NAME_ALIGN:
        low = value - value % MAX_NAME_ALIGN
        return (
            f"not a multiple of {MAX_NAME_ALIGN}: ggml's static asserts on the size of "
            f"ggml_tensor / rpc_tensor fail (nearest: {low} or {low + MAX_NAME_ALIGN})"
        )
    return None


def check_max_name(value: int, where: str, error: type[SdrpcError] = PinsError) -> int:
    """``value`` if ggml builds with it; else ``error`` (a usage or pins error) with a hint."""
    why = max_name_problem(value)
    if why is not None:
        raise error(f"{where}: GGML_MAX_NAME={value} is {why}", hint=_MAX_NAME_HINT)
    return value


def parse_max_name_value(text: str, where: str, error: type[SdrpcError] = PinsError) -> int:
    """A GGML_MAX_NAME given as text: plain ASCII decimal, no sign or leading zero, valid.

    ``where`` names the input (``--max-name``, ``CMakeLists.txt``) in the message.
    Unicode digits (``²``, ``٣``), huge numbers and octal-looking ``0160`` are refused.
    """
    raw = text.strip()
    shown = repr(raw) if len(raw) <= 20 else f"{raw[:20]!r}... ({len(raw)} characters)"
    if not (raw.isascii() and raw.isdigit()) or (len(raw) > 1 and raw.startswith("0")):
        raise error(f"{where}: GGML_MAX_NAME={shown} is not a positive number", hint=_MAX_NAME_HINT)
    if len(raw) > _MAX_NAME_DIGITS:
        raise error(f"{where}: GGML_MAX_NAME={shown} is out of range", hint=_MAX_NAME_HINT)
    return check_max_name(int(raw), where, error)


def parse_sync_llama_last(data: bytes, where: str) -> str:
    """Validate ``sync-llama.last``: exactly 40 lowercase hex and one newline."""
    hint = (
        "the file should hold exactly one 40-hex llama.cpp commit; pass --llama-commit to override"
    )
    if not data.strip():
        raise PinsError(f"{where} is empty", hint=hint)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise PinsError(f"{where} is not ASCII text", hint=hint) from None
    lines = text.splitlines()
    if len([ln for ln in lines if ln.strip()]) > 1:
        raise PinsError(f"{where} has more than one line", hint=hint)
    value = lines[0].strip()
    if len(value) != 40:
        raise PinsError(
            f"{where} holds {value[:50]!r} ({len(value)} characters, expected 40)", hint=hint
        )
    if not is_full_sha(value):
        raise PinsError(f"{where} holds {value!r}, which is not a lowercase hex commit", hint=hint)
    return value


def _strip_comment(line: str) -> str:
    return line.split("#", 1)[0]


def _cond_kind(cond: str) -> str:
    """Classify an if() condition: "sys" (system ggml), "notsys" or "other"."""
    words = cond.upper().split()
    if "SD_USE_SYSTEM_GGML" not in words:
        return "other"
    i = words.index("SD_USE_SYSTEM_GGML")
    return "notsys" if i > 0 and words[i - 1] == "NOT" else "sys"


def parse_max_name(cmake_text: str) -> Optional[int]:
    """``GGML_MAX_NAME`` as the sd.cpp top-level CMakeLists.txt defines it for its own ggml.

    Handles ``add_definitions(-DGGML_MAX_NAME=N)``, ``add_compile_definitions(GGML_MAX_NAME=N)``,
    quoting, and definitions inside an ``if (SD_USE_SYSTEM_GGML)`` branch (ignored: that
    branch is for a system ggml, not the vendored one). Returns ``None`` when absent; raises
    :class:`PinsError` when a value is not one ggml can build with (see
    :func:`max_name_problem`) or values conflict.
    """
    found: list[str] = []
    # one entry per open if(): (kind of the if condition, current branch is system-only)
    stack: list[tuple[str, bool]] = []
    for raw in cmake_text.splitlines():
        line = _strip_comment(raw)
        m = _IF_RE.match(line)
        if m:
            kw, kind = m.group(1).lower(), _cond_kind(m.group(2) or "")
            if kw == "if":
                stack.append((kind, kind == "sys"))
            elif kw == "elseif" and stack:
                stack[-1] = (kind, kind == "sys")
            elif kw == "else" and stack:
                first = stack[-1][0]
                stack[-1] = (first, first == "notsys")
            elif kw == "endif" and stack:
                stack.pop()
            continue
        if any(system_only for _, system_only in stack):
            continue
        found.extend(dm.group("value") for dm in _MAX_NAME_RE.finditer(line))
    if not found:
        return None
    values = {parse_max_name_value(raw_value, "CMakeLists.txt") for raw_value in found}
    if len(values) > 1:
        raise PinsError(
            f"CMakeLists.txt defines GGML_MAX_NAME more than once with different values "
            f"({', '.join(str(v) for v in sorted(values))})",
            hint="pass --max-name N to choose",
        )
    return values.pop()


def parse_rpc_version(header_text: str) -> Optional[tuple[int, int, int]]:
    """``RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION`` from ``ggml-rpc.h`` (None if absent)."""
    parts = []
    for name in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"#[ \t]*define[ \t]+RPC_PROTO_{name}_VERSION[ \t]+(\S+)", header_text)
        if not m:
            return None
        value = m.group(1)
        if not (value.isascii() and value.isdigit()) or len(value) > 3 or int(value) > 255:
            raise PinsError(
                f"ggml-rpc.h defines RPC_PROTO_{name}_VERSION as {value[:20]!r}, "
                "not a number from 0 to 255",
                hint="the ggml tree is damaged: update the ggml submodule",
            )
        parts.append(int(value))
    return (parts[0], parts[1], parts[2])


def parse_gitmodules(text: str) -> dict[str, str]:
    """Map submodule path -> url from a ``.gitmodules`` file (tolerant of indentation)."""
    out: dict[str, str] = {}
    path: Optional[str] = None
    url: Optional[str] = None
    for raw in [*text.splitlines(), "[end]"]:
        line = raw.strip()
        if line.startswith("["):
            if path is not None and url is not None:
                out[path] = url
            path = url = None
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "path":
            path = value.strip()
        elif key == "url":
            url = value.strip()
    return out


def _git_facts(tree: Path) -> tuple[Optional[str], Optional[str]]:
    """(sd.cpp HEAD commit, ggml gitlink commit) when ``tree`` is a git work tree."""
    if not (tree / ".git").exists():
        return None, None
    git = ["git", "-C", str(tree)]
    head = run([*git, "rev-parse", "--verify", "HEAD"], timeout=GIT_TIMEOUT).stdout.strip()
    if not head:
        return None, None  # not a usable repository: report as unknown
    entry = run([*git, "ls-tree", "HEAD", "ggml"], timeout=GIT_TIMEOUT).stdout.split()
    gitlink = entry[2] if len(entry) >= 3 and entry[1] == "commit" else None
    return head, gitlink


def read_sd_tree(
    tree: Path,
    *,
    llama_commit: Optional[str] = None,
    max_name: Optional[int] = None,
) -> SdPins:
    """Read the pins of a local sd.cpp tree; explicit values override what is read.

    A file that cannot be read (permissions, a path too long, an I/O error) is a
    :class:`PinsError` naming it, like any other problem with the tree.
    """
    try:
        return _read_sd_tree(tree.expanduser(), llama_commit, max_name)
    except OSError as exc:
        where = shown_path(exc.filename) if exc.filename else shown_path(tree)
        raise PinsError(
            f"cannot read {where}: {exc.strerror or exc}",
            hint="check that the sd.cpp tree is readable (permissions, path length) "
            "or pass --sd-cpp PATH to another checkout",
        ) from None


def _bytes(path: Path) -> bytes:
    """A file's bytes; an OSError always names the file (a read error may not)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def _text(path: Path) -> str:
    return _bytes(path).decode("utf-8", errors="replace")


def _read_sd_tree(tree: Path, llama_commit: Optional[str], max_name: Optional[int]) -> SdPins:
    if not tree.is_dir():
        raise PinsError(
            f"{shown_path(tree)} is not a directory",
            hint="pass --sd-cpp PATH to an sd.cpp checkout",
        )
    cmakelists = tree / "CMakeLists.txt"
    cm_text = _text(cmakelists) if cmakelists.is_file() else ""
    if "stable-diffusion" not in cm_text and not (tree / "stable-diffusion.h").exists():
        raise PinsError(
            f"{shown_path(tree)} is not a stable-diffusion.cpp tree (no CMakeLists.txt with "
            'project("stable-diffusion"))',
            hint="run sdrpc-build inside an sd.cpp checkout or pass --sd-cpp PATH "
            "(or --llama-commit and --max-name without a tree)",
        )
    ggml = tree / "ggml"
    ggml_ready = ggml.is_dir() and any(ggml.iterdir())
    if not ggml_ready and llama_commit is None:
        raise PinsError(
            f"the ggml submodule in {shown_path(tree)} is not initialised",
            hint=f"run: git -C {shown_path(tree)} submodule update --init ggml",
        )

    if llama_commit is not None:
        if not is_full_sha(llama_commit):
            raise PinsError(
                f"--llama-commit {llama_commit[:60]!r} is not a full 40-hex commit",
                hint="pinned means a full SHA; abbreviations and branch names are refused",
            )
        commit_pin = Pin(llama_commit, "--llama-commit")
    else:
        sync = tree / SYNC_FILE
        if not sync.is_file():
            raise PinsError(
                f"{SYNC_FILE} is missing in {shown_path(tree)}",
                hint="update the ggml submodule (git submodule update --init) "
                "or pass --llama-commit",
            )
        commit_pin = Pin(parse_sync_llama_last(_bytes(sync), SYNC_FILE), SYNC_FILE)

    if max_name is not None:
        name_pin = Pin(check_max_name(max_name, "--max-name"), "--max-name")
    else:
        value = parse_max_name(cm_text)
        if value is None:
            raise PinsError(
                f"no GGML_MAX_NAME definition in {shown_path(cmakelists)}",
                hint="pass --max-name N (sd.cpp uses 160 since 2026-07, 128 before)",
            )
        name_pin = Pin(value, "CMakeLists.txt")

    header = tree / RPC_HEADER
    proto = parse_rpc_version(_text(header)) if header.is_file() else None
    proto_pin: Pin[Optional[tuple[int, int, int]]] = Pin(
        proto, RPC_HEADER if proto else "unknown (no ggml-rpc.h)"
    )

    gm = tree / ".gitmodules"
    url = parse_gitmodules(_text(gm)).get("ggml") if gm.is_file() else None
    url_pin: Pin[Optional[SecretUrl]] = Pin(
        SecretUrl.parse(url) if url else None, ".gitmodules" if url else "unknown (no .gitmodules)"
    )

    head, gitlink = _git_facts(tree)
    no_git = "unknown (not a git checkout)"
    sd_rpc = "SD_RPC" in cm_text
    return SdPins(
        llama_commit=commit_pin,
        max_name=name_pin,
        client_protocol=proto_pin,
        ggml_url=url_pin,
        ggml_commit=Pin(gitlink, "git ls-tree HEAD ggml" if gitlink else no_git),
        sd_commit=Pin(head, "git HEAD" if head else no_git),
        rpc_client=Pin(sd_rpc, "CMakeLists.txt (SD_RPC option)"),
        origin=str(tree.resolve()),
    )


def apply_overrides(
    pins: SdPins, *, llama_commit: Optional[str] = None, max_name: Optional[int] = None
) -> SdPins:
    """Command-line values win over what was read."""
    if llama_commit is not None:
        pins = replace(pins, llama_commit=Pin(llama_commit, "--llama-commit"))
    if max_name is not None:
        pins = replace(pins, max_name=Pin(max_name, "--max-name"))
    return pins
