"""Who may use a ``moshikit serve``: a token, required when the server listens beyond this machine.

Bound to loopback, nothing is asked (anyone who can reach the port is already on the machine).
Bound to another address (``--host 0.0.0.0``), the server makes a random token and prints the
page's address with it (``http://HOST:PORT/?token=...``), as notebook servers do; the page and
``/api/chat`` then check it, in constant time, from the query parameter ``token`` (so the
official clients can pass it in their URL) or an ``Authorization: Bearer`` header. A request
without it gets 401 (a WebSocket: an error message, then close code 1008) and one log line;
it never reaches the model. ``--no-auth`` turns the check off (with a warning).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Callable

#: Paths the token guards: the page and the chat endpoint. The page's own scripts and styles
#: (the package's static files, the same for everyone) are not secret.
GUARDED = ("/", "/index.html", "/api/chat")
#: WebSocket close code for a refused token (policy violation).
CLOSE_REFUSED = 1008


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


def token_for(host: str, *, no_auth: bool = False, token: str | None = None) -> str | None:
    """The token a server bound to ``host`` requires (None: no check): loopback needs none unless
    one is given; any other address gets ``token`` or a new one unless ``no_auth``."""
    if no_auth:
        return None
    if token:
        return token
    return None if is_loopback(host) else new_token()


def presented(request) -> str:
    """The token a request carries: ``?token=`` or ``Authorization: Bearer``."""
    got = request.query.get("token", "")
    if not got:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            got = auth[7:].strip()
    return got


def token_ok(expected: str, given: str) -> bool:
    """Constant-time comparison (the time taken does not depend on how much of it matches)."""
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def middleware(token: str, log: Callable[[str], None]):
    """An aiohttp middleware refusing guarded paths without ``token``, before any handler runs."""
    from aiohttp import web

    @web.middleware
    async def check(request, handler):
        if request.path not in GUARDED or token_ok(token, presented(request)):
            return await handler(request)
        given = presented(request)
        log(f"refused {request.remote or '?'} {request.path}: {'wrong' if given else 'no'} token")
        if request.path == "/api/chat" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await refuse_websocket(request, "unauthorized: this server needs the token from the "
                                                   "address it printed (?token=...)")
        return web.Response(status=401, text="401 unauthorized: open the address `moshikit serve` printed, "
                                             "with its ?token=...\n")

    return check


async def refuse_websocket(request, reason: str):
    """Complete the upgrade only to say why (browsers cannot read an HTTP status), then close."""
    import asyncio

    from aiohttp import web

    from . import wire

    ws = web.WebSocketResponse()
    await ws.prepare(request)
    try:
        await asyncio.wait_for(ws.send_bytes(wire.error_message(reason)), 2.0)
        await asyncio.wait_for(ws.close(code=CLOSE_REFUSED, message=b"unauthorized"), 2.0)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        pass
    return ws
