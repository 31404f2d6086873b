"""Running a server: in a background thread (tests, tools) or in the foreground until Ctrl-C.

The application (``ServerApp``) is served by uvicorn, each connection through a ``Guard``
(connection caps, header timeout, WebSocket frame bounds). uvicorn's own log lines go to the
server's log as one plain line each, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable

from ..errors import MoshikitError
from .app import ServerApp
from .guard import KEEPALIVE_SECONDS


def as_app(server) -> ServerApp:
    """A ``ServerApp``, or one service (such as a ``ChatServer``) made one."""
    if isinstance(server, ServerApp):
        return server
    app = ServerApp([server], server.cfg, log=server.log)
    app.ctx.stats = server.stats  # one set of counters, read by tests and tools from either
    return app


class RunningServer:
    """A server running on its own thread (tests, notebooks): ``url`` (the chat route's
    WebSocket address), ``base`` (``http://host:port``), ``stop()``."""

    def __init__(self, server, *, ssl_ctx=None) -> None:
        self.app = as_app(server)
        self.server = server
        self.url = ""
        self.base = ""
        self._ssl = ssl_ctx
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="moshikit-serve", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        def ready(url: str) -> None:
            self.url = url
            self.base = url.replace("wss://", "https://").replace("ws://", "http://").removesuffix("/api/chat")
            self._started.set()

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve_async(self.app, ready, self._stop, ssl_ctx=self._ssl)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 (handed to the starting thread)
            self._error = exc
        finally:
            self._started.set()

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=15)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _LogLines(logging.Handler):
    """uvicorn's log records as one plain line each in the server's log (an exception: its type
    and message, not its traceback)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = record.getMessage().splitlines()[0] if record.getMessage() else record.levelname
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                line += f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.log(line)
        except Exception:  # noqa: BLE001 (a log line must never take the server down)
            pass


def _uvicorn(app: ServerApp, ssl_ctx):
    import uvicorn

    from .limits import ConnectionGate, Throttle

    cfg = app.cfg
    logger = logging.getLogger("uvicorn.error")
    logger.handlers[:] = [_LogLines(app.log)]
    logger.propagate = False
    config = uvicorn.Config(app.asgi, host=cfg.host, port=cfg.port, http="h11", ws="websockets-sansio",
                            lifespan="on", log_config=None, access_log=False, ws_max_size=app.max_frame(),
                            ws_ping_interval=cfg.heartbeat, ws_ping_timeout=cfg.heartbeat,
                            timeout_keep_alive=int(KEEPALIVE_SECONDS), timeout_graceful_shutdown=3)

    class Server(uvicorn.Server):
        """uvicorn's server, listening through moshikit's ``Guard`` (and TLS with a handshake timeout)."""

        sockets: list = []

        async def startup(self, sockets=None) -> None:
            from .guard import Guard

            await self.lifespan.startup()
            if self.lifespan.should_exit:
                raise MoshikitError("the server could not start its models (see the lines above)")

            def inner():
                return config.http_protocol_class(config=config, server_state=self.server_state,
                                                  app_state=self.lifespan.state)

            gate = ConnectionGate(cfg.max_connections, cfg.max_connections_per_client)
            throttle = Throttle(10.0)
            loop = asyncio.get_running_loop()
            try:
                listening = await loop.create_server(
                    lambda: Guard(inner, app, gate, throttle), cfg.host or None, cfg.port, ssl=ssl_ctx,
                    ssl_handshake_timeout=cfg.header_timeout if ssl_ctx else None)
            except OSError as exc:
                await self.lifespan.shutdown()
                raise MoshikitError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
                                    hint="pick another --port, or stop what is using it") from None
            self.servers = [listening]
            self.sockets = list(listening.sockets)
            self.started = True

    return config, Server(config)


async def serve_async(server, on_ready: Callable[[str], None], stop: asyncio.Event, *, ssl_ctx=None) -> None:
    """Serve until ``stop`` is set; ``on_ready(url)`` once listening (with the real port)."""
    app = as_app(server)
    cfg = app.cfg
    config, srv = _uvicorn(app, ssl_ctx)
    config.load()
    srv.lifespan = config.lifespan_class(config)
    await srv.startup()
    try:
        ports = sorted({sock.getsockname()[1] for sock in srv.sockets}) or [cfg.port]
        app.listening(ports)
        host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        shown = "localhost" if cfg.host in ("127.0.0.1", "localhost") else host
        on_ready(f"{'wss' if ssl_ctx else 'ws'}://{shown}:{ports[0]}/api/chat")
        waiter = asyncio.ensure_future(stop.wait())
        main = asyncio.ensure_future(srv.main_loop())
        await asyncio.wait([waiter, main], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        srv.should_exit = True
        await main
    finally:
        await srv.shutdown()


def serve_forever(server, on_ready: Callable[[str], None], *, ssl_ctx=None) -> None:
    """Serve in the foreground until Ctrl-C."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt below
                pass
        await serve_async(server, on_ready, stop, ssl_ctx=ssl_ctx)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
