"""The listening socket's side of the server's rules (``serve.limits``): a ``Guard`` stands
between each connection and the HTTP server's protocol (uvicorn's), counts it in and out, and
cuts it when a request head is late or a WebSocket frame announces too much. The rules
themselves are plain classes; the HTTP server is whatever protocol factory it is given."""

from __future__ import annotations

import asyncio
from typing import Callable

from ..clienttext import close_reason
from .limits import ConnectionGate, StreamWatch, Throttle

#: How long an idle keep-alive connection is kept between two requests.
KEEPALIVE_SECONDS = 15.0


def _answer(status: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Guard(asyncio.Protocol):
    """Stands between the socket and the HTTP server's protocol for one connection: refuses it when the
    gate is full, cuts it when its ``StreamWatch`` says so or its request head is late."""

    def __init__(self, protocol: Callable[[], asyncio.Protocol], server, gate: ConnectionGate,
                 throttle: Throttle) -> None:
        self.protocol, self.server, self.gate, self.throttle = protocol, server, gate, throttle
        self.inner: asyncio.Protocol | None = None  # the HTTP server's (then its WebSocket protocol's), once admitted
        self.cfg = server.cfg
        self.watch = StreamWatch(server.max_frame())
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
        self.inner.connection_made(_Transport(transport, self))

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




class _Transport:
    """The connection's transport as the HTTP server sees it: when it hands the connection to its
    WebSocket protocol (``set_protocol``, on an upgrade), the ``Guard`` stays in front of it."""

    def __init__(self, transport: asyncio.Transport, guard: Guard) -> None:
        self._transport, self._guard = transport, guard

    def set_protocol(self, protocol) -> None:
        self._guard.inner = protocol

    def get_protocol(self):
        return self._guard.inner

    def __getattr__(self, name):
        return getattr(self._transport, name)
