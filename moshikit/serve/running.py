"""Running a chat server: in a background thread (tests, tools) or in the foreground until Ctrl-C."""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

from ..errors import MoshikitError
from .server import ChatServer


class RunningServer:
    """A server running on its own thread (tests, notebooks): ``url``, ``stop()``."""

    def __init__(self, server: ChatServer, *, ssl_ctx=None) -> None:
        self.server = server
        self.url = ""
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
            self._started.set()

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve_async(self.server, ready, self._stop, ssl_ctx=self._ssl)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 (handed to the starting thread)
            self._error = exc
        finally:
            self._started.set()

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def serve_async(server: ChatServer, on_ready: Callable[[str], None], stop: asyncio.Event, *,
                      ssl_ctx=None) -> None:
    """Serve until ``stop`` is set; ``on_ready(url)`` once listening (with the real port)."""
    from aiohttp import web

    from .web import KEEPALIVE_SECONDS, listen

    cfg = server.cfg
    runner = web.AppRunner(server.app(), handle_signals=False, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
    await runner.setup()
    listening = None
    try:
        try:
            listening = await listen(runner, server, cfg.host, cfg.port, ssl_ctx=ssl_ctx)
        except OSError as exc:
            raise MoshikitError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
                                hint="pick another --port, or stop what is using it") from None
        ports = sorted({sock.getsockname()[1] for sock in listening.sockets}) or [cfg.port]
        server.listening(ports)
        port = ports[0]  # the real port when 0 was asked
        host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        shown = "localhost" if cfg.host in ("127.0.0.1", "localhost") else host
        on_ready(f"{'wss' if ssl_ctx else 'ws'}://{shown}:{port}/api/chat")
        await stop.wait()
    finally:
        if listening is not None:
            listening.close()
        await runner.cleanup()


def serve_forever(server: ChatServer, on_ready: Callable[[str], None], *, ssl_ctx=None) -> None:
    """Serve in the foreground until Ctrl-C."""
    async def main() -> None:
        await serve_async(server, on_ready, asyncio.Event(), ssl_ctx=ssl_ctx)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
