"""Start and supervise rpc-server processes (the engine behind ``sdrpc-launch``).

``settings`` (every launch setting declared once: default, flag, servers.toml key, range; the
restart policy) -> ``spec`` (what a server is, argv/env) -> ``config``/``resolve`` (user input
to specs) -> ``supervisor`` (decisions, no I/O; per-server rules in ``state``) -> ``runner``
(the I/O loop, with ``procs``, ``lines``, ``readiness``, ``banner``, ``cache``, ``ports`` and
``private`` for 0600/0700 files). Detached instances: ``detach`` (the waiting side), ``child``
(the detached supervisor's state file and start report), ``instance`` (the state file),
``identity`` (PID + start time), ``status``, ``control`` (stop) and ``activity`` (busy/idle
from a server's log).

launch imports neither the build wing nor the protocol: sdrpc's builds come in as a
``resolve.BuildLocator`` and readiness as a check callable (``readiness``), both made by the
CLI (``cli/launch_wiring.py``); build's verify injects its own check into ``trial_run``.
"""

__all__: list[str] = []
