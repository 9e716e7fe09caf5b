"""Pins: what a stable-diffusion.cpp tree says the matching server must be.

Parsers are pure functions over text; :func:`read_sd_tree` reads a local tree
(git checkout or plain directory) and :mod:`sdrpc_build.remote` resolves the
same pins from a remote ref. Every value carries where it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, Optional, TypeVar

from sdrpc_build.errors import PinsError

__all__ = [
    "DEFAULT_MAX_NAME",
    "Pin",
    "SdPins",
    "apply_overrides",
    "format_version",
    "is_full_sha",
    "parse_gitmodules",
    "parse_max_name",
    "parse_rpc_version",
    "parse_sync_llama_last",
    "read_sd_tree",
]

T = TypeVar("T")

#: ggml's own default, used only when nothing else says otherwise.
DEFAULT_MAX_NAME = 64

SYNC_FILE = "ggml/scripts/sync-llama.last"
RPC_HEADER = "ggml/include/ggml-rpc.h"

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
    ggml_url: Pin[Optional[str]]
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
            "ggml_url": {"value": self.ggml_url.value, "source": self.ggml_url.source},
            "ggml_commit": {"value": self.ggml_commit.value, "source": self.ggml_commit.source},
            "sd_commit": {"value": self.sd_commit.value, "source": self.sd_commit.source},
            "rpc_client": {"value": self.rpc_client.value, "source": self.rpc_client.source},
        }


def is_full_sha(text: str) -> bool:
    return bool(_SHA_RE.fullmatch(text))


def format_version(v: tuple[int, int, int]) -> str:
    return f"{v[0]}.{v[1]}.{v[2]}"


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
    :class:`PinsError` when the value is not a positive integer or values conflict.
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
    values: set[int] = set()
    for raw_value in found:
        if not raw_value.isdigit() or int(raw_value) <= 0:
            raise PinsError(
                f"GGML_MAX_NAME is defined as {raw_value!r}, not a positive number",
                hint="fix CMakeLists.txt or pass --max-name N",
            )
        values.add(int(raw_value))
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
        m = re.search(rf"#\s*define\s+RPC_PROTO_{name}_VERSION\s+(\d+)", header_text)
        if not m:
            return None
        parts.append(int(m.group(1)))
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
    try:
        import git  # GitPython

        repo = git.Repo(tree)
        head = repo.head.commit.hexsha
        entry = repo.git.ls_tree("HEAD", "ggml").split()
        gitlink = entry[2] if len(entry) >= 3 and entry[1] == "commit" else None
        return head, gitlink
    except Exception:  # not a usable repository: report as unknown
        return None, None


def read_sd_tree(
    tree: Path,
    *,
    llama_commit: Optional[str] = None,
    max_name: Optional[int] = None,
) -> SdPins:
    """Read the pins of a local sd.cpp tree; explicit values override what is read."""
    tree = tree.expanduser()
    if not tree.is_dir():
        raise PinsError(
            f"{tree} is not a directory", hint="pass --sd-cpp PATH to an sd.cpp checkout"
        )
    cmakelists = tree / "CMakeLists.txt"
    cm_text = cmakelists.read_text(errors="replace") if cmakelists.is_file() else ""
    if "stable-diffusion" not in cm_text and not (tree / "stable-diffusion.h").exists():
        raise PinsError(
            f"{tree} is not a stable-diffusion.cpp tree (no CMakeLists.txt with "
            'project("stable-diffusion"))',
            hint="run sdrpc-build inside an sd.cpp checkout or pass --sd-cpp PATH "
            "(or --llama-commit and --max-name without a tree)",
        )
    ggml = tree / "ggml"
    ggml_ready = ggml.is_dir() and any(ggml.iterdir())
    if not ggml_ready and llama_commit is None:
        raise PinsError(
            f"the ggml submodule in {tree} is not initialised",
            hint=f"run: git -C {tree} submodule update --init ggml",
        )

    if llama_commit is not None:
        if not is_full_sha(llama_commit):
            raise PinsError(
                f"--llama-commit {llama_commit!r} is not a full 40-hex commit",
                hint="pinned means a full SHA; abbreviations and branch names are refused",
            )
        commit_pin = Pin(llama_commit, "--llama-commit")
    else:
        sync = tree / SYNC_FILE
        if not sync.is_file():
            raise PinsError(
                f"{SYNC_FILE} is missing in {tree}",
                hint="update the ggml submodule (git submodule update --init) "
                "or pass --llama-commit",
            )
        commit_pin = Pin(parse_sync_llama_last(sync.read_bytes(), SYNC_FILE), SYNC_FILE)

    if max_name is not None:
        name_pin = Pin(max_name, "--max-name")
    else:
        value = parse_max_name(cm_text)
        if value is None:
            raise PinsError(
                f"no GGML_MAX_NAME definition in {cmakelists}",
                hint="pass --max-name N (sd.cpp uses 160 since 2026-07, 128 before)",
            )
        name_pin = Pin(value, "CMakeLists.txt")

    header = tree / RPC_HEADER
    proto = parse_rpc_version(header.read_text(errors="replace")) if header.is_file() else None
    proto_pin: Pin[Optional[tuple[int, int, int]]] = Pin(
        proto, RPC_HEADER if proto else "unknown (no ggml-rpc.h)"
    )

    gm = tree / ".gitmodules"
    url = parse_gitmodules(gm.read_text(errors="replace")).get("ggml") if gm.is_file() else None
    url_pin: Pin[Optional[str]] = Pin(url, ".gitmodules" if url else "unknown (no .gitmodules)")

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
