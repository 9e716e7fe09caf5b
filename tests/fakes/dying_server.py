"""A fake v5 ggml RPC server process that dies (or stalls) in the middle of an upload.

    python tests/fakes/dying_server.py [--mode die|stall] [--after BYTES]

Binds 127.0.0.1 on a free port, prints the port on stdout (one line), and serves
connections one at a time like rpc-server: HELLO (5.0.0, caps form), one CPU
device, GGML_MAX_NAME 64 (GET_ALLOC_SIZE with any other tensor size closes the
connection, as the real server does), ALLOC_BUFFER / BUFFER_GET_BASE /
GET_TENSOR / FREE_BUFFER / GET_DEVICE_MEMORY. On the first SET_TENSOR whose data
is larger than ``--after`` bytes it reads ``--after`` bytes of it, then

* ``die``: exits at once (``os._exit(134)``, like a GGML_ASSERT abort);
* ``stall``: stops reading and sleeps until killed (a hung server).

Raw ``struct`` only: it does not use sdrpc's codec. Tests only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import sys
import time

MAX_NAME = 64
TENSOR = 232 + MAX_NAME
FREE = 8 << 30
BASE = 0x7F0000000000
DEVICE_CMDS = {1: 8, 2: 8, 11: 16}  # GET_ALIGNMENT, GET_MAX_SIZE, GET_DEVICE_MEMORY


def _exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("client went away")
        buf += chunk
    return bytes(buf)


def _reply(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack("<Q", len(payload)) + payload)


def serve(sock: socket.socket, mode: str, after: int) -> None:
    cmd, size = struct.unpack("<BQ", _exact(sock, 9))
    if cmd != 14 or size != 24:
        return
    _exact(sock, 24)
    _reply(sock, bytes([5, 0, 0, 0]) + bytes(24))
    buffers: dict[int, int] = {}
    memory = bytearray()  # one address space from BASE: what was uploaded
    while True:
        cmd, size = struct.unpack("<BQ", _exact(sock, 9))
        if cmd == 6 and size - TENSOR - 8 > after:  # SET_TENSOR: take part, then fail
            _exact(sock, TENSOR + 8 + after)
            if mode == "die":
                os._exit(134)
            while True:
                time.sleep(1)
        body = _exact(sock, size) if cmd != 6 else None
        if cmd == 6:  # small upload: tensor, u64 offset, data; no reply in v5
            msg = _exact(sock, size)
            (data_ptr,) = struct.unpack_from("<Q", msg, 220)
            (offset,) = struct.unpack_from("<Q", msg, TENSOR)
            start = data_ptr - BASE + offset
            chunk = msg[TENSOR + 8 :]
            if len(memory) < start + len(chunk):
                memory.extend(bytes(start + len(chunk) - len(memory)))
            memory[start : start + len(chunk)] = chunk
        elif cmd == 15:  # DEVICE_COUNT
            _reply(sock, struct.pack("<I", 1))
        elif cmd in DEVICE_CMDS:
            value = {1: struct.pack("<Q", 32), 2: struct.pack("<Q", 1 << 40)}.get(
                cmd, struct.pack("<QQ", FREE, FREE)
            )
            _reply(sock, value)
        elif cmd == 13:  # GET_ALLOC_SIZE: u32 dev, tensor, srcs[10]
            if size != 4 + 11 * TENSOR:
                return  # wrong GGML_MAX_NAME: hang up, like rpc-server
            _reply(sock, struct.pack("<Q", 4))
        elif cmd == 0 and body is not None:  # ALLOC_BUFFER: u32 dev, u64 size
            _, n = struct.unpack("<IQ", body)
            ptr = 0x1000 + 0x100 * len(buffers)
            buffers[ptr] = n
            _reply(sock, struct.pack("<QQ", ptr, n))
        elif cmd == 3:  # BUFFER_GET_BASE
            _reply(sock, struct.pack("<Q", BASE))
        elif cmd == 4 and body is not None:  # FREE_BUFFER (has a reply before v6)
            buffers.pop(struct.unpack("<Q", body)[0], None)
            _reply(sock, b"")
        elif cmd == 8 and body is not None:  # GET_TENSOR: tensor, u64 offset, u64 size
            offset, n = struct.unpack_from("<QQ", body, TENSOR)
            (data_ptr,) = struct.unpack_from("<Q", body, 220)
            start = data_ptr - BASE + offset
            _reply(sock, bytes(memory[start : start + n]).ljust(n, b"\0"))
        else:
            return


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("die", "stall"), default="die")
    p.add_argument("--after", type=int, default=256 << 10)
    args = p.parse_args()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    print(ls.getsockname()[1], flush=True)
    deadline = time.monotonic() + 120  # never outlive a test run by much
    ls.settimeout(1)
    while time.monotonic() < deadline:
        try:
            conn, _ = ls.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(30)
            with contextlib.suppress(ConnectionError, OSError):
                serve(conn, args.mode, args.after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
