"""Capture golden request/reply bytes from a real rpc-server (raw struct, no sdrpc codec).

    python tests/golden/capture.py 0.3.36 64    # builds/uses the cached server, writes JSON

Each step records the exact request bytes sent and the exact reply frame received
(``u64 size | data``), or ``null`` for commands without a reply in that version.
The file is named after the protocol version the server reports (``v7-n64.json``).
The layouts here are written out independently of sdrpc's codec (the test oracle):
a new protocol version that changes one of these messages changes it here too.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))


def tensor(max_name: int, *, n: int, buffer: int = 0, data: int = 0, name: bytes = b"") -> bytes:
    head = struct.pack(
        "<QIQ4I4II16ii10QQQQ",
        1,
        0,
        buffer,
        n,
        1,
        1,
        1,
        4,
        4 * n,
        4 * n,
        4 * n,
        0,
        *([0] * 16),
        0,
        *([0] * 10),
        0,
        0,
        data,
    )
    return head + name.ljust(max_name, b"\0") + b"\0\0\0\0"


def req(cmd: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BQ", cmd, len(payload)) + payload


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def capture(port: int, max_name: int) -> tuple[tuple[int, int, int], list[dict[str, Any]]]:
    steps: list[dict[str, Any]] = []
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.settimeout(5)

    def step(name: str, request: bytes, reply: bool = True) -> bytes | None:
        s.sendall(request)
        frame = None
        if reply:
            head = recv_exact(s, 8)
            frame = head + recv_exact(s, struct.unpack("<Q", head)[0])
        steps.append(
            {
                "name": name,
                "request": request.hex(),
                "reply": frame.hex() if frame is not None else None,
            }
        )
        return frame[8:] if frame is not None else None

    hello = step("hello_caps", req(14, bytes(24)))
    assert hello is not None and len(hello) == 28, "a HELLO-v4+ (caps) server is needed"
    version = (hello[0], hello[1], hello[2])
    v6 = version >= (6, 0, 0)  # FREE_BUFFER, BUFFER_CLEAR: no reply
    v7 = version >= (7, 0, 0)  # SET_TENSOR: u8 cache flag after the tensor
    step("device_count", req(15))
    step("get_device_memory", req(11, struct.pack("<I", 0)))
    step("get_alignment", req(1, struct.pack("<I", 0)))
    step("get_max_size", req(2, struct.pack("<I", 0)))
    probe = tensor(max_name, n=1, name=b"sdrpc-probe")
    step("get_alloc_size", req(13, struct.pack("<I", 0) + probe + bytes(len(probe)) * 10))
    alloc = step("alloc_buffer", req(0, struct.pack("<IQ", 0, 4096)))
    assert alloc is not None
    ptr = struct.unpack("<QQ", alloc)[0]
    base_b = step("buffer_get_base", req(3, struct.pack("<Q", ptr)))
    assert base_b is not None
    base = struct.unpack("<Q", base_b)[0]
    t = tensor(max_name, n=4, buffer=ptr, data=base)
    data = bytes(range(16))
    step("set_tensor", req(6, t + (b"\0" if v7 else b"") + struct.pack("<Q", 0) + data), False)
    step("get_tensor", req(8, t + struct.pack("<QQ", 0, 16)))
    step("buffer_clear", req(5, struct.pack("<QB", ptr, 0)), not v6)
    step("get_tensor_cleared", req(8, t + struct.pack("<QQ", 0, 16)))
    step("free_buffer", req(4, struct.pack("<Q", ptr)), not v6)
    step("device_count_again", req(15))
    s.close()
    return version, steps


def main(version: str, max_name: int) -> Path:
    import servers
    from procs import free_port, wait_accepting

    binary = servers.build_server(version, max_name)
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_accepting(port, proc)
        time.sleep(0.1)
        v, steps = capture(port, max_name)
    finally:
        proc.kill()
        proc.wait(10)
    out = HERE / f"v{v[0]}-n{max_name}.json"
    doc = {
        "sdist": f"llama-cpp-python {version}",
        "protocol": list(v),
        "max_name": max_name,
        "steps": steps,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return out


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2])))
