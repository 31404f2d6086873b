"""What every route of the server answers the same way: OpenAI's error object, bounded request
bodies, a busy server, and a WebSocket refused with a reason (Starlette's request and socket)."""

from __future__ import annotations

import asyncio

from ..clienttext import close_reason

#: WebSocket close codes the services use.
CLOSE_BUSY = 1013  # try again later
CLOSE_TOO_BIG = 1009
CLOSE_BAD_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_FAILED = 1011


#: What a socket raises when its peer is gone (Starlette's and uvicorn's, named to import nothing).
GONE = ("WebSocketDisconnect", "ClientDisconnected")


def gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the peer has left (a socket closed, reset or timed out under us)."""
    return isinstance(exc, (ConnectionError, RuntimeError, asyncio.TimeoutError)) or type(exc).__name__ in GONE


class HTTPProblem(Exception):
    """A request refused with an HTTP status and OpenAI's error object (``as_response``)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def as_response(self):
        return openai_error(self.status, self.message, type=self.type, param=self.param, code=self.code,
                            headers=self.headers)


def openai_error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
    """OpenAI's error body (``{"error": {"message", "type", "param", "code"}}``) with ``status``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


def busy(retry_after: float, what: str = "the server is busy") -> HTTPProblem:
    """429 with ``Retry-After`` (whole seconds, at least 1)."""
    return HTTPProblem(429, f"{what}, try again in a moment", type="rate_limit_error", code="busy",
                       headers={"Retry-After": str(max(1, round(retry_after)))})


def busy_response(retry_after: float, what: str = "the server is busy"):
    return busy(retry_after, what).as_response()


async def read_body(request, limit: int, *, timeout: float = 60.0) -> bytes:
    """The request's body, refused (413) past ``limit`` bytes and (408) when it takes longer
    than ``timeout`` seconds to arrive: a slow upload holds a connection, not the server."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        if int(size) <= 4 * limit:  # read and dropped, so that the client, still sending, reads the answer
            try:
                await asyncio.wait_for(_drain(request), timeout)
            except Exception:  # noqa: BLE001 (the refusal stands whatever the drain met: a timeout, a client gone)
                pass
        raise HTTPProblem(413, f"the request body has {int(size)} bytes; the most is {limit}", code="too_large")
    chunks, got = [], 0

    async def read() -> None:
        nonlocal got
        async for chunk in request.stream():
            got += len(chunk)
            if got > limit:
                raise HTTPProblem(413, f"the request body is over {limit} bytes", code="too_large")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise HTTPProblem(408, f"the request body took over {timeout:g} s to arrive", code="timeout") from None
    return b"".join(chunks)


async def _drain(request) -> None:
    async for _ in request.stream():
        pass


async def refuse_ws(websocket, code: int, reason: str, *, message: bytes | str | None = None) -> None:
    """Accept ``websocket`` (if not yet) only to send ``message`` (if any) and close it with
    ``code`` and ``reason`` (cut to the protocol's 123 bytes)."""
    from starlette.websockets import WebSocketState

    try:
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept()
        if message is not None:
            send = websocket.send_bytes if isinstance(message, bytes) else websocket.send_text
            await asyncio.wait_for(send(message), 2.0)
        await asyncio.wait_for(websocket.close(code=code, reason=close_reason(reason).decode("utf-8")), 2.0)
    except Exception as exc:  # noqa: BLE001 (a peer gone mid-close: nothing left to tell it)
        if not gone(exc):
            raise
