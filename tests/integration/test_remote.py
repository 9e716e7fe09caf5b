"""--sd-ref resolves pins over HTTP(S) like GitHub's API/raw endpoints (served locally)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sdrpc_build.build.remote import RemoteConfig, parse_ref, read_remote_ref
from sdrpc_build.errors import PinsError, SourceError, UsageError

pytestmark = pytest.mark.integration

SD_SHA = "90e87bc8" + "0" * 32
GGML_SHA = "1" * 40


class _Site:
    def __init__(self) -> None:
        self.files: dict[str, tuple[int, bytes]] = {}
        self.hits: list[str] = []
        self.fail_first: dict[str, int] = {}


@pytest.fixture
def site(sd_cpp_tree: Path) -> Iterator[tuple[_Site, RemoteConfig]]:
    st = _Site()
    raw = f"/raw/leejet/stable-diffusion.cpp/{SD_SHA}"
    st.files["/api/repos/leejet/stable-diffusion.cpp/commits/master"] = (
        200,
        json.dumps({"sha": SD_SHA}).encode(),
    )
    st.files[f"/api/repos/leejet/stable-diffusion.cpp/contents/ggml?ref={SD_SHA}"] = (
        200,
        json.dumps(
            {
                "type": "submodule",
                "sha": GGML_SHA,
                "submodule_git_url": "https://github.com/ggml-org/ggml.git",
            }
        ).encode(),
    )
    st.files[f"{raw}/CMakeLists.txt"] = (200, (sd_cpp_tree / "CMakeLists.txt").read_bytes())
    st.files[f"{raw}/.gitmodules"] = (200, (sd_cpp_tree / ".gitmodules").read_bytes())
    g = f"/raw/ggml-org/ggml/{GGML_SHA}"
    st.files[f"{g}/scripts/sync-llama.last"] = (
        200,
        (sd_cpp_tree / "ggml/scripts/sync-llama.last").read_bytes(),
    )
    st.files[f"{g}/include/ggml-rpc.h"] = (
        200,
        (sd_cpp_tree / "ggml/include/ggml-rpc.h").read_bytes(),
    )

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            st.hits.append(self.path)
            left = st.fail_first.get(self.path, 0)
            if left:
                st.fail_first[self.path] = left - 1
                code, body = 503, b"busy"
            else:
                code, body = st.files.get(self.path, (404, b"not found"))
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        # RemoteConfig takes api/raw as text too (__post_init__ parses): the tests use that
        yield st, RemoteConfig(api=base + "/api", raw=base + "/raw", timeout=5, retries=2)  # type: ignore[arg-type]
    finally:
        srv.shutdown()
        srv.server_close()


def test_remote_pins_match_the_tree(site: tuple[_Site, RemoteConfig]) -> None:
    st, cfg = site
    st.fail_first["/api/repos/leejet/stable-diffusion.cpp/commits/master"] = 1  # retried
    pins = read_remote_ref("leejet/stable-diffusion.cpp@master", cfg)
    assert pins.llama_commit.value == "b0f0dd3e516a783b46bb15b20e6a6579367e2ff2"
    assert pins.max_name.value == 128
    assert pins.client_protocol.value == (3, 6, 1)
    assert pins.sd_commit.value == SD_SHA and pins.ggml_commit.value == GGML_SHA
    assert pins.llama_commit.source.endswith("/scripts/sync-llama.last")
    over = read_remote_ref("leejet/stable-diffusion.cpp@master", cfg, max_name=160)
    assert over.max_name.source == "--max-name"


def test_remote_errors(site: tuple[_Site, RemoteConfig]) -> None:
    _st, cfg = site
    with pytest.raises(PinsError, match="not found"):
        read_remote_ref("leejet/stable-diffusion.cpp@nope", cfg)
    with pytest.raises(UsageError):
        parse_ref("leejet/stable-diffusion.cpp")
    dead = RemoteConfig(
        api="http://127.0.0.1:9/api",  # type: ignore[arg-type]
        raw="http://127.0.0.1:9/raw",  # type: ignore[arg-type]
        timeout=1,
        retries=0,
    )
    with pytest.raises(SourceError, match="cannot reach"):
        read_remote_ref("leejet/stable-diffusion.cpp@master", dead)


def test_credentials_in_base_urls_reach_only_the_network(
    site: tuple[_Site, RemoteConfig],
) -> None:
    _st, cfg = site
    base = str(cfg.api).rsplit("/api", 1)[0].replace("http://", "")
    creds = RemoteConfig(
        api=f"http://alice:tokApiX1@{base}/api",  # type: ignore[arg-type]
        raw=f"http://alice:tokRawX2@{base}/raw",  # type: ignore[arg-type]
        timeout=5,
        retries=0,
        token="tokBearerX3",
    )
    pins = read_remote_ref("leejet/stable-diffusion.cpp@master", creds)
    shown = repr(pins) + repr(creds) + str(pins.as_dict())
    for tok in ("tokApiX1", "tokRawX2", "tokBearerX3"):
        assert tok not in shown
    assert pins.sd_commit.source.startswith("http://***@127.0.0.1:")
    dead = RemoteConfig(api="http://alice:tokDeadX4@127.0.0.1:9/api", timeout=1, retries=0)  # type: ignore[arg-type]
    with pytest.raises(SourceError) as ei:
        read_remote_ref("leejet/stable-diffusion.cpp@master", dead)
    assert "tokDeadX4" not in str(ei.value) and "http://***@127.0.0.1:9/api" in str(ei.value)
