"""HTTP helpers shared by the services: OpenAI's error object, bounded bodies, refusals.

(Written by the STT service to the interface of the serve contract; the lead's version of this
module replaces it at the merge.)
"""

from __future__ import annotations


def openai_error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit

    def response(self):
        return openai_error(413, str(self), code="request_too_large")


async def read_body(request, limit: int) -> bytes:
    """The whole body, refused (``BodyTooLarge``; its ``response()`` is the 413) past ``limit``
    bytes: a ``Content-Length`` over it before a byte is read, else as it arrives."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def refuse_ws(websocket, code: int, reason: str) -> None:
    """Accept ``websocket`` and close it at once with ``code`` and ``reason``."""
    from ..clienttext import close_reason

    await websocket.accept()
    await websocket.close(code, close_reason(reason).decode("utf-8"))


def busy_response(retry_after: float):
    """429 with ``Retry-After`` in OpenAI's error shape: every slot is taken."""
    r = openai_error(429, "the server is busy: every slot of the model is taken; retry later",
                     type="server_error", code="busy")
    r.headers["Retry-After"] = str(max(1, int(round(retry_after))))
    return r
