"""The README's exit-code table and the code's table say the same thing."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import sdrpc_build
from sdrpc_build import errors
from sdrpc_build.cli import build, doctor
from sdrpc_build.errors import DEFAULT_HINTS, EXIT_CODES, ExitCode, exit_codes_help

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_codes() -> set[int]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Exit codes") :].split("\n## ", 1)[0]
    codes: set[int] = set()
    for line in table.splitlines():
        m = re.match(r"^\|\s*([\d /]+?)\s*\|", line)
        if m:
            codes |= {int(c) for c in m.group(1).split("/")}
    return codes


def test_readme_documents_every_exit_code() -> None:
    assert _readme_codes() == set(EXIT_CODES)


def test_every_error_code_has_a_default_hint() -> None:
    assert set(DEFAULT_HINTS) == set(EXIT_CODES) - {0, 1}


def _package_modules() -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages(sdrpc_build.__path__, "sdrpc_build.")
        if not m.name.endswith("__main__")
    ]


def test_every_error_class_is_declared_in_errors_with_a_code_from_the_table() -> None:
    """One error root, one file: no wing declares an error class of its own."""
    elsewhere = [
        f"{name}.{obj.__name__}"
        for name in _package_modules()
        if name != "sdrpc_build.errors"
        for obj in vars(importlib.import_module(name)).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name
    ]
    assert elsewhere == []
    classes = [c for c in vars(errors).values() if inspect.isclass(c)]
    roots = [c for c in classes if issubclass(c, Exception) and c is not errors.SdrpcError]
    assert all(issubclass(c, errors.SdrpcError) for c in roots)  # StateFileError included
    assert {c.exit_code for c in roots if issubclass(c, errors.SdrpcError)} <= set(EXIT_CODES)
    assert errors.StateFileError("x").exit_code == errors.ExitCode.LAUNCH


def test_help_lists_codes_from_the_table() -> None:
    text = build.make_parser().format_help()
    assert exit_codes_help(build.CODES) in text
    assert f"  143  {ExitCode.TERMINATED.meaning}" in text and "  21  " not in text
    assert f"    6  {ExitCode.TOOL.meaning}" in doctor.make_parser().format_help()
