"""Picking the build that fits the client's pins (launch/match.py, resolve_build with pins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdrpc_build.errors import NoServerBinaryError
from sdrpc_build.launch.config import ServerOptions
from sdrpc_build.launch.match import Build, ClientPins, choose, mismatch, pin_groups
from sdrpc_build.launch.resolve import BuildLocator, resolve_build

A = "a" * 40
B = "b" * 40
HERE = "linux-x86_64"


def mk(key: str, commit: str, max_name: int, created: str, **kw: object) -> Build:
    fields: dict[str, object] = {"backend": "cpu", "platform": HERE, **kw}
    return Build(
        Path(f"/store/{key}/bin/rpc-server"),
        key=key,
        commit=commit,
        max_name=max_name,
        created=created,
        **fields,  # type: ignore[arg-type]
    )


A160 = mk("cpu-a-160", A, 160, "2026-01-01")
A64 = mk("cpu-a-64", A, 64, "2026-01-03")  # the newest
B160 = mk("cpu-b-160", B, 160, "2026-01-02")
A160_VK = mk("vk-a-160", A, 160, "2026-01-04", backend="vulkan")
A160_EXACT = mk("cpu-a-160-x", A, 160, "2026-01-05", exact="d1")
A160_MAC = mk("cpu-a-160-mac", A, 160, "2026-01-06", platform="darwin-arm64")
ALL = [A160, A64, B160, A160_VK, A160_EXACT, A160_MAC]


@pytest.mark.parametrize(
    ("pins", "backend", "want"),
    [
        (ClientPins(A, 160), "cpu", A160),  # not the newest cpu build (A64)
        (ClientPins(A, 64), "cpu", A64),
        (ClientPins(B, 160), "cpu", B160),
        (ClientPins(A, 160), None, A160_VK),  # any backend: the newest that fits
        (ClientPins(A, 160, exact="d1"), "cpu", A160_EXACT),
        (ClientPins(A, 160, exact="d2"), "cpu", None),
        (ClientPins(B, 64), "cpu", None),
        (ClientPins(A, 160), "cuda", None),
    ],
)
def test_choose_picks_the_newest_build_that_fits(
    pins: ClientPins, backend: str | None, want: Build | None
) -> None:
    assert choose(ALL, pins, backend, HERE).build == want


def test_rejected_builds_say_why() -> None:
    choice = choose(ALL, ClientPins(B, 64), "cpu", HERE)
    why = dict((b.key, r) for b, r in choice.rejected)
    assert set(why) == {"cpu-a-160", "cpu-a-64", "cpu-b-160", "cpu-a-160-x"}  # not the mac one
    assert why["cpu-b-160"] == "GGML_MAX_NAME 160, the client needs 64"
    assert why["cpu-a-64"] == f"llama.cpp commit {A[:10]}, the client needs {B[:10]}"
    assert "--exact" in why["cpu-a-160-x"]


def test_mismatch() -> None:
    assert mismatch(A160, ClientPins(A, 160)) is None
    assert mismatch(A160, ClientPins(A, 160, exact="d1")) == (
        "not built against the client's own ggml (--exact)"
    )
    assert mismatch(A160_EXACT, ClientPins(A, 160, exact="zz")) == (
        "built against another ggml tree than the client's (--exact)"
    )
    assert "commit is not known" in (mismatch(Build(Path("/x")), ClientPins(A, 160)) or "")


def test_pin_groups() -> None:
    assert pin_groups(ALL, "cpu", HERE) == 4  # (a,160) (a,64) (b,160) (a,160,exact)
    assert pin_groups(ALL, "vulkan", HERE) == 1
    assert pin_groups(ALL, "cuda", HERE) == 0


def locator(builds: list[Build]) -> BuildLocator:
    def find(root: Path, key: str) -> Build:
        return next(b for b in builds if b.key == key)

    return BuildLocator(
        platform=lambda: HERE,
        entry_of=lambda p: next((b for b in builds if b.binary == p), None),
        find=find,
        available=lambda root: list(builds),
    )


def test_pins_pick_the_matching_build_not_the_newest() -> None:
    o = ServerOptions(backend="cpu")
    got = resolve_build(o, Path("/store"), locator(ALL), pins=ClientPins(A, 160))
    assert got == A160


def test_no_match_is_built_when_a_builder_is_given() -> None:
    asked: list[str | None] = []

    def build_missing(backend: str | None) -> Build:
        asked.append(backend)
        return mk("new", B, 64, "2026-02-01")

    o = ServerOptions(backend="cpu")
    got = resolve_build(
        o, Path("/store"), locator(ALL), pins=ClientPins(B, 64), build_missing=build_missing
    )
    assert got.key == "new"
    assert asked == ["cpu"]


def test_no_match_without_a_builder_is_refused_with_the_reasons() -> None:
    with pytest.raises(NoServerBinaryError) as e:
        resolve_build(
            ServerOptions(backend="cpu"), Path("/s"), locator(ALL), pins=ClientPins(B, 64)
        )
    assert e.value.exit_code == 25
    assert "matches the client's pins" in e.value.message
    assert "cpu-b-160" in (e.value.details or "")


def test_a_build_for_other_pins_is_refused() -> None:
    o = ServerOptions(build="cpu-a-64")
    with pytest.raises(NoServerBinaryError) as e:
        resolve_build(o, Path("/s"), locator(ALL), pins=ClientPins(A, 160))
    assert "GGML_MAX_NAME 64, the client needs 160" in e.value.message
    assert e.value.exit_code == 25
    # the same build without pins runs as before; with its own pins too
    assert resolve_build(o, Path("/s"), locator(ALL)) == A64
    assert resolve_build(o, Path("/s"), locator(ALL), pins=ClientPins(A, 64)) == A64


def test_backend_without_pins_says_which_build_it_picked() -> None:
    warnings: list[str] = []
    o = ServerOptions(backend="cpu")
    got = resolve_build(o, Path("/s"), locator(ALL), warn=warnings.append)
    assert got == A160_EXACT  # unchanged: the newest cpu build for this platform
    assert len(warnings) == 1
    assert "picked cpu-a-160-x (commit aaaaaaaaaa, max_name 160)" in warnings[0]
    assert "--sd-cpp" in warnings[0]
    # one client's builds only: nothing to say
    quiet: list[str] = []
    resolve_build(ServerOptions(backend="vulkan"), Path("/s"), locator(ALL), warn=quiet.append)
    assert quiet == []
