"""The README's exit-code table and the code's table say the same thing."""

from __future__ import annotations

import re
from pathlib import Path

from sdrpc_build.errors import DEFAULT_HINTS, EXIT_CODES

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
