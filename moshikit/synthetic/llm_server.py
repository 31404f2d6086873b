"""A local OpenAI-compatible chat server for tests and ``bench agent``: it streams a scripted reply
at a set token rate over the real protocol (``POST /v1/chat/completions`` with ``stream: true``,
server-sent events, ``data: [DONE]``), records every request it received, and fails on demand.

    with ScriptedLLM(["Hello there.", "Second reply."], tokens_per_second=20) as server:
        client = ChatClient(server.url, server.model)
        server.fail_next("500")   # or "404" (unknown model), "hang" (say nothing), "drop" (break mid-reply)

A token is one word with its space. Requests whose model is not ``model`` get OpenAI's 404
(``model_not_found``). ``requests`` holds each request's JSON body; ``finished`` / ``cancelled``
count replies streamed to their end and those the client closed mid-stream; a client has read the
end of a reply before the server counts it, so read them through ``settle``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque


def tokens_of(text: str) -> list[str]:
    """Word-sized pieces with their spaces, as LLMs stream them (the first without a space)."""
    return re.findall(r"\s*\S+", text)


class ScriptedLLM:
    def __init__(self, replies: list[str] | str = "Hello! How can I help you today?", *, model: str = "scripted",
                 tokens_per_second: float = 50.0, first_token_delay: float = 0.0, host: str = "127.0.0.1") -> None:
        self.replies = [replies] if isinstance(replies, str) else list(replies)
        self.model, self.rate, self.first_delay, self.host = model, tokens_per_second, first_token_delay, host
        self.requests: list[dict] = []
        self.finished = 0
        self.cancelled = 0
        self.port = 0
        self._faults: deque[str] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def fail_next(self, *faults: str) -> None:
        """The next requests fail, one fault each: ``500``, ``404``, ``hang``, ``drop``."""
        for f in faults:
            if f not in ("500", "404", "hang", "drop"):
                raise ValueError(f"unknown fault {f!r}")
        with self._lock:
            self._faults.extend(faults)

    def user_messages(self, i: int = -1) -> list[str]:
        """The user messages of request ``i`` (the history and the new one, in order)."""
        return [m["content"] for m in self.requests[i]["messages"] if m.get("role") == "user"]

    def settle(self, *, finished: int = 0, cancelled: int = 0, timeout: float = 5.0) -> tuple[int, int]:
        """``(finished, cancelled)`` once both reach at least the given counts (or at ``timeout``):
        the server counts a reply after its last write, which the client may have read already."""
        deadline = time.monotonic() + timeout
        while (self.finished < finished or self.cancelled < cancelled) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)  # a count that should have stayed put has had the time to move
        with self._lock:
            return self.finished, self.cancelled

    # ------------------------------------------------------------ running

    def __enter__(self) -> "ScriptedLLM":
        self._thread = threading.Thread(target=self._run, name="scripted-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the scripted LLM server did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request):
        from aiohttp import ClientConnectionError, web

        body = await request.json()
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
            fault = self._faults.popleft() if self._faults else None
        if fault == "500":
            return web.json_response({"error": {"message": "scripted failure", "type": "server_error"}}, status=500)
        if fault == "404" or body.get("model") != self.model:
            return web.json_response({"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                "type": "invalid_request_error", "code": "model_not_found"}},
                                     status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if fault == "hang":
            await asyncio.sleep(3600)
        reply = self.replies[index % len(self.replies)]
        created = int(time.time())
        try:
            if self.first_delay:
                await asyncio.sleep(self.first_delay)
            for i, token in enumerate(tokens_of(reply)):
                if i:
                    await asyncio.sleep(1.0 / self.rate)
                if fault == "drop" and i == 2:
                    request.transport.close()
                    return response
                chunk = {"id": f"chatcmpl-{index}", "object": "chat.completion.chunk", "created": created,
                         "model": self.model, "choices": [{"index": 0, "delta": {"content": token},
                                                           "finish_reason": None}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            end = {"id": f"chatcmpl-{index}", "object": "chat.completion.chunk", "created": created,
                   "model": self.model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await response.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            await response.write_eof()
        except asyncio.CancelledError:  # the client went away while the server slept
            with self._lock:
                self.cancelled += 1
            raise
        except (ConnectionError, ClientConnectionError):  # ... or while it wrote
            with self._lock:
                self.cancelled += 1
            return response
        with self._lock:
            self.finished += 1
        return response


def main(argv: list[str] | None = None) -> None:
    """``python -m moshikit.synthetic.llm_server --reply TEXT [--tokens-per-second N]
    [--first-token-delay S]``: the server in a process of its own (``bench agent`` runs it so, like
    a local LLM server, away from the measured process); prints its URL, serves until stdin closes."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m moshikit.synthetic.llm_server")
    p.add_argument("--reply", action="append", help="A scripted reply (repeat: one per request, in turn).")
    p.add_argument("--model", default="scripted")
    p.add_argument("--tokens-per-second", type=float, default=50.0)
    p.add_argument("--first-token-delay", type=float, default=0.0)
    args = p.parse_args(argv)
    with ScriptedLLM(args.reply or "Hello! How can I help you today?", model=args.model,
                     tokens_per_second=args.tokens_per_second, first_token_delay=args.first_token_delay) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # the parent closes our stdin (or exits) to stop us


if __name__ == "__main__":
    main()
