"""``sdrpc down``: see :mod:`sdrpc_build.cli.fleet`."""

from __future__ import annotations

import sys

from sdrpc_build.cli.fleet import down_main as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
