"""The aiohttp side of the server's rules (``access``, ``origins``, ``serve.limits``): two
middlewares and the listening socket's connection guard. Only this module knows aiohttp's
request and protocol; the rules themselves are plain functions and classes."""

from __future__ import annotations

import asyncio
from typing import Callable

from .. import access, origins, wire
from ..clienttext import close_reason, shown
from .limits import ConnectionGate, StreamWatch, Throttle

#: How long an idle keep-alive connection is kept between two requests.
KEEPALIVE_SECONDS = 15.0


def _answer(status: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def local_port(request) -> int | None:
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return sock[1] if sock else None


def middlewares(server) -> list:
    """The origin check, then (when the server has a token) the token gate, before any handler."""
    from aiohttp import web

    log: Callable[[str], None] = server.log

    @web.middleware
    async def check_origin(request, handler):
        origin = request.headers.get("Origin")
        policy = server.origin_policy
        if origin is None or not origins.needs_check(request.method, request.headers) or \
                (policy is not None and policy.allows(origin)):
            return await handler(request)
        server.stats["refused_origin"] += 1
        log(f"refused {request.remote or '?'} {request.method} {shown(access.normalise_path(request.path))}: "
            f"a page from {shown(origin)!r} is not this server's (--allow-origin lets one in)")
        return web.Response(status=403, text="403 forbidden: a page from another site may not use this server "
                                             "(the server's --allow-origin can let it in)\n")

    token = server.cfg.token
    if not token:
        return [check_origin]

    @web.middleware
    async def check_token(request, handler):
        if not access.needs_token(request.path):
            return await handler(request)
        port = local_port(request)
        given, how = access.presented(request.query, request.headers, request.cookies, port)
        if given and access.token_ok(token, given):
            resp = await handler(request)
            if how != "cookie" and port is not None and not resp.prepared:  # the page's scripts then load without it
                resp.set_cookie(access.cookie_name(port), token, path="/", httponly=True, samesite="Strict",
                                secure=request.secure)
            return resp
        server.stats["refused_token"] += 1
        log(f"refused {request.remote or '?'} {shown(access.normalise_path(request.path))}: "
            f"{'wrong' if given else 'no'} token")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await refuse_websocket(request, "unauthorized: this server needs the token from the "
                                                   "address it printed (?token=...)", "unauthorized")
        return web.Response(status=401, text="401 unauthorized: open the address `moshikit serve` printed, "
                                             "with its ?token=...\n")

    return [check_origin, check_token]


async def refuse_websocket(request, reason: str, short: str | None = None):
    """Complete the upgrade only to say why (browsers cannot read an HTTP status), then close
    with code 1008 and ``short`` (default: ``reason``) as the close reason. A request that is
    not an upgrade gets 400 and ``reason``."""
    from aiohttp import web

    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(status=400, text=f"400 bad request: {reason}\n")
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    try:
        await asyncio.wait_for(ws.send_bytes(wire.error_message(reason)), 2.0)
        await asyncio.wait_for(ws.close(code=access.CLOSE_REFUSED, message=close_reason(short or reason)), 2.0)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        pass
    return ws


class Guard(asyncio.Protocol):
    """Stands between the socket and aiohttp's protocol for one connection: refuses it when the
    gate is full, cuts it when its ``StreamWatch`` says so or its request head is late."""

    def __init__(self, protocol: Callable[[], asyncio.Protocol], server, gate: ConnectionGate,
                 throttle: Throttle) -> None:
        self.protocol, self.server, self.gate, self.throttle = protocol, server, gate, throttle
        self.inner: asyncio.Protocol | None = None  # aiohttp's, once admitted
        self.cfg = server.cfg
        self.watch = StreamWatch(self.cfg.max_message)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.admitted = False
        self.cut = False
        self.timer: asyncio.TimerHandle | None = None

    def _note(self, kind: str, text: str) -> None:
        self.server.stats[kind] += 1
        if self.throttle.allow(kind):
            more = self.throttle.skipped(kind)
            self.server.log(text + (f" (and {more} more since the last such line)" if more else ""))

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else "?"
        why = self.gate.admit(self.client)
        if why is not None:
            self._note("refused_full", f"refused {self.client}: {why}")
            transport.write(_answer("503 Service Unavailable", f"503 busy: {why}, try again later\n"))
            transport.close()
            return
        self.admitted = True
        self.inner = self.protocol()
        self._arm()
        self.inner.connection_made(transport)

    def _arm(self) -> None:
        since = self.watch.head_since
        if since is None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        elif self.timer is None:
            left = since + self.cfg.header_timeout - self.watch.clock()
            self.timer = asyncio.get_running_loop().call_later(max(0.0, left), self._late)

    def _late(self) -> None:
        self.timer = None
        since = self.watch.head_since
        if since is None or self.transport is None or self.transport.is_closing():
            return
        left = since + self.cfg.header_timeout - self.watch.clock()
        if left > 0:
            self.timer = asyncio.get_running_loop().call_later(left, self._late)
            return
        self._note("slow_clients", f"closed {self.client}: its request head took over "
                                   f"{self.cfg.header_timeout:g} s (--header-timeout)")
        self.transport.write(_answer("408 Request Timeout", "408 the request came too slowly\n"))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.inner is None or self.cut:  # refused or cut: its bytes go nowhere
            return
        why = self.watch.feed(data)
        if why is not None:
            self.cut = True
            self._note("cut_connections", f"closed {self.client}: {why}")
            if self.transport is not None:
                if self.watch.state == "ws":  # say so in a close frame (1009: too big), then hang up
                    reason = close_reason(why)
                    self.transport.write(bytes([0x88, 2 + len(reason)]) + (1009).to_bytes(2, "big") + reason)
                else:
                    self.transport.write(_answer("431 Request Header Fields Too Large", f"431 {why}\n"))
                self.transport.close()
            return
        self._arm()
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.admitted:
            self.admitted = False
            self.gate.release(self.client)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


async def listen(runner, server, host: str, port: int, *, ssl_ctx=None):
    """Listen on ``host``:``port`` for ``runner``'s application, every connection through a
    ``Guard``; returns the asyncio server."""
    loop = asyncio.get_running_loop()
    cfg = server.cfg
    gate = ConnectionGate(cfg.max_connections, cfg.max_connections_per_client)
    throttle = Throttle(10.0)
    protocol = runner.server  # aiohttp's protocol factory
    return await loop.create_server(lambda: Guard(protocol, server, gate, throttle), host or None, port,
                                    ssl=ssl_ctx, ssl_handshake_timeout=cfg.header_timeout if ssl_ctx else None)
