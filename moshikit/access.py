"""Who may use a ``moshikit serve``: a token, required when the server listens beyond this machine
(the rules only; ``serve.app`` applies them to requests).

Bound to loopback, nothing is asked (anyone who can reach the port is already on the machine).
Bound to another address (``--host 0.0.0.0``), the server makes a random token and prints the
page's address with it (``http://HOST:PORT/?token=...``), as notebook servers do. Every path
then needs it (the page, its scripts, ``/api/info``, ``/api/chat``, every file of ``--static``),
compared in constant time, from the query parameter ``token`` (so the official clients can pass
it in their URL), an ``Authorization: Bearer`` header (the ``openai`` package's ``api_key``),
moshi-server's ``kyutai-api-key`` header or ``?auth_id=`` (Kyutai's STT/TTS scripts), or the
cookie the server sets when the page is opened with the token (so the page's own scripts load
without it in their address: ``HttpOnly``, ``SameSite=Strict``, one name per port). A request without it gets 401 (a
WebSocket: an error message, then close code 1008) and one log line; it never reaches the
model. ``--no-auth`` turns the check off (with a warning). A token given by the user
(``--token``, ``--token-file``, ``MOSHIKIT_SERVE_TOKEN``) must have at least ``MIN_TOKEN``
characters.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import posixpath
import secrets
from pathlib import Path
from urllib.parse import unquote

from .errors import UsageError

#: Paths answered without the token even when one is required: none. Compared with the
#: normalised path, so no spelling of a path (``/./index.html``, ``/index.html/``,
#: ``//api/chat``, ``%2e``) is a side door.
PUBLIC: frozenset[str] = frozenset()
#: WebSocket close code for a refused request (policy violation).
CLOSE_REFUSED = 1008
#: The shortest token a user may choose (a new one has 24 characters).
MIN_TOKEN = 16


def new_token() -> str:
    return secrets.token_urlsafe(18)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_token(token: str, source: str = "--token") -> str:
    """``token`` if it is long enough and printable; a one-line ``UsageError`` otherwise."""
    if len(token) < MIN_TOKEN:
        raise UsageError(f"{source}: a token needs at least {MIN_TOKEN} characters (this one has {len(token)}); "
                         "leave it out and the server makes one")
    if not token.isprintable() or any(c.isspace() for c in token):
        raise UsageError(f"{source}: a token is one word of printable characters (no spaces or control characters)")
    return token


def read_token_file(path: str | os.PathLike) -> str:
    """The token in ``path`` (its first line, without surrounding whitespace), checked."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--token-file {p}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {p}: cannot read it ({exc})") from None
    if not lines:
        raise UsageError(f"--token-file {p}: the file is empty")
    return check_token(lines[0].strip(), f"--token-file {p}")


def token_for(host: str, *, no_auth: bool = False, token: str | None = None) -> str | None:
    """The token a server bound to ``host`` requires (None: no check): loopback needs none unless
    one is given; any other address gets ``token`` or a new one unless ``no_auth``."""
    if no_auth:
        return None
    if token:
        return check_token(token)
    return None if is_loopback(host) else new_token()


def normalise_path(path: str) -> str:
    """The path a request names, as a file server resolves it: percent-decoded, ``.`` and ``..``
    and repeated or trailing slashes removed (``/./index.html/`` -> ``/index.html``)."""
    p = unquote(path.split("?", 1)[0]).replace("\\", "/")
    return posixpath.normpath("/" + p.lstrip("/"))


def needs_token(path: str) -> bool:
    return normalise_path(path) not in PUBLIC


def cookie_name(port: int) -> str:
    """The cookie carrying the token of the server on ``port`` (cookies are per host, not per port)."""
    return f"moshikit_token_{int(port)}"


def presented(query, headers, cookies=None, port: int | None = None) -> tuple[str, str]:
    """The token a request carries and how: ``("...", "query" | "bearer" | "kyutai" | "cookie")``, or
    ``("", "")``. ``query``, ``headers`` (case-insensitive) and ``cookies``: mappings."""
    got = query.get("token", "")
    if got:
        return got, "query"
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip(), "bearer"
    # moshi-server's ways (Kyutai's STT/TTS clients): a header, or ``?auth_id=`` for browsers
    got = headers.get("kyutai-api-key", "") or query.get("auth_id", "")
    if got:
        return got.strip(), "kyutai"
    if cookies is not None and port is not None:
        got = cookies.get(cookie_name(port), "")
        if got:
            return got, "cookie"
    return "", ""


def token_ok(expected: str, given: str) -> bool:
    """Constant-time comparison (the time taken does not depend on how much of it matches)."""
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))
