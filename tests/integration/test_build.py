"""sdrpc-build end to end: real git fetch over file://, real cmake builds, real handshakes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import servers

pytestmark = pytest.mark.integration

V5 = servers.LLAMA_SDISTS["0.3.35"][0]
V7 = servers.LLAMA_SDISTS["0.3.36"][0]


def build_argv(cache: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sdrpc_build.cli.build", "--cache-dir", str(cache), *args]


def build_env(**extra: str) -> dict[str, str]:
    """The test's environment, minus a cache dir that would override --cache-dir."""
    e = dict(os.environ)
    e.pop("SDRPC_CACHE_DIR", None)
    e.update(extra)
    return e


def sdrpc_build(
    *args: str, cache: Path, env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        build_argv(cache, *args),
        capture_output=True,
        text=True,
        env=build_env(**(env or {})),
        timeout=900,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def git_build(shared_cache: Path) -> dict[str, object]:
    """One real build: shallow fetch of the real v5 commit over file://, CPU server, n160."""
    repo = servers.bare_repo("0.3.35")
    proc = sdrpc_build(
        "--llama-commit",
        V5,
        "--max-name",
        "160",
        "--llama-repo",
        repo.as_uri(),
        "--json",
        cache=shared_cache,
        check=True,
    )
    return dict(json.loads(proc.stdout))


def test_git_fetch_build_verify(git_build: dict[str, object], shared_cache: Path) -> None:
    r = git_build
    assert r["cache_hit"] is False and r["verified"] is True
    assert (r["commit"], r["max_name"], r["target"], r["protocol"]) == (
        V5,
        160,
        "ggml-rpc-server",
        "5.0.0",
    )
    binary = Path(str(r["binary"]))
    assert binary.is_file() and os.access(binary, os.X_OK)
    m = json.loads(Path(str(r["manifest"])).read_text())
    assert m["verify"]["ok"] and m["verify"]["max_name"] == 160
    assert m["verify"]["devices"] == ["CPU"]
    assert m["source"]["method"] == "git"
    assert m["pins"]["llama_commit"]["source"] == "--llama-commit"
    assert m["defines"]["BUILD_SHARED_LIBS"] == "OFF" and m["defines"]["GGML_RPC"] == "ON"
    assert len(m["binary_sha256"]) == 64 and m["build_seconds"] > 0
    # the fetched source is a real shallow checkout at exactly the commit
    src = shared_cache / "sources" / V5
    head = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert head == V5
    assert (src / ".git" / "shallow").is_file()


def test_max_name_reaches_every_compiled_file(
    git_build: dict[str, object], shared_cache: Path
) -> None:
    builds = list((shared_cache / "builds").glob("cpu-4df29be4f4-n160-*"))
    assert len(builds) == 1
    cmds = json.loads((builds[0] / "compile_commands.json").read_text())
    assert len(cmds) > 20
    missing = [c["file"] for c in cmds if "-DGGML_MAX_NAME=160" not in c["command"]]
    assert missing == []
    langs = {Path(c["file"]).suffix for c in cmds}
    assert {".c", ".cpp"} <= langs


def test_second_call_is_a_cache_hit_without_network(
    git_build: dict[str, object], shared_cache: Path
) -> None:
    t0 = time.monotonic()
    proc = sdrpc_build(
        "--llama-commit",
        V5,
        "--max-name",
        "160",
        "--llama-repo",
        "file:///nonexistent/repo.git",
        "--json",
        cache=shared_cache,
        check=True,
    )
    elapsed = time.monotonic() - t0
    r = json.loads(proc.stdout)
    assert r["cache_hit"] is True and r["binary"] == git_build["binary"]
    assert elapsed < 30  # generous: proves no build happened, not a speed target


def test_plain_output_ends_with_binary_path(
    git_build: dict[str, object], shared_cache: Path
) -> None:
    proc = sdrpc_build("--llama-commit", V5, "--max-name", "160", cache=shared_cache, check=True)
    assert proc.stdout.strip().splitlines()[-1] == git_build["binary"]


def test_commit_not_at_remote(shared_cache: Path) -> None:
    repo = servers.bare_repo("0.3.35")
    proc = sdrpc_build(
        "--llama-commit", V7, "--max-name", "160", "--llama-repo", repo.as_uri(), cache=shared_cache
    )
    assert proc.returncode == 5, proc.stderr
    assert V7 in proc.stderr and "Traceback" not in proc.stderr
    assert not list((shared_cache / "sources").glob(f"{V7}*"))


def test_remote_unreachable(tmp_path: Path) -> None:
    proc = sdrpc_build(
        "--llama-commit",
        V5,
        "--max-name",
        "64",
        "--llama-repo",
        (tmp_path / "nope.git").as_uri(),
        cache=tmp_path / "c",
    )
    assert proc.returncode == 5
    assert "nope.git" in proc.stderr and V5 in proc.stderr
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr


def test_llama_src_checkout_and_dirty(
    shared_cache: Path, tmp_path: Path, git_build: dict[str, object]
) -> None:
    work = tmp_path / "llama.cpp"
    subprocess.run(["git", "clone", "-q", str(servers.bare_repo("0.3.35")), str(work)], check=True)
    (work / "README.md").write_text("local change\n")
    proc = sdrpc_build(
        "--llama-commit", V5, "--max-name", "160", "--llama-src", str(work), cache=shared_cache
    )
    assert proc.returncode == 5 and "uncommitted changes" in proc.stderr
    assert "--allow-dirty" in proc.stderr
    subprocess.run(["git", "-C", str(work), "checkout", "README.md"], check=True)
    proc = sdrpc_build(
        "--llama-commit",
        V5,
        "--max-name",
        "160",
        "--llama-src",
        str(work),
        "--json",
        cache=shared_cache,
        check=True,
    )
    r = json.loads(proc.stdout)
    # a clean checkout of the same commit is the same build: served from the store
    assert r["cache_hit"] is True
    proc = sdrpc_build(
        "--llama-commit", V7, "--max-name", "160", "--llama-src", str(work), cache=shared_cache
    )
    assert proc.returncode == 5 and "not the pinned" in proc.stderr


def test_llama_sdist_source(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    (cache / "downloads").mkdir(parents=True)
    shutil.copy2(servers.sdist_path("llama-cpp-python", "0.3.35"), cache / "downloads")
    # wrong commit: says which commit the sdist holds
    proc = sdrpc_build(
        "--llama-commit",
        V7,
        "--max-name",
        "64",
        "--llama-sdist",
        "llama-cpp-python==0.3.35",
        cache=cache,
    )
    assert proc.returncode == 5 and f"vendors llama.cpp {V5}" in proc.stderr
    proc = sdrpc_build(
        "--llama-commit",
        V5,
        "--max-name",
        "64",
        "--llama-sdist",
        "llama-cpp-python==0.3.35",
        "--json",
        cache=cache,
        check=True,
    )
    r = json.loads(proc.stdout)
    assert r["verified"] is True and r["protocol"] == "5.0.0" and r["max_name"] == 64
    src = cache / "sources" / V5
    assert (src / "tools" / "rpc" / "rpc-server.cpp").is_file()
    # never copy credentials out of an sdist
    assert not [p for p in cache.rglob("config") if ".git" in p.parts]


def test_real_sd_cpp_tree_pins(sd_cpp_tree: Path, tmp_path: Path) -> None:
    proc = sdrpc_build("--sd-cpp", str(sd_cpp_tree), "--dry-run", "--json", cache=tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["pins"]["llama_commit"]["value"] == "b0f0dd3e516a783b46bb15b20e6a6579367e2ff2"
    assert d["pins"]["max_name"]["value"] == 128
    assert d["pins"]["client_protocol"]["value"] == "3.6.1"
    assert d["plan"]["target"].startswith("unknown")
    assert f"-DCMAKE_PROJECT_INCLUDE={tmp_path}" in " ".join(d["configure"])


@pytest.mark.parametrize(
    ("mutate", "code", "text"),
    [
        (
            lambda t: (t / "ggml" / "scripts" / "sync-llama.last").write_text("abc\n"),
            3,
            "expected 40",
        ),
        (lambda t: (t / "ggml" / "scripts" / "sync-llama.last").unlink(), 3, "missing"),
        (lambda t: shutil.rmtree(t / "ggml"), 3, "not initialised"),
        (
            lambda t: (t / "CMakeLists.txt").write_text(
                (t / "CMakeLists.txt").read_text().replace("GGML_MAX_NAME=128", "GGML_MAX_NAME=x")
            ),
            3,
            "not a positive number",
        ),
    ],
)
def test_bad_sd_trees(
    sd_cpp_tree: Path, tmp_path: Path, mutate: Callable[[Path], object], code: int, text: str
) -> None:
    tree = tmp_path / "sd"
    shutil.copytree(
        sd_cpp_tree, tree, ignore=shutil.ignore_patterns("thirdparty", "examples", "assets", "docs")
    )
    mutate(tree)
    proc = sdrpc_build("--sd-cpp", str(tree), "--dry-run", cache=tmp_path / "c")
    assert proc.returncode == code, proc.stderr
    assert text in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3


def test_usage_errors(tmp_path: Path) -> None:
    p = sdrpc_build("--llama-commit", V5, "--backend", "vulkn", "--dry-run", cache=tmp_path)
    assert p.returncode == 4 and "did you mean 'vulkan'" in p.stderr
    p = sdrpc_build("--llama-commit", "abc", cache=tmp_path)
    assert p.returncode == 2 and "40-hex" in p.stderr
    p = sdrpc_build("--llama-commit", V5, "-D", "GGML_MAX_NAME=1", cache=tmp_path)
    assert p.returncode == 2 and "--max-name" in p.stderr
    p = sdrpc_build(cache=tmp_path)  # cwd is not an sd.cpp tree
    assert p.returncode == 3 and "current directory" in p.stderr
    bad = tmp_path / "r.toml"
    bad.write_text('[defines]\nA = "ON"\n[[tool]]\nname = "x"\n')
    p = sdrpc_build("--llama-commit", V5, "--recipe", str(bad), "--dry-run", cache=tmp_path)
    assert p.returncode == 4 and "did you mean 'tools'" in p.stderr


def test_missing_tool_is_named(tmp_path: Path) -> None:
    p = sdrpc_build(
        "--llama-commit",
        V5,
        "--backend",
        "cuda",
        cache=tmp_path,
        env={"PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent)},
    )
    if shutil.which("nvcc", path="/usr/bin:/bin"):
        pytest.fail("this test expects a machine without nvcc in /usr/bin")
    assert p.returncode == 6 and "nvcc" in p.stderr and "hint:" in p.stderr


def test_configure_failure_shows_log_tail(
    tmp_path: Path, git_build: dict[str, object], shared_cache: Path
) -> None:
    p = sdrpc_build(
        "--llama-commit",
        V5,
        "--max-name",
        "160",
        "-D",
        "GGML_BLAS=ON",
        "-D",
        "GGML_BLAS_VENDOR=NoSuchVendor",
        "--no-verify",
        cache=shared_cache,
    )
    assert p.returncode == 7, p.stderr
    assert "cmake configure failed" in p.stderr and "| " in p.stderr
    assert not list((shared_cache / "artifacts").glob("*NoSuch*"))


def test_ctrl_c_leaves_no_partial_entry(
    tmp_path: Path, shared_cache: Path, git_build: dict[str, object]
) -> None:
    cache = tmp_path / "c"
    shutil.copytree(shared_cache / "sources", cache / "sources", symlinks=True)
    proc = subprocess.Popen(
        build_argv(cache, "--llama-commit", V5, "--max-name", "160", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=build_env(CCACHE_DISABLE="1"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        logs: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list((cache / "builds").glob("*/build.log"))
            if logs and "cmake --build" in logs[0].read_text():
                break
            time.sleep(0.2)
        assert logs, "the build never started"
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    arts = cache / "artifacts"
    assert not arts.exists() or not any(arts.iterdir())
    # and the next run succeeds
    p = sdrpc_build("--llama-commit", V5, "--max-name", "160", "--json", cache=cache, check=True)
    assert json.loads(p.stdout)["verified"] is True


def test_fetched_source_is_reused_without_network(
    shared_cache: Path, git_build: dict[str, object]
) -> None:
    from sdrpc_build.source import fetch_git

    src = fetch_git(shared_cache / "sources", V5, "file:///nonexistent/llama.cpp.git", retries=1)
    assert src.method == "cache" and src.fetched is False
    assert src.tree == shared_cache / "sources" / V5


def test_concurrent_builds_of_one_request(
    tmp_path: Path, shared_cache: Path, git_build: dict[str, object]
) -> None:
    cache = tmp_path / "c"
    shutil.copytree(shared_cache / "sources", cache / "sources", symlinks=True)
    env = build_env()
    argv = build_argv(cache, "--llama-commit", V5, "--max-name", "160", "--json")
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(o[0]) for o in outs]
    assert results[0]["binary"] == results[1]["binary"]
    assert sorted(r["cache_hit"] for r in results) == [False, True]  # one built, one waited
    entries = [p.name for p in (cache / "artifacts").iterdir()]
    assert len(entries) == 1 and not entries[0].startswith(".tmp")


def _fork_tree(root: Path) -> Path:
    """An sd.cpp tree whose ggml is a fork: llama.cpp 4df29be's ggml with RPC 5.0.1."""
    sd = root / "sd.cpp"
    sd.mkdir()
    (sd / "CMakeLists.txt").write_text(
        'project("stable-diffusion")\nif (NOT SD_USE_SYSTEM_GGML)\n'
        "    add_definitions(-DGGML_MAX_NAME=160)\nendif()\n"
    )
    (sd / ".gitmodules").write_text(
        '[submodule "ggml"]\n\tpath = ggml\n\turl = https://github.com/leejet/ggml.git\n'
    )
    shutil.copytree(servers.llama_tree("0.3.35") / "ggml", sd / "ggml")
    header = sd / "ggml" / "include" / "ggml-rpc.h"
    text = header.read_text()
    assert "#define RPC_PROTO_PATCH_VERSION    0" in text
    header.write_text(
        text.replace("#define RPC_PROTO_PATCH_VERSION    0", "#define RPC_PROTO_PATCH_VERSION    1")
    )
    (sd / "ggml" / "scripts").mkdir(exist_ok=True)
    (sd / "ggml" / "scripts" / "sync-llama.last").write_text(V5 + "\n")
    return sd


def test_exact_match_build_speaks_the_forks_version(
    tmp_path: Path, shared_cache: Path, git_build: dict[str, object]
) -> None:
    sd = _fork_tree(tmp_path)
    repo = servers.bare_repo("0.3.35").as_uri()
    proc = sdrpc_build(
        "--sd-cpp",
        str(sd),
        "--exact",
        "--llama-repo",
        repo,
        "--json",
        cache=shared_cache,
        check=True,
    )
    r = json.loads(proc.stdout)
    assert r["verified"] is True and r["cache_hit"] is False
    assert r["protocol"] == "5.0.1"  # the client's own version, not upstream's 5.0.0
    assert r["key"].startswith("cpu-4df29be4f4-n160-exact-")
    m = json.loads(Path(r["manifest"]).read_text())
    assert m["verify"]["protocol"] == "5.0.1" and m["verify"]["max_name"] == 160
    assert m["pins"]["client_protocol"]["value"] == "5.0.1"
    assert m["exact"]["ggml_dir"] == str((sd / "ggml").resolve())
    # an edit to the client's ggml is a different build
    again = sdrpc_build(
        "--sd-cpp", str(sd), "--exact", "--json", "--dry-run", cache=shared_cache, check=True
    )
    assert json.loads(again.stdout)["plan"]["key"] != ""
    # the upstream build of the same pins is compatible too, but not exact
    up = sdrpc_build("--sd-cpp", str(sd), "--json", cache=shared_cache, check=True)
    assert json.loads(up.stdout)["protocol"] == "5.0.0"


def test_exact_needs_a_local_tree(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9"  # never leave loopback, even if validation regressed
    p = sdrpc_build(
        "--sd-ref",
        "leejet/stable-diffusion.cpp@master",
        "--exact",
        "--github-api",
        dead,
        "--github-raw",
        dead,
        cache=tmp_path,
    )
    assert p.returncode == 2 and "local sd.cpp tree" in p.stderr
