"""sdrpc-build's Vulkan options: ``--vulkan-headers auto|PATH``, ``--vulkan-headers-repo URL``."""

from __future__ import annotations

import argparse
from typing import Optional

from sdrpc_build.build.url import SecretUrl
from sdrpc_build.build.vulkan_headers import (
    AUTO,
    DEFAULT_HEADERS_REPO,
    PINNED_TAG,
    HeadersChoice,
)
from sdrpc_build.errors import UsageError

__all__ = ["add_vulkan_options", "headers_choice"]


def add_vulkan_options(p: argparse.ArgumentParser) -> None:
    v = p.add_argument_group("Vulkan (--backend vulkan)")
    v.add_argument(
        "--vulkan-headers",
        metavar="auto|PATH",
        help="Vulkan headers to build with: PATH is an include dir, a Vulkan-Headers checkout "
        f"or an SDK ($VULKAN_SDK); 'auto' fetches Vulkan-Headers {PINNED_TAG} (for systems "
        "whose headers are too old: Debian 12, Ubuntu 22.04)",
    )
    v.add_argument(
        "--vulkan-headers-repo",
        type=SecretUrl.parse,
        default=DEFAULT_HEADERS_REPO,
        metavar="URL|PATH",
        help="git URL or path --vulkan-headers auto fetches from (default: %(default)s)",
    )


def headers_choice(args: argparse.Namespace) -> Optional[HeadersChoice]:
    """The ``--vulkan-headers`` choice; ``--vulkan-headers-repo`` alone is a usage error."""
    value: Optional[str] = args.vulkan_headers
    if value is None:
        if args.vulkan_headers_repo is not DEFAULT_HEADERS_REPO:
            raise UsageError(
                "--vulkan-headers-repo is only used with --vulkan-headers auto",
                hint="add --vulkan-headers auto",
            )
        return None
    if not value.strip():
        raise UsageError(
            "--vulkan-headers needs 'auto' or a path", hint="e.g. --vulkan-headers auto"
        )
    if value.strip().lower() == AUTO:
        return HeadersChoice(AUTO, args.vulkan_headers_repo)
    return HeadersChoice(value, args.vulkan_headers_repo)
