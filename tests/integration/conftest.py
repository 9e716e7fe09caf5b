"""Fixtures of the integration tests: a lab of real hosts (tests/lab.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
from lab import Lab, LabError, lab_unavailable_reason


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """``lab = lab_factory(3)``: a started lab of hosts lab1..lab3 (``no_systemd=["lab2"]``:
    lab2 without systemd); every lab it made is torn down at the end of the test, whatever
    happened (a teardown that leaves something fails)."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    labs: list[Lab] = []

    def make(n: int = 3, *, boot_timeout: float = 60.0, no_systemd: Sequence[str] = ()) -> Lab:
        lab = Lab(n, boot_timeout=boot_timeout, no_systemd=no_systemd)
        labs.append(lab)
        lab.start()
        return lab

    yield make
    errors = []
    for lab in labs:
        try:
            lab.close()
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("\n".join(errors))
