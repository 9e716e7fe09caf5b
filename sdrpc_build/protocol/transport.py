"""One TCP connection to a ggml RPC server, with sdrpc's time limits: :class:`Connection`.

Bytes go out as given; replies come in through the codec's
:class:`~sdrpc_build.protocol.codec.ReceiveBuffer`, which does all framing and
size checks: this module only moves bytes and keeps time. It never reads more
than the reply it waits for is still missing, so a reply's declared size is
compared with the size the request calls for before any byte of the body is
read, and nothing a peer declares is ever allocated. A big reply's body can go
straight into the caller's memory (:meth:`Connection.read_body`).

Time limits (``timeout`` = T seconds):

* every exchange (request sent, reply read) must complete within
  ``T x (requests + MiB moved)``: T per request, plus T per MiB of data, so a
  peer that drips bytes cannot stall us, while a bulk transfer may take as
  long as a link of 1 MiB per T needs; see :meth:`Connection.exchange_limit`;
* no single socket call waits more than T (a stalled transfer fails after T);
* ``deadline`` (a :func:`time.monotonic` value), when set, bounds everything
  on the connection: every connect, send and read waits at most until then,
  and past it :class:`TooSlow` is raised.

rpc-server has no SIGPIPE protection: if a client hangs up while a request is
still unanswered, the server later writes the reply into a dead socket and is
killed. So a connection with an unanswered request is closed abortively (RST,
``SO_LINGER`` 0), which makes the server's read fail instead.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Union

from sdrpc_build.errors import Closed, Timeout, TooSlow, TransportError, Unreachable
from sdrpc_build.protocol.codec import ReceiveBuffer
from sdrpc_build.protocol.endpoint import format_endpoint

__all__ = [
    "MIB",
    "SNIFF_REQUEST",
    "BufferLike",
    "Closed",
    "Connection",
    "Timeout",
    "TooSlow",
    "TransportError",
    "Unreachable",
    "sniff",
]

_LINGER_RST = struct.pack("ii", 1, 0)
MIB = 1 << 20
_SLACK = 0.005  # seconds: a socket timeout fires at, or a hair before, the time asked for
# Sent on a second connection to a peer that ignored HELLO: any byte back proves
# it is not rpc-server (which never answers a first byte other than HELLO).
SNIFF_REQUEST = b"GET / HTTP/1.0\r\n\r\n"

BufferLike = Union[bytes, bytearray, memoryview]


def _left(until: float) -> float:
    return until - time.monotonic()


def _resolve(host: str, port: int, wait: float) -> list[tuple[int, str]]:
    """``(family, address)`` pairs for ``host``. A name is resolved in a daemon thread,
    so a slow resolver cannot hold us longer than ``wait`` (raises TimeoutError)."""
    try:
        ip = ipaddress.ip_address(host)
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, host)]
    except ValueError:
        pass
    box: list[object] = []

    def work() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            box.append(exc)

    threading.Thread(target=work, name=f"resolve {host}", daemon=True).start()
    deadline = time.monotonic() + wait
    while not box:  # poll: Thread.join(timeout) is not interruptible on every platform
        if _left(deadline) <= 0:
            raise TimeoutError
        time.sleep(min(0.01, max(_left(deadline), 0)))
    found = box[0]
    if isinstance(found, BaseException):
        raise found
    assert isinstance(found, list)
    return [(int(fam), str(addr[0])) for fam, _, _, _, addr in found]


def _open(host: str, port: int, until: float) -> socket.socket:
    """A connected socket to ``host:port`` by ``until``: every address in turn."""
    last: OSError = TimeoutError()
    for family, addr in _resolve(host, port, _left(until)):
        left = _left(until)
        if left <= 0:
            raise TimeoutError
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(left)
            sock.connect((addr, port))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last


def sniff(host: str, port: int, *, timeout: float, deadline: float | None = None) -> bytes | None:
    """Ask a peer that ignored HELLO to say anything: on a new connection send
    :data:`SNIFF_REQUEST` and return the first bytes it sends back, ``b""`` when it
    closes without a byte, ``None`` when nothing came within ``timeout`` (or by
    ``deadline``). The connection is always reset, so an rpc-server that reaches
    it later (a busy one queues it) only sees a failed read."""
    until = time.monotonic() + timeout
    if deadline is not None:
        until = min(until, deadline)
    if _left(until) <= 0:
        return None
    try:
        sock = _open(host, port, until)
    except (OSError, OverflowError, ValueError, UnicodeError):
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        sock.settimeout(max(_left(until), 0.001))
        sock.sendall(SNIFF_REQUEST)
        sock.settimeout(max(_left(until), 0.001))
        return sock.recv(64)
    except TimeoutError:
        return None
    except OSError:
        return b""
    finally:
        sock.close()


class Connection:
    """A TCP connection that sends requests and reads replies within the time limits
    (see the module doc); ``deadline`` (monotonic seconds, optional) bounds it all.

    An exchange is: :meth:`start` (its time limit), :meth:`send`, then
    :meth:`read_reply` per reply (or :meth:`read_header` and :meth:`read_body`
    to stream one), then :meth:`done`. Until then the request counts as
    unanswered, and :meth:`close` resets the connection.
    """

    def __init__(self, *, timeout: float = 3.0, deadline: float | None = None) -> None:
        self.timeout = timeout
        self.deadline = deadline
        self.host = ""
        self.port = 0
        self._sock: socket.socket | None = None
        self._rb = ReceiveBuffer()
        self._outstanding = False  # a request was sent and its reply not fully read
        self._limit = timeout  # seconds allowed for the current exchange (for messages)

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close; abortively (RST) when a request is still unanswered (see module doc)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if self._outstanding:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        finally:
            self._outstanding = False
            sock.close()

    def connect(self, host: str, port: int, timeout: float | None = None) -> Connection:
        """Open the TCP connection (raises :class:`Unreachable`)."""
        if timeout is not None:
            self.timeout = timeout
        self.close()
        self.host, self.port = host, port
        self._rb = ReceiveBuffer()
        where = format_endpoint(host, port)
        wait = self.timeout
        if self.deadline is not None:
            wait = min(wait, _left(self.deadline))
            if wait <= 0:
                raise TooSlow(f"{where}: the deadline passed before connecting")
        try:
            sock = _open(host, port, time.monotonic() + wait)
        except socket.gaierror as exc:
            raise Unreachable(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
        except (ConnectionResetError, ConnectionAbortedError):
            raise Closed(f"{where} accepted and at once reset the connection") from None
        except ConnectionRefusedError:
            raise Unreachable(f"connection refused by {where} (nothing listens there)") from None
        except TimeoutError:
            if self._past_deadline():
                raise TooSlow(f"connecting to {where}: the deadline passed") from None
            raise Unreachable(f"connecting to {where} timed out after {wait:.3g} s") from None
        except (OSError, OverflowError, ValueError, UnicodeError) as exc:
            raise Unreachable(f"cannot connect to {where}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        return self

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # -------------------------------------------------------------- time
    def exchange_limit(self, requests: int = 1, nbytes: int = 0) -> float:
        """Seconds allowed for ``requests`` pipelined requests moving ``nbytes`` in all:
        ``timeout`` per request plus ``timeout`` per MiB."""
        return self.timeout * (requests + nbytes / MIB)

    def start(self, requests: int = 1, nbytes: int = 0) -> float:
        """Begin an exchange; returns the monotonic time it must be done by."""
        self._limit = self.exchange_limit(requests, nbytes)
        return time.monotonic() + self._limit

    def done(self) -> None:
        """Every reply of the exchange was read: the connection is in step again."""
        self._outstanding = False

    def _past_deadline(self) -> bool:
        return self.deadline is not None and _left(self.deadline) <= _SLACK

    def _wait(self, sock: socket.socket, until: float) -> None:
        """Arm the socket for one call: at most ``timeout``, and never past ``until``
        or the deadline (raises :class:`TimeoutError` when no time is left)."""
        left = _left(until)
        if self.deadline is not None:
            left = min(left, _left(self.deadline))
        if left <= 0:
            raise TimeoutError
        sock.settimeout(min(self.timeout, left))

    def _timed_out(self, doing: str, got: int, until: float) -> Timeout:
        """The right :class:`Timeout` for a wait that ran out while ``doing``."""
        where = self.where
        if self._past_deadline():
            return TooSlow(
                f"{doing} {where} was not done when the deadline passed (got {got} bytes)", got
            )
        if _left(until) <= _SLACK:
            return Timeout(
                f"{doing} {where} did not complete within {self._limit:.3g} s (got {got} bytes)",
                got,
            )
        return Timeout(
            f"{doing} {where} stalled: nothing moved for {self.timeout:g} s (got {got} bytes)",
            got,
            stalled=True,
        )

    # -------------------------------------------------------------- bytes
    @property
    def where(self) -> str:
        return format_endpoint(self.host, self.port)

    def _need_sock(self) -> socket.socket:
        if self._sock is None:
            raise TransportError("not connected")
        return self._sock

    def send(self, until: float, *parts: BufferLike) -> None:
        """Send ``parts`` back to back, by ``until``; a request is now unanswered."""
        sock = self._need_sock()
        self._outstanding = True
        sent = 0
        try:
            for part in parts:
                view = memoryview(part).cast("B")
                while view:
                    self._wait(sock, until)
                    n = sock.send(view)
                    view = view[n:]
                    sent += n
        except TimeoutError:
            raise self._timed_out("sending to", sent, until) from None
        except OSError as exc:
            raise Closed(f"{self.where} closed the connection while we sent ({exc})") from None

    def read_reply(self, size: int, what: str, until: float) -> bytes:
        """The next reply's payload, which must declare ``size`` bytes."""
        while (out := self._rb.next_reply(size, what)) is None:
            self._fill(self._rb.missing(size), what, until)
        return out

    def read_header(self, size: int, what: str, until: float) -> None:
        """Streaming: the next reply's header, which must declare ``size`` bytes."""
        while not self._rb.next_header(size, what):
            self._fill(self._rb.missing(), what, until)

    def read_body(self, view: memoryview, what: str, until: float) -> None:
        """Streaming: fill ``view`` with the next bytes of the reply body, straight
        from the socket once the buffer's are used."""
        got = self._rb.take_into(view)
        if got == len(view):
            return
        sock = self._need_sock()
        try:
            while got < len(view):
                self._wait(sock, until)
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise Closed(self._closed_msg(what, got), got)
                got += n
        except TimeoutError:
            raise self._timed_out(f"the {what} from", got, until) from None
        except Closed:
            raise
        except OSError as exc:
            raise Closed(self._closed_msg(what, got) + f" ({exc.strerror or exc})", got) from None

    def _fill(self, want: int, what: str, until: float) -> None:
        """Receive at most ``want`` bytes (what the awaited reply still lacks) into the
        buffer, at least one."""
        sock = self._need_sock()
        got = len(self._rb)
        try:
            self._wait(sock, until)
            data = sock.recv(want)
        except TimeoutError:
            raise self._timed_out(f"the {what} from", got, until) from None
        except OSError as exc:
            raise Closed(self._closed_msg(what, got) + f" ({exc.strerror or exc})", got) from None
        if not data:
            raise Closed(self._closed_msg(what, got), got)
        self._rb.feed(data)

    def _closed_msg(self, what: str, got: int) -> str:
        if got:
            return f"{self.where} closed the connection in the middle of the {what}"
        return f"{self.where} closed the connection instead of sending the {what}"
