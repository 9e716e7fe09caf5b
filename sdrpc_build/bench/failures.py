"""How a server fails a benchmark: :class:`BenchError`, with a hint per kind of failure.

:func:`failure` turns what went wrong during a step (a closed connection, the
server's deadline, a stalled or crawling transfer, a protocol fault) into a
:class:`BenchError`; :func:`probe_or_fail` refuses a server that cannot be
benchmarked (busy, too slow, unreachable, not compatible, GGML_MAX_NAME unknown).
"""

from __future__ import annotations

from sdrpc_build.bench.options import DEADLINE_FACTOR
from sdrpc_build.errors import BenchError, Closed, Timeout, TooSlow
from sdrpc_build.protocol.probe import ProbeResult, probe

__all__ = ["BenchError", "failure", "probe_or_fail"]


def failure(
    endpoint: str, doing: str, exc: BaseException, deadline_s: float | None = None
) -> BenchError:
    """The :class:`BenchError` for ``exc``, raised while ``doing`` something with
    ``endpoint`` (``deadline_s``: the server's deadline, named when it passed)."""
    detail = str(exc)
    if detail.startswith(endpoint + " "):
        detail = detail[len(endpoint) + 1 :]
    if isinstance(exc, Closed):
        return BenchError(
            f"{endpoint}: the server closed the connection during {doing} ({detail})",
            hint="the server crashed, was stopped, or refused the request; look at its output",
        )
    if isinstance(exc, TooSlow):
        limit = "" if deadline_s is None else f"{deadline_s:g} s "
        return BenchError(
            f"{endpoint}: too slow: its {limit}deadline passed during {doing} ({detail})",
            hint=f"each server gets at most {DEADLINE_FACTOR} x --timeout in all; "
            "use fewer or smaller --sizes, or a larger --timeout on slow links",
        )
    if isinstance(exc, Timeout):
        what = "no progress" if exc.stalled else "too slow"
        return BenchError(
            f"{endpoint}: {what} during {doing} ({detail})",
            hint="every request gets --timeout seconds, plus as many per MiB it moves; "
            "the server or the link stalled or crawled; try a larger --timeout on slow links",
        )
    return BenchError(
        f"{endpoint}: {doing} failed: {detail}",
        hint="run sdrpc-check on this endpoint to see whether the server is compatible",
    )


def probe_or_fail(host: str, port: int, timeout: float, deadline: float) -> ProbeResult:
    result = probe(host, port, timeout=timeout, deadline=deadline)
    where = result.endpoint
    detail = "; ".join(result.problems) or result.status
    if result.status == "busy":
        raise BenchError(
            f"{where} is busy: {detail}",
            hint="rpc-server serves one client at a time; stop the other client first",
        )
    if result.status == "slow":
        raise BenchError(
            f"{where}: too slow: {detail}",
            hint="the server answers, but too slowly; try a larger --timeout on slow links",
        )
    if result.status == "unreachable":
        raise BenchError(
            f"{where}: {detail}",
            hint="check the address, and that rpc-server runs there with -H set to an "
            "address this machine can reach (it listens on 127.0.0.1 by default)",
        )
    if result.status != "ok" or result.protocol is None:
        raise BenchError(f"{where}: {detail}", hint="run sdrpc-check on it for details")
    if result.max_name is None:
        raise BenchError(
            f"{where}: could not tell the server's GGML_MAX_NAME ({detail})",
            hint="a tensor upload with the wrong name length crashes the server; "
            "run sdrpc-check on it",
        )
    return result
