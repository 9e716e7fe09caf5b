"""A token planted in every input that takes a URL never appears in any output.

Inputs: --llama-repo (a git smart-HTTP remote asking for Basic credentials),
--github-api / --github-raw and SDRPC_GITHUB_API / SDRPC_GITHUB_RAW (--sd-ref),
GITHUB_TOKEN, the .gitmodules URL of a local sd.cpp tree and of a remote ref, the
submodule URL GitHub's API returns, an --sd-ref given as a URL, and pip's index
URL (PIP_INDEX_URL, for --llama-sdist). Outputs: stdout, stderr, every file under
the cache (build.log, manifest.json, sources with their .git, build dirs, state
and lock files), the wheel output directories and every member of every wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpsite
import pytest
import servers
from procs import free_port

pytestmark = pytest.mark.integration

V5 = servers.LLAMA_SDISTS["0.3.35"][0]
SD_SHA = "90e87bc8" + "0" * 32
GGML_SHA = "1" * 40
TOKENS = {
    "git": "tokGitRepo1111",
    "git_bad": "tokGitWrong2222",
    "git_dead": "tokGitDead3333",
    "api_arg": "tokApiArg4444",
    "raw_arg": "tokRawArg5555",
    "api_env": "tokApiEnv6666",
    "raw_env": "tokRawEnv7777",
    "api_dead": "tokApiDead8888",
    "gh": "tokGithubToken9999",
    "gitmodules_remote": "tokGmRemote0000",
    "submodule_api": "tokSubApi1212",
    "gitmodules_tree": "tokGmTree3434",
    "sd_ref": "tokSdRef5656",
    "pip": "tokPipIndex7878",
}


def _cli(cache: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    e = dict(os.environ)
    e.pop("SDRPC_CACHE_DIR", None)
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "sdrpc_build.cli.build", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=900,
        check=False,
    )
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def site() -> Iterator[httpsite.Site]:
    tree = servers.llama_tree("0.3.35")
    repo = servers.bare_repo("0.3.35")
    st = httpsite.Site(git_root=repo.parent, git_auth=("bob", TOKENS["git"]))
    cm = (
        b'project("stable-diffusion")\nadd_definitions(-DGGML_MAX_NAME=160)\noption(SD_RPC "" ON)\n'
    )
    gm = (
        '[submodule "ggml"]\n\tpath = ggml\n'
        f"\turl = https://carol:{TOKENS['gitmodules_remote']}@github.com/leejet/ggml.git\n"
    ).encode()
    api = "/api/repos/leejet/stable-diffusion.cpp"
    raw = f"/raw/leejet/stable-diffusion.cpp/{SD_SHA}"
    g = f"/raw/leejet/ggml/{GGML_SHA}"
    st.files.update(
        {
            f"{api}/commits/master": (200, json.dumps({"sha": SD_SHA}).encode()),
            f"{api}/commits/broken": (500, b"oops"),
            f"{api}/contents/ggml?ref={SD_SHA}": (
                200,
                json.dumps(
                    {
                        "type": "submodule",
                        "sha": GGML_SHA,
                        "submodule_git_url": (
                            f"https://dave:{TOKENS['submodule_api']}@github.com/leejet/ggml.git"
                        ),
                    }
                ).encode(),
            ),
            f"{raw}/CMakeLists.txt": (200, cm),
            f"{raw}/.gitmodules": (200, gm),
            f"{g}/scripts/sync-llama.last": (200, (V5 + "\n").encode()),
            f"{g}/include/ggml-rpc.h": (200, (tree / "ggml/include/ggml-rpc.h").read_bytes()),
        }
    )
    with httpsite.serve(st):
        yield st


def _sd_tree(root: Path) -> Path:
    """A plain sd.cpp tree whose .gitmodules URL carries a token."""
    sd = root / "sd.cpp"
    (sd / "ggml" / "scripts").mkdir(parents=True)
    (sd / "ggml" / "include").mkdir()
    (sd / "CMakeLists.txt").write_text(
        'project("stable-diffusion")\nadd_definitions(-DGGML_MAX_NAME=160)\n'
    )
    (sd / "ggml" / "scripts" / "sync-llama.last").write_text(V5 + "\n")
    shutil.copy2(
        servers.llama_tree("0.3.35") / "ggml/include/ggml-rpc.h", sd / "ggml/include/ggml-rpc.h"
    )
    (sd / ".gitmodules").write_text(
        '[submodule "ggml"]\n\tpath = ggml\n'
        f"\turl = https://erin:{TOKENS['gitmodules_tree']}@github.com/leejet/ggml.git\n"
    )
    return sd


def _leaks(blob: bytes, where: str) -> list[str]:
    return [f"{name} in {where}" for name, tok in TOKENS.items() if tok.encode() in blob]


def _scan(root: Path) -> list[str]:
    """Tokens in any file under ``root``, and in every member of every wheel there."""
    found: list[str] = []
    for p in root.rglob("*"):
        if p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        found += _leaks(data, str(p))
        if p.suffix == ".whl":
            with zipfile.ZipFile(p) as z:
                for name in z.namelist():
                    found += _leaks(z.read(name), f"{p.name}!{name}")
    return found


def test_no_credential_reaches_any_output(site: httpsite.Site, tmp_path: Path) -> None:
    host = site.base
    dead = f"127.0.0.1:{free_port()}"
    repo = f"http://bob:{TOKENS['git']}@{host}/git/llama.cpp-0.3.35.git"
    api = f"http://alice:{TOKENS['api_arg']}@{host}/api"
    raw = f"http://alice:{TOKENS['raw_arg']}@{host}/raw"
    out_root = tmp_path / "out"  # everything sdrpc writes; the inputs live elsewhere
    cache = out_root / "cache"
    outs: list[tuple[str, int, str, str]] = []

    def run(label: str, *args: str, env: dict[str, str] | None = None, c: Path = cache) -> None:
        outs.append((label, *_cli(c, *args, env=env)))

    ref = "leejet/stable-diffusion.cpp@master"
    gh = {"GITHUB_TOKEN": TOKENS["gh"]}
    # 1. remote pins + a real build fetched over authenticated HTTP + a wheel
    run("sd-ref build", "--sd-ref", ref, "--github-api", api, "--github-raw", raw,
        "--llama-repo", repo, "--wheel", "--out", str(out_root / "dist1"), env=gh)  # fmt: skip
    assert outs[-1][1] == 0, outs[-1]
    # 2. the same through the environment variables: table, JSON plan, cache hit
    env = {
        "SDRPC_GITHUB_API": f"http://alice:{TOKENS['api_env']}@{host}/api",
        "SDRPC_GITHUB_RAW": f"http://alice:{TOKENS['raw_env']}@{host}/raw",
        **gh,
    }
    for extra in (["--dry-run"], ["--dry-run", "--json"], ["--json"], []):
        run(f"env {extra}", "--sd-ref", ref, "--llama-repo", repo, *extra, env=env)
        assert outs[-1][1] == 0, outs[-1]
    # 3. a local tree whose .gitmodules carries a token: pins in the manifest and the wheel
    sd = _sd_tree(tmp_path / "in")
    run("tree build", "--sd-cpp", str(sd), "--llama-repo", repo, "--force", "--wheel",
        "--out", str(out_root / "dist2"))  # fmt: skip
    assert outs[-1][1] == 0, outs[-1]
    run("tree dry-run", "--sd-cpp", str(sd), "--dry-run", "--llama-repo", repo)
    # 4. failures quote the URL: unreachable API, an HTTP error, wrong and dead git remotes
    run("dead api", "--sd-ref", ref, "--github-api",
        f"http://alice:{TOKENS['api_dead']}@{dead}/api", "--github-raw", raw)  # fmt: skip
    assert outs[-1][1] == 5, outs[-1]
    run("http 500", "--sd-ref", "leejet/stable-diffusion.cpp@broken", "--github-api", api,
        "--github-raw", raw)  # fmt: skip
    assert outs[-1][1] == 5, outs[-1]
    bad_repo = f"http://bob:{TOKENS['git_bad']}@{host}/git/llama.cpp-0.3.35.git"
    dead_repo = f"http://bob:{TOKENS['git_dead']}@{dead}/llama.cpp.git"
    for label, url in (("wrong git credentials", bad_repo), ("dead git remote", dead_repo)):
        run(label, "--llama-commit", V5, "--max-name", "160", "--llama-repo", url,
            c=out_root / label.replace(" ", "-"))  # fmt: skip
        assert outs[-1][1] == 5, outs[-1]
    run("sd-ref url", "--sd-ref", f"https://mallory:{TOKENS['sd_ref']}@github.com/a/b@main")
    assert outs[-1][1] == 2, outs[-1]
    pip_env = {
        "PIP_INDEX_URL": f"http://eve:{TOKENS['pip']}@{dead}/simple",
        "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
    }
    run("pip index", "--llama-commit", V5, "--max-name", "160", "--llama-sdist",
        "llama-cpp-python==0.0.1", env=pip_env, c=out_root / "pip")  # fmt: skip
    assert outs[-1][1] == 5, outs[-1]

    # the credentials were really used, for the network calls only
    assert f"bob:{TOKENS['git']}" in site.auth_seen
    assert f"alice:{TOKENS['api_arg']}" in site.auth_seen
    assert f"alice:{TOKENS['api_env']}" in site.auth_seen
    leaks = [x for label, _rc, out, err in outs for x in _leaks((out + err).encode(), label)]
    leaks += _scan(out_root)
    assert leaks == []
    # what a user sees instead
    shown = "\n".join(o[2] + o[3] for o in outs)
    assert "http://***@127.0.0.1" in shown and "https://***@github.com/leejet/ggml.git" in shown
    entries = list((cache / "artifacts").glob("*/manifest.json"))
    assert entries
    m = json.loads(entries[0].read_text())
    assert m["pins"]["ggml_url"]["value"] == "https://***@github.com/leejet/ggml.git"
