from __future__ import annotations

import json

import pytest

from sdrpc_build.build.url import SecretUrl, redact_text, redact_url

TOKEN = "ghp_SECRET2xyz"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (f"http://alice:{TOKEN}@127.0.0.1:54998/api", "http://***@127.0.0.1:54998/api"),
        (f"https://{TOKEN}@github.com/o/r.git", "https://***@github.com/o/r.git"),
        (f"https://x-access-token:{TOKEN}@github.com/o/r", "https://***@github.com/o/r"),
        ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("file:///srv/llama.cpp.git", "file:///srv/llama.cpp.git"),
        ("/home/me/llama.cpp", "/home/me/llama.cpp"),
        (f"https://h/simple?access_token={TOKEN}&x=1", "https://h/simple?access_token=***&x=1"),
        ("https://h/contents/ggml?ref=abc", "https://h/contents/ggml?ref=abc"),
        (f"http://[::1:{TOKEN}@h/x", "http://***@h/x"),  # not parseable: the text rule
    ],
)
def test_redact_url(raw: str, shown: str) -> None:
    assert redact_url(raw) == shown
    assert TOKEN not in redact_url(raw)


def test_secret_url_never_shows_its_token() -> None:
    u = SecretUrl.parse(f"  http://alice:{TOKEN}@127.0.0.1:9/api/  ")
    assert u.reveal() == f"http://alice:{TOKEN}@127.0.0.1:9/api/"
    shown = (str(u), repr(u), f"{u}", f"{u:>60}", f"{u!s:<10}", u.to_json(), repr([u]))
    for text in shown:
        assert TOKEN not in text and "alice" not in text, text
    assert u.has_credentials
    with pytest.raises(TypeError):
        json.dumps(u)  # never serialised by accident
    sub = u.join("repos", "o", "r", "commits/master")
    assert sub.reveal() == f"http://alice:{TOKEN}@127.0.0.1:9/api/repos/o/r/commits/master"
    assert str(sub) == "http://***@127.0.0.1:9/api/repos/o/r/commits/master"
    assert not SecretUrl("https://github.com/ggml-org/llama.cpp.git").has_credentials


def test_redact_text_scrubs_known_secrets_and_any_userinfo() -> None:
    u = SecretUrl(f"https://bob:{TOKEN}@example.com/r.git")
    msg = (
        f"fatal: unable to access 'https://bob:{TOKEN}@example.com/r.git/': 403\n"
        f"token was {TOKEN} (quoted: ghp_SECRET2xyz)\n"
        "see http://eve:pw@10.0.0.1/simple"
    )
    out = u.scrub(msg)
    assert TOKEN not in out and "pw@" not in out and "eve" not in out
    assert "https://***@example.com/r.git/" in out
    assert redact_text("GITHUB_TOKEN=abcd1234", secrets=["abcd1234"]) == "GITHUB_TOKEN=***"
    # short secrets are masked only inside a URL, not everywhere in the text
    assert redact_text("a b http://u:ab@h/", SecretUrl("http://u:ab@h/")) == "a b http://***@h/"
