"""--vulkan-headers auto|PATH end to end: real git fetches over file://, the lab's real Vulkan
headers (Debian trixie's 1.4.309, .ci/vulkan-setup) and its real Vulkan server, sdrpc doctor's
verdict on this machine, and the loud warning a GPU build that lists only the CPU gets.

The cache key holds the headers' content, not their path: the lab's server (built by
tests/vulkan.py with ``--vulkan-headers PATH``) is the cache hit of every real-header case here,
so none of them compiles again. The shared test cache is used for those on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import servers
import vulkan
from filelock import FileLock

from sdrpc_build.build.recipes import load_recipe
from sdrpc_build.build.url import SecretUrl
from sdrpc_build.build.verify import VerifyResult, verify_binary
from sdrpc_build.build.vulkan_headers import (
    PINNED_TAG,
    PINNED_VERSION,
    auto_dir,
    cached_auto,
    content_digest,
    fetch_auto,
    headers_record,
)
from sdrpc_build.errors import SourceError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
V5 = servers.LLAMA_SDISTS["0.3.35"][0]
LAB_PINS = ("--llama-commit", V5, "--max-name", str(vulkan.LAB_MAX_NAME))
LAB_SDIST = ("--llama-sdist", f"llama-cpp-python=={vulkan.LAB_VERSION}")


def core_h(patch: int, minor: int = 4) -> str:
    return (
        f"#define VK_HEADER_VERSION {patch}\n"
        "#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION"
        f"(0, 1, {minor}, VK_HEADER_VERSION)\n"
    )


def headers(root: Path, patch: int = 309, minor: int = 4) -> Path:
    """An include dir with vulkan/vulkan_core.h (and vk_video/) at ``root``."""
    (root / "vulkan").mkdir(parents=True)
    (root / "vulkan" / "vulkan_core.h").write_text(core_h(patch, minor))
    (root / "vk_video").mkdir()
    (root / "vk_video" / "vulkan_video_codecs_common.h").write_text("// codecs\n")
    return root


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def headers_repo(root: Path, tag: str = PINNED_TAG, patch: int = 309) -> tuple[Path, str]:
    """A Vulkan-Headers-like git repository (include/, registry/, LICENSE) tagged ``tag``."""
    headers(root / "include", patch)
    (root / "registry").mkdir()
    (root / "registry" / "vk.xml").write_text("<registry/>\n")
    (root / "LICENSE.md").write_text("Apache-2.0\n")
    git("init", "-q", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "headers", cwd=root)
    git("tag", "-a", tag, "-m", tag, cwd=root)  # annotated, like Khronos' release tags
    return root, git("rev-parse", "HEAD", cwd=root)


# ---------------------------------------------------------------- auto


def test_auto_fetches_the_pinned_tag_header_only_and_reuses_it(tmp_path: Path) -> None:
    repo, commit = headers_repo(tmp_path / "repo")
    url = SecretUrl.parse(repo.as_uri())
    cache = tmp_path / "cache"
    logged: list[str] = []
    h = fetch_auto(cache, url, log=logged.append)
    root = auto_dir(cache, url)
    assert h.include_dir == root / "include"
    assert (h.version, h.source, h.tag, h.commit) == (PINNED_VERSION, "auto", PINNED_TAG, commit)
    assert h.digest == content_digest(repo / "include")
    assert sorted(p.name for p in root.iterdir()) == [
        ".sdrpc-headers.json",
        "LICENSE.md",
        "include",
    ]
    marker = json.loads((root / ".sdrpc-headers.json").read_text())
    assert (marker["tag"], marker["commit"], marker["digest"]) == (PINNED_TAG, commit, h.digest)
    assert logged and PINNED_TAG in logged[-1]
    # reused without the network: the repository may be gone
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    assert fetch_auto(cache, url) == h
    assert cached_auto(cache, url) == h
    record = headers_record(load_recipe("vulkan"), h, (), {})
    assert record is not None
    assert (record["version"], record["source"], record["tag"]) == ("1.4.309", "auto", PINNED_TAG)


def test_a_damaged_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    repo, _ = headers_repo(tmp_path / "repo")
    url = SecretUrl.parse(str(repo))  # a plain path works like --llama-repo PATH
    cache = tmp_path / "cache"
    h = fetch_auto(cache, url)
    (h.include_dir / "vulkan" / "vulkan_core.h").write_text(core_h(309) + "// edited\n")
    assert cached_auto(cache, url) is None  # the digest no longer matches
    again = fetch_auto(cache, url)
    assert again.digest == h.digest
    assert "edited" not in (again.include_dir / "vulkan" / "vulkan_core.h").read_text()


def test_auto_refuses_a_repository_without_the_tag_or_with_other_headers(
    tmp_path: Path,
) -> None:
    repo, _ = headers_repo(tmp_path / "old", tag="v1.3.239", patch=239)
    with pytest.raises(SourceError, match=f"tag {PINNED_TAG} is not available") as info:
        fetch_auto(tmp_path / "c", SecretUrl.parse(repo.as_uri()), retries=1)
    assert "--vulkan-headers-repo" in (info.value.hint or "")
    liar, _ = headers_repo(tmp_path / "liar", tag=PINNED_TAG, patch=239)
    with pytest.raises(SourceError, match="has Vulkan headers 1.4.239, not 1.4.309"):
        fetch_auto(tmp_path / "c", SecretUrl.parse(liar.as_uri()), retries=1)
    assert not any((tmp_path / "c" / "vulkan-headers").glob(f"{PINNED_TAG}-*/include"))


def test_auto_never_shows_the_credentials_of_its_url(tmp_path: Path) -> None:
    url = SecretUrl.parse("http://user:s3cr3t-token@127.0.0.1:9/Vulkan-Headers.git")
    with pytest.raises(SourceError) as info:
        fetch_auto(tmp_path / "c", url, retries=1)
    text = f"{info.value.message} {info.value.hint} {info.value.details}"
    assert "s3cr3t-token" not in text and "***@127.0.0.1" in text
    assert "s3cr3t" not in str(auto_dir(tmp_path / "c", url))


# ---------------------------------------------------------------- the lab's real headers


def sdrpc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sdrpc-build ARGS`` (or ``sdrpc ARGS`` when the first is ``doctor``), this checkout."""
    module = "sdrpc_build.cli.main" if args[:1] == ("doctor",) else "sdrpc_build.cli.build"
    e = dict(env if env is not None else os.environ)
    e.pop("SDRPC_CACHE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=e,
        timeout=900,
        check=False,
    )


def lab_build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """sdrpc-build of the lab's server (same pins, sdist, --portable and cache as
    tests/vulkan.py)."""
    cache = servers.sdrpc_cache()
    return sdrpc(
        *LAB_PINS,
        *LAB_SDIST,
        *("--backend", "vulkan", "--portable", "--cache-dir", str(cache)),
        *args,
        env=env,
    )


@pytest.fixture(scope="module")
def lab_server() -> Path:
    return vulkan.vulkan_server()  # built with --vulkan-headers <the lab's include dir>


@pytest.fixture(scope="module")
def lab_key(lab_server: Path) -> str:
    return lab_server.parent.parent.name  # <artifacts>/<key>/bin/<server>


def lab_headers_repo() -> Path:
    """The lab's headers as a Vulkan-Headers git repository tagged like the pinned release,
    at a fixed place in the test cache (made once)."""
    include = vulkan.headers_include()
    repo = vulkan.lab_root() / f"Vulkan-Headers-{PINNED_TAG}"
    with FileLock(str(vulkan.lab_root() / "headers-repo.lock")):
        if not (repo / ".complete").exists():
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(include, repo / "include", symlinks=True)
            git("init", "-q", cwd=repo)
            git("add", "include", cwd=repo)
            git("commit", "-q", "-m", f"Vulkan-Headers {PINNED_TAG} (Debian trixie)", cwd=repo)
            git("tag", "-a", PINNED_TAG, "-m", PINNED_TAG, cwd=repo)
            (repo / ".complete").write_text("ok\n")
    return repo


def test_auto_with_the_lab_headers_is_the_labs_build(lab_key: str, lab_server: Path) -> None:
    """--vulkan-headers auto against a file:// mirror of the headers: fetched (every run: the
    test drops its own cache entry first), verified, keyed by content: the lab's build."""
    repo = lab_headers_repo()
    url = SecretUrl.parse(repo.as_uri())
    cache = servers.sdrpc_cache()
    entry = auto_dir(cache, url)
    with FileLock(str(vulkan.lab_root() / "headers-repo.lock")):
        shutil.rmtree(entry, ignore_errors=True)  # this test's own entry (its own URL)
        dry = lab_build(
            "--vulkan-headers", "auto", "--vulkan-headers-repo", url.reveal(), "--dry-run", "--json"
        )
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["plan"]["defines"]["Vulkan_INCLUDE_DIR"] == str(entry / "include")
        assert not any("cannot be built" in n for n in plan["notes"]), plan["notes"]
        assert any(f"fetched from {url}" in n for n in plan["notes"]), plan["notes"]
        run = lab_build("--vulkan-headers", "auto", "--vulkan-headers-repo", url.reveal(), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert (doc["key"], doc["cache_hit"]) == (lab_key, True)
    assert doc["binary"] == str(lab_server)
    got = cached_auto(cache, url)
    assert got is not None and got.include_dir == entry / "include"
    assert got.digest == content_digest(vulkan.headers_include())
    marker = json.loads((entry / ".sdrpc-headers.json").read_text())
    assert marker["commit"] == git("rev-parse", "HEAD", cwd=repo)
    assert marker["origin"] == str(url)
    manifest = json.loads(Path(doc["manifest"]).read_text())
    used = manifest["vulkan_headers"]
    # the build that made the entry used these very headers (this PATH or this auto fetch)
    assert (used["version"], used["digest"]) == ("1.4.309", got.digest), used
    assert used["source"] in ("path", "auto"), used


def test_path_forms_are_the_labs_build(lab_key: str) -> None:
    include = vulkan.headers_include()
    for given in (include, include.parent):  # the include dir; a checkout/SDK layout
        run = lab_build("--vulkan-headers", str(given), "--json")
        assert run.returncode == 0, run.stderr
        doc = json.loads(run.stdout)
        assert (doc["key"], doc["cache_hit"]) == (lab_key, True)
    dry = lab_build("--vulkan-headers", str(include.parent), "--dry-run", "--json")
    assert json.loads(dry.stdout)["plan"]["defines"]["Vulkan_INCLUDE_DIR"] == str(include)
    # SDK users: $VULKAN_SDK works as the PATH
    env = {**os.environ, "VULKAN_SDK": str(include.parent)}
    run = lab_build("--vulkan-headers", env["VULKAN_SDK"], "--json", env=env)
    assert json.loads(run.stdout)["key"] == lab_key, run.stderr


def test_too_old_path_is_refused_before_anything_is_fetched(tmp_path: Path) -> None:
    old = headers(tmp_path / "old" / "include", patch=239, minor=3)
    cache = tmp_path / "cache"
    run = sdrpc(
        *LAB_PINS,
        "--backend",
        "vulkan",
        "--vulkan-headers",
        str(old.parent),
        "--llama-repo",
        (tmp_path / "no-repo").as_uri(),
        "--cache-dir",
        str(cache),
    )
    assert run.returncode == 6, run.stderr
    assert "vulkan-headers 1.3.239 < 1.3.272" in run.stderr
    assert "sdrpc-build: hint: pass --vulkan-headers auto to sdrpc-build" in run.stderr
    assert not (cache / "sources").exists()
    bad = sdrpc(
        *LAB_PINS,
        "--backend",
        "vulkan",
        "--vulkan-headers",
        str(tmp_path / "none"),
        "--cache-dir",
        str(cache),
    )
    assert bad.returncode == 2, bad.stderr
    assert "sdrpc-build: error: --vulkan-headers" in bad.stderr and "Traceback" not in bad.stderr


def test_doctor_says_buildable_with_auto_headers_on_this_machine(tmp_path: Path) -> None:
    """Debian 12: glslc, libvulkan-dev, spirv-headers and git are there, the headers are
    1.3.239: doctor says "buildable with --vulkan-headers auto", and so does the build."""
    vulkan.require_setup()  # the packages .ci/vulkan-setup installs
    doc = json.loads(sdrpc("doctor", "--json", "--backend", "vulkan").stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert all(checks[n]["ok"] for n in ("glslc", "libvulkan", "spirv-headers", "git")), checks
    if checks["vulkan-headers"]["ok"]:
        pytest.fail(f"this machine's Vulkan headers are new enough: {checks['vulkan-headers']}")
    assert "1.3.239 < 1.3.272" in checks["vulkan-headers"]["detail"]  # Debian 12's
    assert doc["buildable_with"] == {"vulkan": "--vulkan-headers auto"}
    (b,) = doc["backends"]
    assert (b["buildable"], b["buildable_with"]) == (False, "--vulkan-headers auto")
    table = sdrpc("doctor", "--backend", "vulkan")
    assert "buildable with --vulkan-headers auto" in table.stdout, table.stdout
    assert "sdrpc doctor: hint: pass --vulkan-headers auto to sdrpc-build" in table.stderr
    # the build without the option stops before configure and names it too
    run = sdrpc(
        *LAB_PINS,
        "--backend",
        "vulkan",
        "--cache-dir",
        str(tmp_path / "c"),
        "--llama-repo",
        (tmp_path / "no-repo").as_uri(),
    )
    assert run.returncode == 6 and "--vulkan-headers auto" in run.stderr, run.stderr


# ---------------------------------------------------------------- what verification sees


def test_verify_sees_what_the_launch_environment_shows(lab_server: Path) -> None:
    """Verification runs the server with the environment it is given: the lab's three
    lavapipe devices with it; only the CPU without GGML_VK_VISIBLE_DEVICES (flagged)."""
    lab = {**os.environ, **vulkan.lavapipe_env(3)}

    def verify(env: dict[str, str]) -> VerifyResult:
        return verify_binary(
            lab_server,
            max_name=160,
            tree_protocol=(5, 0, 0),
            client_protocol=None,
            device_prefix="Vulkan",
            env=env,
            visible_devices_env="GGML_VK_VISIBLE_DEVICES",
        )

    seen = verify(lab)
    assert seen.ok and seen.devices[:3] == ("Vulkan0", "Vulkan1", "Vulkan2"), seen
    assert not seen.cpu_only and seen.warnings == ()
    cpu = verify({k: v for k, v in lab.items() if k != "GGML_VK_VISIBLE_DEVICES"})
    assert cpu.ok and cpu.devices == ("CPU",) and cpu.cpu_only, cpu
    assert any("GGML_VK_VISIBLE_DEVICES" in w for w in cpu.warnings), cpu.warnings


#: a "Vulkan" recipe that builds without GGML_VULKAN: its server lists only the CPU, as a real
#: Vulkan build does where the environment hides every Vulkan device (a real CPU build)
CPU_ONLY_VULKAN = b"""description = "a Vulkan build that finds no Vulkan device (test)"
platforms = ["linux"]
device_prefix = "Vulkan"
visible_devices_env = "GGML_VK_VISIBLE_DEVICES"
[defines]
GGML_VULKAN = "OFF"
"""


def test_build_that_lists_only_the_cpu_is_warned_loudly(tmp_path: Path) -> None:
    """sdrpc-build's own verification: the framed warning on stderr, and the manifest records
    the Vulkan environment verification used (names and values, never secrets)."""
    recipe = tmp_path / "vulkan.toml"  # the file name is the recipe name
    recipe.write_bytes(CPU_ONLY_VULKAN)
    icd = "/nonexistent/icd.json"
    env = {
        **os.environ,
        "VK_ICD_FILENAMES": icd,
        "GGML_VK_VISIBLE_DEVICES": "0",
        "MESA_SECRET_TOKEN": "hunter2hunter2",
    }
    # a cache of its own (never a "vulkan" build in the shared one): built and verified each
    # run, a few seconds once ccache holds the CPU objects of the other tests' servers
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    sdist = servers.sdist_path("llama-cpp-python", vulkan.LAB_VERSION)
    shutil.copy2(sdist, cache / "downloads" / sdist.name)
    run = sdrpc(
        *LAB_PINS, *LAB_SDIST, "--recipe", str(recipe), "--json", "--cache-dir", str(cache), env=env
    )
    assert run.returncode == 0, run.stderr
    frame = [ln for ln in run.stderr.splitlines() if ln.startswith("sdrpc-build: WARNING: ")]
    assert len(frame) == 3, run.stderr
    assert frame[1].startswith("sdrpc-build: WARNING: ONLY THE CPU: no Vulkan device listed")
    assert "GGML_VK_VISIBLE_DEVICES" in frame[1]
    doc = json.loads(run.stdout)
    assert any(w.startswith("ONLY THE CPU") for w in doc["warnings"])
    manifest = json.loads(Path(doc["manifest"]).read_text())
    assert manifest["verify"]["cpu_only"] is True
    assert manifest["verify_env"]["VK_ICD_FILENAMES"] == icd
    assert manifest["verify_env"]["GGML_VK_VISIBLE_DEVICES"] == "0"
    assert "hunter2" not in Path(doc["manifest"]).read_text()
    assert headers_record(load_recipe("cpu"), None, (), os.environ) is None
