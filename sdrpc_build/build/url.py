"""URLs from user input whose credentials are never shown.

Every URL sdrpc takes (``--llama-repo``, ``--github-api``/``--github-raw`` and their
environment variables, a ``.gitmodules`` URL, a URL the GitHub API returns) becomes a
:class:`SecretUrl` where it enters the program. Its ``str()``, ``repr()``, ``format()``
and :meth:`~SecretUrl.to_json` show the URL without the password or token in its
userinfo (``https://***@host/...``) or in secret-looking query parameters; only
:meth:`~SecretUrl.reveal` gives the real URL, for the network call itself.

:func:`redact_text` cleans free text (a git or pip error message, an exception
string) of the credentials of the given URLs and of any ``scheme://user:pw@``.
Pure functions, standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "SecretUrl", "redact_text", "redact_url"]

MASK = "***"
#: userinfo that is a plain account name everyone uses, never a secret
_PUBLIC_USERS = frozenset({"git"})
_SECRET_QUERY = re.compile(
    r"(token|key|secret|passw|pwd|auth|sig|credential|session|signature)", re.IGNORECASE
)
# scheme://userinfo@ anywhere in a text; userinfo stops at '/', whitespace and quotes
_USERINFO_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/\s@'\"<>]+)@")
#: secrets shorter than this are masked only where they sit in a URL's userinfo
_MIN_SECRET = 4


def _mask_userinfo(userinfo: str) -> str:
    return userinfo if userinfo in _PUBLIC_USERS else MASK


def redact_url(raw: str) -> str:
    """``raw`` without the credentials in its userinfo or secret query parameters."""
    if "://" not in raw:
        return raw  # a path, or scp-like user@host:path (no password there)
    try:
        parts = urlsplit(raw)
    except ValueError:  # e.g. a broken IPv6 literal: fall back to the text rule
        return redact_text(raw)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{_mask_userinfo(userinfo)}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_QUERY.search(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*"
            )
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def _secrets_of(raw: str) -> tuple[str, ...]:
    """The secret pieces of a URL in the spellings they may appear in (raw, decoded, quoted)."""
    if "://" not in raw:
        return ()
    try:
        parts = urlsplit(raw)
    except ValueError:
        return ()
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, _, password = userinfo.partition(":")
        found += [userinfo, password]
        if user not in _PUBLIC_USERS:
            found.append(user)
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_QUERY.search(k):
            found.append(v)
    spellings = {s for f in found for s in (f, unquote(f), quote(unquote(f), safe=""))}
    return tuple(sorted((s for s in spellings if s), key=len, reverse=True))


@dataclass(frozen=True, repr=False)
class SecretUrl:
    """A URL or local path as the user gave it; shown everywhere without its credentials."""

    _raw: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> SecretUrl:
        """From user input (an option, an environment variable, a file); trims blanks."""
        return cls(text.strip())

    def reveal(self) -> str:
        """The real URL, credentials included: only for the network call itself."""
        return self._raw

    @property
    def shown(self) -> str:
        return redact_url(self._raw)

    @property
    def has_credentials(self) -> bool:
        return bool(_secrets_of(self._raw))

    def secrets(self) -> tuple[str, ...]:
        """Every spelling of the credentials in this URL (longest first)."""
        return _secrets_of(self._raw)

    def join(self, *parts: str) -> SecretUrl:
        """``base/part/part``: a URL under this one (the credentials carry over)."""
        return SecretUrl("/".join([self._raw.rstrip("/"), *(p.strip("/") for p in parts)]))

    def scrub(self, text: str) -> str:
        """``text`` (an error message that may quote this URL) without its credentials."""
        return redact_text(text, self)

    def to_json(self) -> str:
        return self.shown

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"SecretUrl({self.shown!r})"

    def __format__(self, spec: str) -> str:
        return format(self.shown, spec)


def redact_text(text: str, *urls: SecretUrl, secrets: Iterable[str] = ()) -> str:
    """``text`` without the credentials of ``urls``, the given ``secrets`` and any userinfo."""
    known = [s for u in urls for s in u.secrets()] + [s for s in secrets if s]
    for s in sorted(set(known), key=len, reverse=True):
        if len(s) >= _MIN_SECRET:
            text = text.replace(s, MASK)
    return _USERINFO_IN_TEXT.sub(lambda m: m.group(1) + _mask_userinfo(m.group(2)) + "@", text)
