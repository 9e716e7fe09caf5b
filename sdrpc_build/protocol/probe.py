"""ggml RPC health check: :func:`probe` (HELLO, device inventory, GGML_MAX_NAME).

:func:`probe` never raises for network or protocol faults: it reports them in
:attr:`ProbeResult.status` and :attr:`ProbeResult.problems`. It talks through
:class:`~sdrpc_build.protocol.client.RpcClient`.

Time: every exchange gets ``timeout`` (see :mod:`.transport`), and the whole
probe of one server ends by ``deadline``: by default ``DEADLINE_FACTOR x
timeout`` after it starts. A server still answering then is reported as
``"slow"`` with what was learned so far (version, the devices listed so far).

Silence vs. a foreign service: a peer that accepts but does not answer HELLO
within ``timeout`` is asked again on a second connection with a plain-text
request (:func:`~sdrpc_build.protocol.transport.sniff`). Any reply to that proves
it is not rpc-server (``"not-rpc"``, e.g. an HTTP server waiting for a request
line); no reply at all is ``"busy"`` (rpc-server serving another client queues
new connections unanswered).

GGML_MAX_NAME is not on the wire; it is detected with GET_ALLOC_SIZE, whose
request embeds ``rpc_tensor`` structs of ``232 + GGML_MAX_NAME`` bytes: a server
built with another length checks the request size, hangs up, and has no side
effects. Candidates are tried on throw-away connections: the expected value
first, then 64, 128, 160, 256.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Literal

from sdrpc_build.errors import ProtocolError
from sdrpc_build.protocol.client import DeviceInfo, NotRpcServer, RpcClient
from sdrpc_build.protocol.endpoint import format_endpoint
from sdrpc_build.protocol.layouts import HelloShapeName, Version, format_version
from sdrpc_build.protocol.tensor import RpcTensor, usable_max_name
from sdrpc_build.protocol.transport import Closed, Timeout, TooSlow, Unreachable, sniff

__all__ = [
    "DEADLINE_FACTOR",
    "MAX_DEVICES",
    "NAME_CANDIDATES",
    "ProbeResult",
    "ProbeStatus",
    "probe",
]

NAME_CANDIDATES = (64, 128, 160, 256)
MAX_DEVICES = 64  # devices queried per server; a peer may claim 2**32 - 1
DEADLINE_FACTOR = 3  # a probe ends within this many timeouts, whatever the peer does
ProbeStatus = Literal["ok", "unreachable", "busy", "slow", "not-rpc", "error"]


@dataclass(frozen=True)
class ProbeResult:
    endpoint: str
    host: str
    port: int
    status: ProbeStatus
    protocol: Version | None = None
    max_name: int | None = None
    devices: tuple[DeviceInfo, ...] = ()
    problems: tuple[str, ...] = ()
    hello_shape: HelloShapeName | None = None
    elapsed_s: float = 0.0
    device_count: int | None = None  # what DEVICE_COUNT claimed (``devices`` may be fewer)

    @property
    def reachable(self) -> bool:
        """A TCP connection could be made (the server may still be busy or not RPC)."""
        return self.status != "unreachable"


def _probe_tensor() -> RpcTensor:
    # A 1-element F32 tensor in no buffer: the server only computes its size.
    return RpcTensor.f32(1, name=b"sdrpc-probe")


def _name_candidates(expect: int | None) -> list[int]:
    order = ([expect] if expect else []) + [n for n in NAME_CANDIDATES if n != expect]
    return [n for n in order if usable_max_name(n)]


def _detect_max_name(
    first: RpcClient, timeout: float, expect: int | None, deadline: float
) -> tuple[int | None, list[str], bool]:
    """Try GET_ALLOC_SIZE per candidate name length; a wrong one makes the server hang up.

    Returns the length (or ``None``), problems, and whether the deadline cut it short.
    """
    candidates = _name_candidates(expect)
    shape = first.hello_shape or "caps"
    for i, n in enumerate(candidates):
        try:
            if i == 0:
                client = first  # its inventory is done: the main connection is expendable
                client.use_max_name(n)
            else:
                client = RpcClient(timeout=timeout, max_name=n, deadline=deadline)
                client.connect(first.host, first.port)
            with client:
                if i:
                    client.hello(shape)
                client.get_alloc_size(_probe_tensor())
                return n, [], False
        except TooSlow:
            return None, [f"the GGML_MAX_NAME probe had not finished (stopped at {n})"], True
        except Closed:
            continue
        except (Timeout, Unreachable, ProtocolError) as exc:
            return None, [f"GGML_MAX_NAME probe stopped at {n}: {exc}"], False
    tried = ", ".join(str(n) for n in candidates)
    return None, [f"GGML_MAX_NAME unknown: the server refused every tried length ({tried})"], False


def probe(
    host: str,
    port: int,
    *,
    timeout: float = 3.0,
    expect_max_name: int | None = None,
    detect_max_name: bool = True,
    deadline: float | None = None,
) -> ProbeResult:
    """Check one server: HELLO, device inventory, GGML_MAX_NAME. Never raises for faults.

    ``deadline`` (monotonic) bounds the whole probe; by default it is
    ``DEADLINE_FACTOR * timeout`` from now.
    """
    start = time.monotonic()
    if deadline is None:
        deadline = start + DEADLINE_FACTOR * timeout
    endpoint = format_endpoint(host, port)

    def result(
        status: ProbeStatus,
        *problems: str,
        protocol: Version | None = None,
        max_name: int | None = None,
        devices: tuple[DeviceInfo, ...] = (),
        shape: HelloShapeName | None = None,
        count: int | None = None,
    ) -> ProbeResult:
        return ProbeResult(
            endpoint=endpoint,
            host=host,
            port=port,
            status=status,
            protocol=protocol,
            max_name=max_name,
            devices=devices,
            problems=tuple(problems),
            hello_shape=shape,
            elapsed_s=time.monotonic() - start,
            device_count=count,
        )

    def too_slow(learned: str) -> str:
        return f"did not finish within its {deadline - start:.3g} s deadline; {learned}"

    client = RpcClient(timeout=timeout, deadline=deadline)
    try:
        with contextlib.suppress(Closed):  # accepted, then reset: hello() reconnects
            client.connect(host, port)
        version = client.hello()
    except Unreachable as exc:
        client.close()
        return result("unreachable", str(exc))
    except TooSlow as exc:
        client.close()
        return result("slow", too_slow(f"no complete HELLO reply yet ({exc})"))
    except Timeout as exc:
        client.close()
        if exc.received:
            return result("error", str(exc))
        answer = sniff(host, port, timeout=timeout, deadline=deadline)
        if answer:
            return result(
                "not-rpc",
                f"it ignored HELLO but answered a plain-text request with {answer[:32]!r}",
            )
        return result(
            "busy",
            f"no reply to HELLO within {timeout:g} s: the server is "
            "probably serving another client (rpc-server serves one at a time), "
            "or the port belongs to a service that never answers",
        )
    except NotRpcServer as exc:
        client.close()
        return result("not-rpc", str(exc))
    except (ProtocolError, OSError) as exc:
        client.close()
        return result("error", f"HELLO failed: {exc}")

    proto = version
    problems: list[str] = []
    devices: list[DeviceInfo] = []
    status: ProbeStatus = "ok"
    count: int | None = None
    try:
        count = client.device_count()
        if count > MAX_DEVICES:
            problems.append(
                f"server reports {count} devices; only the first {MAX_DEVICES} were queried"
            )
        for i in range(min(count, MAX_DEVICES)):
            devices.append(client.device_info(i))
    except TooSlow:
        status = "slow"
        listed = (
            "the device count not known yet"
            if count is None
            else f"{len(devices)} of {count} devices listed"
        )
        problems.append(too_slow(f"learned: protocol {format_version(proto)}, {listed}"))
    except (ProtocolError, OSError) as exc:
        status = "error"
        problems.append(f"device inventory failed after HELLO ({format_version(proto)}): {exc}")
    max_name: int | None = None
    if detect_max_name and status == "ok":
        max_name, more, cut = _detect_max_name(client, timeout, expect_max_name, deadline)
        if cut:
            status = "slow"
            more = [
                too_slow(
                    f"learned: protocol {format_version(proto)}, all {len(devices)} devices; "
                    + more[0]
                )
            ]
        problems.extend(more)
    client.close()
    return result(
        status,
        *problems,
        protocol=proto,
        max_name=max_name,
        devices=tuple(devices),
        shape=client.hello_shape,
        count=count,
    )
