"""One ASGI application for every model a ``moshikit serve`` serves.

Each model is a ``Service`` (chat, speech-to-text, text-to-speech, translation) that brings its
routes and starts its engine when the application starts. ``ServerApp`` puts them together in one
Starlette application, with the routes every server has (``/api/info``, ``/v1/models``, the web
page) and, in front of every route, HTTP and WebSocket alike, the origin check (``origins``) and
the token (``access``). The same application runs standalone under uvicorn (``serve.running``,
with the connection guard of ``serve.guard`` in front) and on Ray Serve (``serve --ray``).
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from .. import access, origins
from ..clienttext import close_reason, shown
from ..errors import UsageError
from ..origins import OriginPolicy
from ..version import __version__
from .session import ServeConfig


@dataclass
class Context:
    """What the services of one server share: its limits, its log and its counters."""

    cfg: ServeConfig
    #: one plain-text line per event (never read as markup: lines hold what clients sent)
    log: Callable[[str], None] = lambda msg: None
    stats: collections.Counter = field(default_factory=collections.Counter)


@runtime_checkable
class Service(Protocol):
    """One served model: its routes, and an engine started and stopped with the application."""

    kind: str  # "chat" | "stt" | "tts" | "translate"

    def models(self) -> list[dict]: ...

    def routes(self) -> list: ...

    async def start(self, ctx: Context) -> None: ...

    async def stop(self) -> None: ...


class Logs:
    """What a service needs of its server's context before and after it starts: a log line and a
    counter (nothing is said while ``ctx`` is None)."""

    ctx: Context | None = None

    def log(self, line: str) -> None:
        if self.ctx is not None:
            self.ctx.log(line)

    def count(self, key: str) -> None:
        if self.ctx is not None:
            self.ctx.stats[key] += 1


class ServerApp:
    """The services of one server as one ASGI application (``asgi``)."""

    def __init__(self, services, cfg: ServeConfig | None = None, *, log: Callable[[str], None] | None = None) -> None:
        self.services = list(services)
        if not self.services:
            raise UsageError("nothing to serve: name a model (--chat, --stt, --tts or --translate)")
        kinds = [s.kind for s in self.services]
        if len(set(kinds)) != len(kinds):
            raise UsageError(f"one model of each kind per server (asked: {', '.join(kinds)})")
        self.cfg = cfg or ServeConfig()
        if self.cfg.token:
            access.check_token(self.cfg.token)
        OriginPolicy("127.0.0.1", (), self.cfg.allow_origins)  # a bad --allow-origin: an error before listening
        static = self.cfg.static
        if static and not (Path(static) / "index.html").is_file():
            raise UsageError(f"{static}: no index.html in this directory (--static wants a built web client)")
        self.ctx = Context(self.cfg, log or (lambda msg: None))
        self.origin_policy: OriginPolicy | None = None  # known once listening (listening())
        self.asgi = Gate(self._starlette(), self)

    @property
    def log(self) -> Callable[[str], None]:
        return self.ctx.log

    @property
    def stats(self) -> collections.Counter:
        return self.ctx.stats

    def service(self, kind: str):
        return next((s for s in self.services if s.kind == kind), None)

    def max_frame(self) -> int:
        """The largest WebSocket message any route takes (the connection guard's bound)."""
        return max(getattr(s, "max_message", self.cfg.max_message) for s in self.services)

    def listening(self, ports) -> None:
        """Called once the server listens on ``ports``: pages from its own origins may use it."""
        self.origin_policy = OriginPolicy(self.cfg.host, ports, self.cfg.allow_origins)

    def info(self) -> dict:
        return {"server": "moshikit serve", "version": __version__,
                "services": [dict(m, kind=s.kind) for s in self.services for m in s.models()]}

    # ------------------------------------------------------------------ the Starlette application

    def _starlette(self):
        from starlette.applications import Starlette
        from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        async def info(_request):
            return JSONResponse(self.info())

        async def models(_request):
            data = [{"id": m["id"], "object": "model", "created": 0, "owned_by": "kyutai",
                     "kind": s.kind} for s in self.services for m in s.models()]
            return JSONResponse({"object": "list", "data": data})

        routes = [Route("/api/info", info), Route("/v1/models", models)]
        for s in self.services:
            routes += s.routes()
        if self.cfg.static or self.service("chat") is not None:
            from .. import webpage

            root = Path(self.cfg.static) if self.cfg.static else webpage.PAGE_DIR

            async def index(_request):
                return FileResponse(root / "index.html", headers={"Cache-Control": "no-store",
                                                                  "Referrer-Policy": "no-referrer"})

            routes += [Route("/", index), Mount("/", StaticFiles(directory=str(root)))]
        else:
            async def front(_request):
                served = ", ".join(f"{s.kind} ({', '.join(m['id'] for m in s.models())})" for s in self.services)
                return PlainTextResponse(f"moshikit serve {__version__}: {served}. "
                                         "GET /api/info lists the routes.\n")

            routes.append(Route("/", front))
        return Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app):
        started = []
        try:
            for s in self.services:
                await s.start(self.ctx)
                started.append(s)
            yield
        finally:
            for s in reversed(started):
                try:
                    await s.stop()
                except Exception as exc:  # noqa: BLE001 (one service's failure does not keep the others up)
                    self.log(f"stopping {s.kind} failed: {type(exc).__name__}: {exc}")


def routes_of(service) -> list[str]:
    """The paths a service answers on."""
    return [r.path for r in service.routes()]


def _cookies(headers) -> dict[str, str]:
    from http.cookies import CookieError, SimpleCookie

    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


class Gate:
    """ASGI middleware in front of every route: the origin check, then the token (when the server
    has one). A refused WebSocket is accepted only to say why (browsers cannot read an HTTP status),
    then closed with code 1008; a refused HTTP request gets 403 or 401. One log line each."""

    def __init__(self, app, server: ServerApp) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        from starlette.requests import HTTPConnection

        server = self.server
        conn = HTTPConnection(scope)  # Starlette's view of the request: case-insensitive headers, the query
        headers = conn.headers
        method = scope.get("method", "GET")
        raw = scope.get("raw_path") or scope.get("path", "/").encode()
        path = access.normalise_path(raw.decode("latin-1"))
        peer = (scope.get("client") or ("?",))[0]
        origin = headers.get("origin")
        policy = server.origin_policy
        ws = scope["type"] == "websocket"
        if origin is not None and (ws or origins.needs_check(method, headers)) and \
                not (policy is not None and policy.allows(origin)):
            server.stats["refused_origin"] += 1
            server.log(f"refused {peer} {'GET' if ws else method} {shown(path)}: a page from {shown(origin)!r} "
                       "is not this server's (--allow-origin lets one in)")
            if ws:  # closed before the upgrade: the handshake fails with 403, as before any page script runs
                await receive()
                return await send({"type": "websocket.close", "code": access.CLOSE_REFUSED})
            return await _refuse(send, 403, "403 forbidden: a page from another site may not use this server "
                                 "(the server's --allow-origin can let it in)")
        token = server.cfg.token
        if not token or not access.needs_token(path):
            return await self.app(scope, receive, send)
        port = (scope.get("server") or (None, None))[1]
        given, how = access.presented(conn.query_params, headers, _cookies(headers), port)
        if not (given and access.token_ok(token, given)):
            server.stats["refused_token"] += 1
            server.log(f"refused {peer} {shown(path)}: {'wrong' if given else 'no'} token")
            if ws and path in IN_PROTOCOL_REFUSALS:
                return await _refuse_ws(receive, send, "unauthorized: this server needs the token from the address "
                                        "it printed (?token=...)", "unauthorized")
            if ws:  # moshi-server's routes answer 401 before the upgrade, as Kyutai's clients expect
                return await _refuse_upgrade(scope, receive, send, 401, "401 unauthorized: send the token "
                                             "(kyutai-api-key header, ?auth_id=, ?token= or a Bearer token)")
            return await _refuse(send, 401, "401 unauthorized: open the address `moshikit serve` "
                                 "printed, with its ?token=..., or send it as a Bearer token")
        if ws or how == "cookie" or port is None:
            return await self.app(scope, receive, send)
        cookie = (f"{access.cookie_name(port)}={token}; Path=/; HttpOnly; SameSite=Strict"
                  + ("; Secure" if scope.get("scheme") == "https" else "")).encode()

        async def send_with_cookie(message):  # the page's scripts then load without the token
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [(b"set-cookie", cookie)])
            await send(message)

        return await self.app(scope, receive, send_with_cookie)


#: WebSocket routes whose clients read a refusal inside the protocol (browsers cannot read an HTTP
#: status): moshi's chat. Every other WebSocket route is refused before its upgrade.
IN_PROTOCOL_REFUSALS = frozenset({"/api/chat"})


async def _refuse_upgrade(scope, receive, send, status: int, text: str) -> None:
    """Refuse a WebSocket before the upgrade with an HTTP ``status`` (where the server can say one;
    otherwise uvicorn answers 403)."""
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": access.CLOSE_REFUSED})
        return
    await _answer(send, "websocket.http.response", status, text)


async def _refuse_ws(receive, send, text: str, short: str) -> None:
    """Accept a WebSocket only to say why it is refused (an error message), then close it (1008)."""
    from .. import wire

    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "bytes": wire.error_message(text)})
    await send({"type": "websocket.close", "code": access.CLOSE_REFUSED, "reason": close_reason(short).decode()})


async def _refuse(send, status: int, text: str) -> None:
    await _answer(send, "http.response", status, text)


async def _answer(send, kind: str, status: int, text: str) -> None:
    """``text`` as a plain-text answer with ``status``: ``kind`` is ``http.response`` or, before a
    WebSocket upgrade, ``websocket.http.response``."""
    body = (text + "\n").encode()
    await send({"type": f"{kind}.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": f"{kind}.body", "body": body})
