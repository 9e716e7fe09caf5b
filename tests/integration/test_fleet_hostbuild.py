"""build-on = "host" on a lab of real hosts: the preflight (sdrpc doctor) on every host, one
real build per (backend, platform) group on its first host that can build, the server wheel
shipped to the rest of the group, a host that cannot build its backend failing alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fleetkit import MAX_NAME, VERSION, check, client_lines, host_state, sdrpc
from lab import Lab, lab_unavailable_reason
from servers import LLAMA_SDISTS, sdist_path, sdrpc_cache

from sdrpc_build.build.source import cached_source
from sdrpc_build.paths import sources_dir

_REASON = lab_unavailable_reason()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

PORT = 50052


def fleet_toml(lab: Lab, path: Path, backends: list[str]) -> Path:
    lines = client_lines(lab, build_on="host")
    for h, b in zip(lab.hosts, backends, strict=True):
        lines += ["[[host]]", f'name = "{h}"', f'ssh = "{h}"', f'address = "{lab.address(h)}"']
        lines += ["  [[host.server]]", f'  backend = "{b}"', f"  port = {PORT}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sources() -> None:
    """The llama.cpp tree of the pins in the client's cache (what a real up fetches once)."""
    commit = LLAMA_SDISTS[VERSION][0]
    if cached_source(sources_dir(sdrpc_cache()), commit) is None:
        from sdrpc_build.build.sdist import from_sdist  # noqa: PLC0415

        downloads = sdrpc_cache() / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        archive = downloads / f"llama_cpp_python-{VERSION}.tar.gz"
        if not archive.exists():
            archive.write_bytes(sdist_path("llama-cpp-python", VERSION).read_bytes())
        from_sdist(sources_dir(sdrpc_cache()), downloads, f"llama-cpp-python=={VERSION}", commit)


def test_build_on_host_builds_once_per_group_and_ships_the_wheel(
    lab_factory: Callable[..., Lab], tmp_path: Path, sources: None
) -> None:
    lab = lab_factory(3)
    h0, h1, h2 = lab.hosts
    # h0 runs a CUDA server: no CUDA toolkit in the lab, its preflight fails -> it fails alone
    toml = fleet_toml(lab, tmp_path / "fleet.toml", ["cuda", "cpu", "cpu"])
    # a server of this group built at an earlier run of the suite: this test builds anew
    for old in (sdrpc_cache() / "fleet" / "servers").glob("cpu-*"):
        if old.is_dir():
            for p in sorted(old.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            old.rmdir()

    r = sdrpc("up", str(toml), "--json", timeout=1500)
    assert r.returncode == 42, r.stdout + r.stderr
    res = json.loads(r.stdout)
    by_host = {h["name"]: h for h in res["hosts"]}
    assert [by_host[h]["ok"] for h in (h0, h1, h2)] == [False, True, True], r.stdout
    assert by_host[h0]["task"] == "preflight"
    assert "cannot build cuda" in by_host[h0]["reason"]
    assert "hint:" in by_host[h0]["reason"]  # the install hint, from the host's sdrpc doctor
    builds = {(b["backend"], b["builder"]) for b in res["builds"]}
    assert builds == {("cuda", None), ("cpu", h1)}, res["builds"]
    # h1 built (its build cache holds the tree and the build), h2 got the wheel's server
    assert lab.exec(h1, "ls /opt/sdrpc/build/out").stdout.strip().endswith(".whl")
    assert lab.exec(h2, "ls -d /opt/sdrpc/build").stdout.strip() == ""
    served = [f"{lab.address(h)}:{PORT}" for h in (h1, h2)]
    c = check(served)
    assert c.returncode == 0, c.stdout + c.stderr
    same = "md5sum /opt/sdrpc/servers/*/bin/*rpc-server | cut -d' ' -f1"
    assert lab.exec(h1, same).stdout == lab.exec(h2, same).stdout != ""
    # the manifest the hosts run records the client's pins and a portable, verified build
    man = json.loads(lab.exec(h2, "cat /opt/sdrpc/servers/*/manifest.json").stdout)
    assert (man["commit"], man["max_name"], man["portable"]) == (
        LLAMA_SDISTS[VERSION][0],
        MAX_NAME,
        True,
    )
    assert man["verify"]["ok"] is True

    # a second up builds nothing: the group's server is kept on the client
    r2 = sdrpc("up", str(toml), "--json", timeout=600)
    assert r2.returncode == 42, r2.stdout + r2.stderr
    res2 = json.loads(r2.stdout)
    builds2 = {(b["backend"], b["builder"]) for b in res2["builds"]}
    assert builds2 == {("cuda", None), ("cpu", "cache")}, res2["builds"]
    assert [(h["name"], h["ok"], h["changed"]) for h in res2["hosts"][1:]] == [
        (h1, True, 0),
        (h2, True, 0),
    ]

    d = sdrpc("down", str(toml), "--json")
    assert d.returncode == 0, d.stdout + d.stderr
    for h in (h0, h1, h2):
        assert host_state(lab, h) == "", h
