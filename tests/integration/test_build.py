"""sdrpc-build end to end: real git fetch over file://, real cmake builds, real handshakes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import servers
from procs import alive

from sdrpc_build.build.source import fetch_git

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
def git_build_run(shared_cache: Path) -> subprocess.CompletedProcess[str]:
    """One real build: shallow fetch of the real v5 commit over file://, CPU server, n160."""
    repo = servers.bare_repo("0.3.35")
    return sdrpc_build(
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


@pytest.fixture(scope="module")
def git_build(git_build_run: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return dict(json.loads(git_build_run.stdout))


def test_piped_build_shows_progress(git_build_run: subprocess.CompletedProcess[str]) -> None:
    """Not a terminal (a pipe, CI, quickstart): plain progress lines on stderr all the same."""
    err = git_build_run.stderr.splitlines()
    for phase in ("toolchain", "source", "configure", "compile", "verify", "store"):
        assert f"sdrpc-build: {phase}..." in err
    steps = [ln for ln in err if re.fullmatch(r"sdrpc-build: \[\d+/\d+\] \d+% \S.*", ln)]
    assert steps, git_build_run.stderr
    assert re.search(r"\[1/(\d+)\] ", steps[0]) and "100% linking ggml-rpc-server" in steps[-1]
    assert any(re.search(r"building \S+\.c(pp)?\.o$", ln) for ln in steps)
    assert "\x1b[" not in git_build_run.stderr  # no terminal control sequences in a log


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


def test_narrow_piped_output_never_cuts_keys_commits_or_paths(
    git_build: dict[str, object], shared_cache: Path
) -> None:
    narrow = {"COLUMNS": "80"}
    listing = sdrpc_build("--list", cache=shared_cache, env=narrow, check=True).stdout
    key = str(git_build["key"])
    row = next(ln for ln in listing.splitlines() if key in ln)  # the whole key, on one line
    assert V5 in row and "…" not in listing
    plain = sdrpc_build(
        "--llama-commit", V5, "--max-name", "160", cache=shared_cache, env=narrow, check=True
    ).stdout
    assert f"llama.cpp {V5}" in plain and "…" not in plain
    assert plain.splitlines()[-1] == git_build["binary"]
    assert f"manifest: {git_build['manifest']}" in plain.splitlines()
    pins_row = next(ln for ln in plain.splitlines() if "llama_commit" in ln)
    assert V5 in pins_row


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


def test_damaged_cached_sdist_is_downloaded_again(tmp_path: Path) -> None:
    good = servers.sdist_path("llama-cpp-python", "0.3.35")
    size = good.stat().st_size
    cache = tmp_path / "c"
    (cache / "downloads").mkdir(parents=True)
    cached = cache / "downloads" / good.name
    cached.write_bytes(good.read_bytes()[: size // 2])  # a download cut short
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(good.parent)}  # pip's "index"
    args = ("--llama-commit", V7, "--max-name", "160", "--llama-sdist", "llama-cpp-python==0.3.35")
    p = sdrpc_build(*args, cache=cache, env=offline)
    # the damaged file was replaced by a good one: the run gets as far as reading its commit
    assert p.returncode == 5 and f"vendors llama.cpp {V5}" in p.stderr, p.stderr
    assert "is damaged" in p.stderr and "downloading it again" in p.stderr
    assert cached.stat().st_size == size
    # an index that only has a damaged file: a clear error (exit 5), never "report it"
    bad_index = tmp_path / "index"
    bad_index.mkdir()
    (bad_index / good.name).write_bytes(good.read_bytes()[: size // 3])
    cached.write_bytes(good.read_bytes()[: size // 2])
    p = sdrpc_build(*args, cache=cache, env={**offline, "PIP_FIND_LINKS": str(bad_index)})
    assert p.returncode == 5, p.stderr
    assert "sdrpc-build: error: " in p.stderr and "sdrpc-build: hint: " in p.stderr
    assert "report" not in p.stderr and "Traceback" not in p.stderr
    assert not cached.exists()  # the next run downloads it afresh


def test_killed_extraction_is_cleaned_by_the_next_build(tmp_path: Path) -> None:
    """kill -9 while the sdist is extracted: the next build removes the leftover tree."""
    cache = tmp_path / "c"
    (cache / "downloads").mkdir(parents=True)
    shutil.copy2(servers.sdist_path("llama-cpp-python", "0.3.35"), cache / "downloads")
    sdist = ("--llama-sdist", "llama-cpp-python==0.3.35")
    proc = subprocess.Popen(
        build_argv(cache, "--llama-commit", V5, "--max-name", "160", *sdist),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=build_env(),
        start_new_session=True,
    )
    leftovers: list[Path] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            leftovers = list((cache / "sources").glob("sdist-*.sdrpc-tmp-*"))
            if leftovers and list(leftovers[0].glob("*/vendor/llama.cpp/*")):
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert leftovers and leftovers[0].is_dir(), "never caught the extraction in progress"
    assert not (cache / "sources" / V5).exists()
    p = sdrpc_build("--llama-commit", V7, "--max-name", "160", *sdist, cache=cache)
    assert p.returncode == 5 and "vendors llama.cpp" in p.stderr  # quick, after the cleanup
    assert f"removed {leftovers[0].name}, left behind by a killed build" in p.stderr
    assert not leftovers[0].exists()
    assert not list(cache.rglob("*.sdrpc-tmp-*"))


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
        (
            lambda t: (t / "CMakeLists.txt").write_text(
                (t / "CMakeLists.txt").read_text().replace("GGML_MAX_NAME=128", "GGML_MAX_NAME=²")
            ),
            3,
            "not a positive number",
        ),
        (
            lambda t: (t / "CMakeLists.txt").write_text(
                (t / "CMakeLists.txt")
                .read_text()
                .replace("GGML_MAX_NAME=128", "GGML_MAX_NAME=" + "9" * 400)
            ),
            3,
            "out of range",
        ),
        (
            lambda t: (t / "CMakeLists.txt").write_text(
                (t / "CMakeLists.txt").read_text().replace("GGML_MAX_NAME=128", "GGML_MAX_NAME=100")
            ),
            3,
            "not a multiple of 16",
        ),
        (  # a file that cannot be read (even by root: /proc/self/mem fails on read)
            lambda t: (
                (t / "CMakeLists.txt").unlink(),
                (t / "CMakeLists.txt").symlink_to("/proc/self/mem"),
            ),
            3,
            "cannot read",
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
    p = sdrpc_build(
        "--llama-commit", V5, "--max-name", "160", "--backend", "vulkn", "--dry-run", cache=tmp_path
    )
    assert p.returncode == 4 and "did you mean 'vulkan'" in p.stderr
    p = sdrpc_build("--llama-commit", "abc", cache=tmp_path)
    assert p.returncode == 2 and "40-hex" in p.stderr
    p = sdrpc_build("--llama-commit", V5, "-D", "GGML_MAX_NAME=1", cache=tmp_path)
    assert p.returncode == 2 and "--max-name" in p.stderr
    p = sdrpc_build(cache=tmp_path)  # cwd is not an sd.cpp tree
    assert p.returncode == 3 and "current directory" in p.stderr
    bad = tmp_path / "r.toml"
    bad.write_text('[defines]\nA = "ON"\n[[tool]]\nname = "x"\n')
    p = sdrpc_build(
        "--llama-commit", V5, "--max-name", "160", "--recipe", str(bad), "--dry-run", cache=tmp_path
    )
    assert p.returncode == 4 and "did you mean 'tools'" in p.stderr


def _one_error(p: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    errors = [i for i, ln in enumerate(lines) if ln.startswith("sdrpc-build: error: ")]
    assert len(errors) == 1 and text in lines[errors[0]], p.stderr  # after progress lines
    assert lines[errors[0] + 1 :] == [lines[-1]], p.stderr  # then only the hint
    assert lines[-1].startswith("sdrpc-build: hint: ")
    assert all(len(ln) < 500 for ln in lines) and "Traceback" not in p.stderr


def test_llama_commit_alone_needs_max_name(tmp_path: Path) -> None:
    """ggml's default 64 fits no sd.cpp client: never planned silently."""
    p = sdrpc_build("--llama-commit", V5, "--dry-run", cache=tmp_path)
    _one_error(p, 2, "needs --max-name")
    assert "160" in p.stderr and "--sd-cpp" in p.stderr


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("7", "out of range"),
        ("100", "not a multiple of 16"),
        ("24", "not a multiple of 16"),
        pytest.param("9" * 20, "out of range", id="20-digits"),
        pytest.param("9" * 400, "out of range", id="400-digits"),
        ("²", "not a positive number"),
        ("٣", "not a positive number"),
        ("0160", "not a positive number"),
    ],
)
def test_max_name_values_ggml_cannot_build_are_refused_up_front(
    tmp_path: Path, value: str, text: str
) -> None:
    p = sdrpc_build("--llama-commit", V5, "--max-name", value, cache=tmp_path)
    _one_error(p, 2, text)
    assert "multiple of 16" in p.stderr
    assert not (tmp_path / "sources").exists()  # refused before any fetch or build


@pytest.mark.parametrize("where", ["file", "under-a-file", "too-long", "proc"])
def test_unusable_cache_dir(tmp_path: Path, where: str) -> None:
    if where == "file":
        cache = tmp_path / "cache"
        cache.write_text("")
    elif where == "under-a-file":
        (tmp_path / "f").write_text("")
        cache = tmp_path / "f" / "cache"
    elif where == "too-long":
        cache = tmp_path / ("c" * 100_000)
    else:
        cache = Path("/proc/self/sdrpc-cache")  # not writable, even for root
    p = sdrpc_build(
        "--llama-commit",
        V5,
        "--max-name",
        "160",
        "--llama-repo",
        "file:///nonexistent",
        cache=cache,
    )
    _one_error(p, 9, "cannot use the cache directory")
    assert "--cache-dir" in p.stderr


def test_unusable_sd_cpp_paths(tmp_path: Path) -> None:
    p = sdrpc_build("--sd-cpp", str(tmp_path / ("d" * 100_000)), "--dry-run", cache=tmp_path)
    _one_error(p, 3, "")
    p = sdrpc_build(
        "--sd-cpp", str(tmp_path / ("d" * 100_000)), "--exact", "--dry-run", cache=tmp_path
    )
    _one_error(p, 3, "")


def test_broken_lock_dir_still_serves_a_cache_hit(
    tmp_path: Path, shared_cache: Path, git_build: dict[str, object]
) -> None:
    cache = tmp_path / "c"
    shutil.copytree(shared_cache / "artifacts", cache / "artifacts", symlinks=True)
    (cache / "locks").write_text("not a directory")  # the cache cannot be written
    p = sdrpc_build("--llama-commit", V5, "--max-name", "160", "--json", cache=cache, check=True)
    assert json.loads(p.stdout)["cache_hit"] is True
    p = sdrpc_build("--llama-commit", V5, "--max-name", "160", "--force", cache=cache)
    _one_error(p, 9, "cannot use the cache directory")


def test_missing_tool_is_named(tmp_path: Path) -> None:
    p = sdrpc_build(
        "--llama-commit",
        V5,
        "--max-name",
        "160",
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


def _descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _group_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[2] == str(pgid) and alive(int(d.name)):
                out.append(int(d.name))
    return out


def test_sigterm_stops_every_compile_job_and_keeps_nothing(
    tmp_path: Path, shared_cache: Path, git_build: dict[str, object]
) -> None:
    """SIGTERM (a service manager, kill) ends a cold build like Ctrl-C: exit 143, no job left."""
    cache = tmp_path / "c"
    shutil.copytree(shared_cache / "sources", cache / "sources", symlinks=True)
    proc = subprocess.Popen(
        build_argv(cache, "--llama-commit", V5, "--max-name", "160", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=build_env(CCACHE_DISABLE="1"),  # cold: real compiler jobs
        start_new_session=True,
    )
    compilers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not compilers:
            compilers = [p for p in _descendants(proc.pid) if _comm(p) in ("cc1", "cc1plus", "as")]
            time.sleep(0.05)
        assert compilers, "no compiler job ever started"
        groups = {g for g in map(_pgid, _descendants(proc.pid)) if g is not None}
        assert groups and proc.pid not in groups  # compile jobs run in their own group
        proc.send_signal(signal.SIGTERM)  # the build process only, as `kill PID` does
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err
    assert "sdrpc-build: error: terminated (SIGTERM)" in err and "Traceback" not in err
    assert [g for g in groups if _group_members(g)] == []  # no job outlived the build
    assert not [p for p in compilers if alive(p)]
    arts = cache / "artifacts"
    assert not arts.exists() or not any(arts.iterdir())
    assert not list(cache.rglob("*.sdrpc-tmp-*"))


def test_fetched_source_is_reused_without_network(
    shared_cache: Path, git_build: dict[str, object]
) -> None:
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
