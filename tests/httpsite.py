"""A local HTTP site on 127.0.0.1 for tests: static files and a real git smart-HTTP remote.

``/git/<repo>`` is served by ``git http-backend`` (CGI) and, when ``git_auth`` is set,
asks for HTTP Basic credentials like a private GitHub repository. Every request's
``Authorization`` header is recorded, so tests can prove credentials were used.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

__all__ = ["Site", "serve"]


@dataclass
class Site:
    base: str = ""
    files: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    git_root: Optional[Path] = None
    git_auth: Optional[tuple[str, str]] = None  # (user, password) git requests must carry
    auth_seen: list[str] = field(default_factory=list)  # decoded "user:password" / "Bearer x"
    hits: list[str] = field(default_factory=list)


def _decode(header: str) -> str:
    kind, _, value = header.partition(" ")
    if kind.lower() == "basic":
        return base64.b64decode(value).decode(errors="replace")
    return header


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, body: bytes, headers: Optional[dict[str, str]] = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _git(self, body: bytes) -> None:
            assert site.git_root is not None
            auth = self.headers.get("Authorization")
            if site.git_auth is not None:
                want = "Basic " + base64.b64encode(":".join(site.git_auth).encode()).decode()
                if auth != want:
                    self._send(401, b"auth", {"WWW-Authenticate": 'Basic realm="git"'})
                    return
            path, _, query = self.path[len("/git") :].partition("?")
            env = {
                "GIT_PROJECT_ROOT": str(site.git_root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": "127.0.0.1",
                "REMOTE_USER": site.git_auth[0] if site.git_auth else "",
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "PATH": "/usr/bin:/bin:/usr/local/bin",
            }
            out = subprocess.run(
                ["git", "http-backend"], input=body, capture_output=True, env=env, check=False
            ).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = out.partition(b"\n\n")
            code, headers = 200, {}
            for line in head.decode(errors="replace").splitlines():
                k, _, v = line.partition(":")
                if k.lower() == "status":
                    code = int(v.split()[0])
                elif k:
                    headers[k.strip()] = v.strip()
            self._send(code, payload, headers)

        def _handle(self, body: bytes) -> None:
            site.hits.append(self.path)
            if self.headers.get("Authorization"):
                site.auth_seen.append(_decode(self.headers["Authorization"]))
            if self.path.startswith("/git/") and site.git_root is not None:
                self._git(body)
                return
            code, data = site.files.get(self.path, (404, b"not found"))
            self._send(code, data)

        def do_GET(self) -> None:
            self._handle(b"")

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            self._handle(self.rfile.read(n))

        def log_message(self, *_a: object) -> None:
            pass

    return H


@contextmanager
def serve(site: Site) -> Iterator[Site]:
    """Serve ``site`` on 127.0.0.1 (a free port) until the block ends; sets ``site.base``."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    site.base = f"127.0.0.1:{srv.server_address[1]}"
    try:
        yield site
    finally:
        srv.shutdown()
        srv.server_close()
