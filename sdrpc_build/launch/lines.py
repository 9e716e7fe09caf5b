"""Cut a server's output into lines, in linear time and bounded memory.

* ``\\n``, ``\\r\\n`` and a lone ``\\r`` end a line: a driver's ``\\r`` progress bar becomes
  one line per update instead of one line that never ends.
* A line longer than :data:`MAX_LINE` bytes is split into pieces of at most that many bytes
  (on a UTF-8 character boundary), so a server that prints megabytes without a newline costs
  the supervisor no more than many short lines would.
* Bytes are decoded as UTF-8; invalid bytes become U+FFFD.
* A line shown in a tail (a FATAL's last lines, a failed start's) is cut at
  :data:`TAIL_WIDTH` characters by :func:`tail_line`; the log keeps it whole.
"""

from __future__ import annotations

import re

__all__ = ["MAX_LINE", "TAIL_WIDTH", "LineSplitter", "tail_line"]

MAX_LINE = 4096  # bytes
TAIL_WIDTH = 300  # characters of each tail line shown (the log has them whole)
_BREAK = re.compile(rb"\r\n|\r|\n")


def _decode(data: bytes | bytearray | memoryview) -> str:
    return bytes(data).decode("utf-8", errors="replace")


class LineSplitter:
    """Feed bytes as they arrive; get complete lines back. Holds at most ``max_line`` bytes."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 4:
            raise ValueError("max_line must hold a UTF-8 character")
        self.max_line = max_line
        self._buf = bytearray()
        self._cr = False  # the last byte seen was a \r: a \n right after it ends nothing

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back (at most ``max_line``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[str]:
        out: list[str] = []
        pos = 0
        if self._cr and data[:1] == b"\n":
            pos = 1
        self._cr = False
        for m in _BREAK.finditer(data, pos):
            self._buf += data[pos : m.start()]
            self._cut(out)
            out.append(_decode(self._buf))
            self._buf.clear()
            pos = m.end()
        if data.endswith(b"\r"):
            self._cr = True
        self._buf += data[pos:]
        self._cut(out)
        return out

    def finish(self) -> list[str]:
        """The unfinished last line, if any (at EOF)."""
        self._cr = False
        if not self._buf:
            return []
        line = _decode(self._buf)
        self._buf.clear()
        return [line]

    def _cut(self, out: list[str]) -> None:
        """Move full ``max_line`` pieces from the buffer to ``out`` (one copy at the end)."""
        buf = self._buf
        view = memoryview(buf)
        start = 0
        try:
            while len(buf) - start > self.max_line:
                end = start + self.max_line
                # do not split a UTF-8 sequence: back up over continuation bytes (10xxxxxx)
                back = end
                while back > end - 3 and (buf[back] & 0xC0) == 0x80:
                    back -= 1
                end = back if back > start else end
                out.append(_decode(view[start:end]))
                start = end
        finally:
            view.release()
        if start:
            del buf[:start]


def tail_line(text: str) -> str:
    """A server's output line as shown in a tail: at most TAIL_WIDTH characters."""
    if len(text) <= TAIL_WIDTH:
        return text
    return f"{text[:TAIL_WIDTH]}... ({len(text) - TAIL_WIDTH} more characters)"
