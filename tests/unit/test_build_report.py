from __future__ import annotations

import io

from rich.table import Table

from sdrpc_build.build.toolchain import parse_ninja_step
from sdrpc_build.cli.build_report import PlainReporter, print_table


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_progress_is_throttled_but_never_silent() -> None:
    out, clock = io.StringIO(), _Clock()
    rep = PlainReporter("sdrpc-build", out, interval=5.0, clock=clock)
    rep.phase("compile")
    for step in range(1, 35):
        clock.t += 0.5  # a step every half second: 17 s in all
        rep.progress(step, 34, f"building f{step}.c.o")
    lines = out.getvalue().splitlines()
    assert lines[0] == "sdrpc-build: compile..."
    assert lines[1] == "sdrpc-build: [1/34] 2% building f1.c.o"
    assert lines[-1] == "sdrpc-build: [34/34] 100% building f34.c.o"
    assert 4 <= len(lines) <= 7  # first, last, and one about every 5 s
    clock.t += 20
    rep.heartbeat(silence=15)
    assert out.getvalue().splitlines()[-1] == "sdrpc-build: still compile (37s)"
    rep.heartbeat(silence=15)  # just said something: quiet
    assert len(out.getvalue().splitlines()) == len(lines) + 1


def test_ninja_steps_name_the_object() -> None:
    line = "[12/34] Building C object ggml/src/CMakeFiles/ggml-cpu.dir/ggml-cpu/ggml-cpu.c.o"
    assert parse_ninja_step(line) == (12, 34, "building ggml-cpu.c.o")
    assert parse_ninja_step("[٣/4] x") is None  # ASCII digits only
    assert parse_ninja_step("-- Configuring done") is None


def test_tables_never_cut_values_when_piped() -> None:
    key = "cpu-4df29be4f4-n160-a981ee50ce2a985d"
    commit = "4df29be4f4c3673f428170fda944a5b19f743bb8"
    path = "/home/someone/.cache/sdrpc/artifacts/" + key + "/bin/ggml-rpc-server"
    t = Table(title="cached builds")
    for col in ("key", "commit", "binary"):
        t.add_column(col)
    t.add_row(key, commit, path)
    out = io.StringIO()  # not a terminal, 80 columns by default
    print_table(t, out)
    lines = out.getvalue().splitlines()
    row = next(ln for ln in lines if key in ln)
    assert commit in row and path in row  # each value whole, on one line
    assert "…" not in out.getvalue()
