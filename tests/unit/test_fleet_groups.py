"""Who builds which server of a fleet (fleet/groups.py) and what a host build ships
(fleet/hostbuild.py): pure decisions and the deterministic source tar."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sdrpc_build.build.pins import Pin, SdPins
from sdrpc_build.build.source import MARKER, Source
from sdrpc_build.fleet.groups import (
    CLIENT,
    Doctor,
    client_platform,
    parse_doctor,
    plan_groups,
    platform_tag,
)
from sdrpc_build.fleet.hostbuild import SHIP_EXCLUDE, build_argv, server_key, source_tar
from sdrpc_build.fleet.model import Fleet, parse_fleet

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"
X86 = "linux-x86_64-glibc2.36"
ARM = "linux-aarch64-glibc2.36"


def fleet(build_on: str, hosts: list[tuple[str, list[str]]]) -> Fleet:
    return parse_fleet(
        {
            "client": {"llama-commit": SHA, "max-name": 160, "build-on": build_on},
            "host": [
                {
                    "name": n,
                    "ssh": n,
                    "server": [{"backend": b, "port": 50052 + i} for i, b in enumerate(bs)],
                }
                for n, bs in hosts
            ],
        },
        Path("/f/fleet.toml"),
    )


def never(_b: str, _p: str) -> bool:
    return False


OK = Doctor()
NO_CXX = Doctor("cannot build cpu: c++ compiler not found", "apt-get install g++")


def test_platform_tag_is_the_four_stdlib_values() -> None:
    assert platform_tag("linux", "x86_64", "glibc", "2.36") == X86
    assert platform_tag("linux2", "AARCH64", "", "") == "linux-aarch64"
    assert platform_tag("darwin", "arm64") == "darwin-arm64"
    assert platform_tag("linux", "x 86/64", "glibc", "2.36") == "linux-x_86_64-glibc2.36"
    assert client_platform().startswith(("linux-", "darwin-", "win"))


def test_build_on_host_first_host_of_each_group_builds() -> None:
    f = fleet("host", [("a", ["cpu", "vulkan"]), ("b", ["vulkan"]), ("c", ["cpu"])])
    plats = {"a": X86, "b": X86, "c": ARM}
    doc = {n: {"cpu": OK, "vulkan": OK} for n in plats}
    groups = plan_groups(f, plats, X86, doc, never)
    got = [(g.backend, g.platform, g.hosts, g.builder, dict(g.failed)) for g in groups]
    assert got == [
        ("cpu", X86, ("a",), "a", {}),
        ("vulkan", X86, ("a", "b"), "a", {}),
        ("cpu", ARM, ("c",), "c", {}),
    ]


def test_a_host_that_cannot_build_fails_alone_and_the_next_builds() -> None:
    f = fleet("host", [("a", ["cpu"]), ("b", ["cpu"]), ("c", ["cpu"])])
    plats = dict.fromkeys("abc", X86)
    doc = {"a": {"cpu": NO_CXX}, "b": {"cpu": OK}, "c": {"cpu": OK}}
    (g,) = plan_groups(f, plats, X86, doc, never)
    assert g.builder == "b"
    assert dict(g.failed) == {
        "a": "cannot build cpu: c++ compiler not found (hint: apt-get install g++)"
    }


def test_nobody_can_build_every_host_of_the_group_fails() -> None:
    f = fleet("host", [("a", ["cpu"]), ("b", ["cpu"])])
    (g,) = plan_groups(f, dict.fromkeys("ab", X86), X86, {"a": {"cpu": NO_CXX}}, never)
    assert g.builder is None
    assert g.failed["a"].startswith("cannot build cpu")
    assert g.failed["b"] == "no preflight answer from the host"


def test_build_on_client_builds_here_for_its_platform_only() -> None:
    f = fleet("client", [("a", ["cpu"]), ("b", ["cpu"])])
    plats = {"a": X86, "b": ARM}
    groups = plan_groups(f, plats, X86, {"b": {"cpu": OK}}, never)
    assert [(g.platform, g.builder) for g in groups] == [(X86, CLIENT), (ARM, "b")]


def test_a_server_built_before_is_not_built_again() -> None:
    f = fleet("host", [("a", ["cpu"]), ("b", ["cpu"])])
    (g,) = plan_groups(f, dict.fromkeys("ab", X86), X86, {}, lambda b, p: (b, p) == ("cpu", X86))
    assert (g.builder, dict(g.failed)) == ("cache", {})


def test_hosts_of_unknown_platform_are_left_out() -> None:
    f = fleet("host", [("a", ["cpu"]), ("b", ["cpu"])])
    (g,) = plan_groups(f, {"b": X86}, X86, {"b": {"cpu": OK}}, never)
    assert g.hosts == ("b",)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            {"backends": [{"backend": "cpu", "supported": True, "buildable": True}]},
            Doctor(),
        ),
        (
            {
                "backends": [
                    {
                        "backend": "cpu",
                        "supported": True,
                        "buildable": False,
                        "missing": ["cxx-compiler"],
                        "problem": "c++ compiler not found",
                        "hint": "apt-get install g++",
                    }
                ]
            },
            Doctor("cannot build cpu: c++ compiler not found", "apt-get install g++"),
        ),
        (
            {"backends": [{"backend": "cpu", "supported": False}]},
            Doctor("the cpu recipe does not build on this platform"),
        ),
        ({"backends": []}, Doctor("sdrpc doctor does not know the backend 'cpu'")),
        ("not json", Doctor("sdrpc doctor gave no readable answer")),
    ],
)
def test_parse_doctor(text: Any, want: Doctor) -> None:
    raw = text if isinstance(text, str) else json.dumps(text)
    assert parse_doctor(raw, ["cpu"]) == {"cpu": want}


def pins(max_name: int = 160) -> SdPins:
    return SdPins(
        llama_commit=Pin(SHA, "t"),
        max_name=Pin(max_name, "t"),
        client_protocol=Pin(None, "t"),
        ggml_url=Pin(None, "t"),
        ggml_commit=Pin(None, "t"),
        sd_commit=Pin(None, "t"),
        rpc_client=Pin(None, "t"),
        origin="t",
    )


def test_server_key_changes_with_pins_backend_and_platform() -> None:
    keys = {
        server_key(pins(), "cpu", X86),
        server_key(pins(128), "cpu", X86),
        server_key(pins(), "vulkan", X86),
        server_key(pins(), "cpu", ARM),
    }
    assert len(keys) == 4
    assert server_key(pins(), "cpu", X86) == server_key(pins(), "cpu", X86)


def test_build_argv_gives_the_clients_pins_explicitly() -> None:
    argv = build_argv("/opt/sdrpc/venv/bin/sdrpc-build", pins(), "cpu", "/c", "/o", "x==1")
    assert argv[:3] == ["/opt/sdrpc/venv/bin/sdrpc-build", "--llama-commit", SHA]
    for flag in ("--portable", "--wheel", "--json"):
        assert flag in argv
    assert argv[argv.index("--max-name") + 1] == "160"
    assert argv[-2:] == ["--llama-sdist", "x==1"]
    assert "--llama-sdist" not in build_argv("b", pins(), "cpu", "/c", "/o", None)


def test_source_tar_is_deterministic_and_ships_no_git_models_or_docs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for rel in ("CMakeLists.txt", "ggml/src/a.c", "tools/rpc/x.cpp", "docs/d.md"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel)
    (tree / ".git").mkdir()
    (tree / ".git" / "config").write_text("url = https://user:tok@example/x")
    (tree / "models").mkdir()
    (tree / "models" / "big.gguf").write_text("x" * 100)
    (tree / MARKER).write_text(json.dumps({"commit": SHA, "origin": "https://user:tok@h/x"}))
    src = Source(tree, SHA, "cache", "o")
    a = source_tar(src, tmp_path / "c1")
    b = source_tar(src, tmp_path / "c2")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        names = tar.getnames()
        marker = tar.extractfile(f"sources/{SHA}/{MARKER}")
        assert marker is not None
        text = marker.read().decode()
    assert f"sources/{SHA}/ggml/src/a.c" in names
    assert f"sources/{SHA}/tools/rpc/x.cpp" in names
    assert not [n for n in names if n.split("/")[2] in SHIP_EXCLUDE]
    assert json.loads(text)["commit"] == SHA and "tok" not in text
    assert "tok" not in a.read_bytes().decode("latin-1")
