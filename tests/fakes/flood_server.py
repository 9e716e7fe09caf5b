"""A fake rpc-server that floods its output: one huge line without a newline, then it crashes.

    python tests/fakes/flood_server.py [--size 40M] [--progress N] [-H HOST -p PORT ...]

Writes ``--size`` bytes of ``x`` to stdout with no newline (in 64 KiB writes), then ``N``
``\\r``-separated progress updates (a driver's progress bar), then
``error: flood done`` and exits with status 134 (like an abort). It never listens: the
supervisor sees a server that never gets ready and dies. Arguments it does not know (the
ones sdrpc-launch passes to rpc-server) are ignored. Tests only.
"""

from __future__ import annotations

import argparse
import os
import sys

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    unit = text[-1:].upper() if text[-1:].isalpha() else ""
    return int(text[: len(text) - len(unit)]) * _UNITS[unit]


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("--size", type=_size, default=40 << 20)
    p.add_argument("--progress", type=int, default=100)
    args, _ = p.parse_known_args()
    out = sys.stdout.fileno()
    chunk = b"x" * 65536
    left = args.size
    while left > 0:
        n = os.write(out, chunk[: min(left, len(chunk))])
        left -= n
    steps = max(args.progress, 1)
    bar = b"".join(b"\rloading %d%%" % (i * 100 // steps) for i in range(args.progress))
    os.write(out, bar + b"\r\nerror: flood done\n")
    os._exit(134)


if __name__ == "__main__":
    sys.exit(main())
