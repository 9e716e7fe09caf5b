"""``--exact``: llama.cpp's server program built against the sd.cpp tree's own ggml.

The server then speaks exactly the protocol version (and op set) of the client's
ggml, forks included. The ggml tree is hashed into the cache key
(:func:`tree_digest`); its protocol version and CMake options replace those of the
llama.cpp tree (:func:`exact_facts`); a wrapper CMake project
(:func:`~sdrpc_build.build.plan.exact_project_text`) is written next to the build
directory (:func:`write_exact_project`).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from sdrpc_build.build.pins import parse_rpc_version
from sdrpc_build.build.plan import OPTION_RE, TreeFacts, exact_project_text
from sdrpc_build.errors import PinsError
from sdrpc_build.paths import shown_path

__all__ = ["exact_facts", "tree_digest", "write_exact_project"]


def tree_digest(root: Path) -> str:
    """A content hash of a source tree (what --exact builds against), for the cache key."""
    h = hashlib.sha256()
    try:
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not rel.startswith((".git/", "build")) and rel != ".git":
                h.update(rel.encode() + b"\0")
                h.update(p.read_bytes())
                h.update(b"\0")
    except OSError as exc:
        raise PinsError(
            f"cannot read {shown_path(exc.filename or root)}: {exc.strerror or exc}",
            hint="--exact reads the sd.cpp tree's whole ggml submodule: check its permissions",
        ) from None
    return "sha256:" + h.hexdigest()[:32]


def exact_facts(facts: TreeFacts, ggml_dir: Path) -> TreeFacts:
    """Tree facts for --exact: the server program from llama.cpp, everything else from ggml."""
    header = ggml_dir / "include" / "ggml-rpc.h"
    if not header.is_file():
        raise PinsError(
            f"{ggml_dir} has no include/ggml-rpc.h",
            hint="--exact needs the sd.cpp tree's ggml submodule (git submodule update --init)",
        )
    proto = parse_rpc_version(header.read_text(errors="replace"))
    cm = ggml_dir / "CMakeLists.txt"
    options = (
        frozenset(OPTION_RE.findall(cm.read_text(errors="replace")))
        if cm.is_file()
        else frozenset()
    )
    return replace(facts, protocol=proto, options=options)


def write_exact_project(
    project_dir: Path, ggml_dir: Path, llama_tree: Path, facts: TreeFacts
) -> None:
    """The wrapper project: ``rpc-server.cpp`` of ``llama_tree`` linked to ``ggml_dir``.

    Raises OSError (the caller reports it as a cache error).
    """
    server_cpp = llama_tree / facts.server_dir / "rpc-server.cpp"
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "CMakeLists.txt").write_text(
        exact_project_text(ggml_dir.resolve(), server_cpp, facts.target)
    )
