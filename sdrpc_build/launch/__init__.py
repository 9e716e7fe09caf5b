"""Start and supervise rpc-server processes (the engine behind ``sdrpc-launch``).

``spec`` (what a server is, argv/env) -> ``config``/``resolve`` (user input to specs; every
number and env pair checked by ``settings``) -> ``supervisor`` (decisions, no I/O; per-server
rules in ``state``) -> ``runner`` (the I/O loop, with ``procs``, ``lines``, ``readiness``,
``banner``, ``cache``, ``ports`` and ``private`` for 0600/0700 files). Detached instances:
``instance`` (the state file), ``identity`` (PID + start time), ``control`` (stop) and
``activity`` (busy/idle from a server's log).
"""

__all__: list[str] = []
