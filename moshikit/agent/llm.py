"""A streaming client for OpenAI-compatible chat completions (ollama, llama.cpp's server, vLLM,
hosted APIs): ``POST {url}/chat/completions`` with ``"stream": true``; the reply arrives as
server-sent events ``data: {"choices": [{"delta": {"content": "..."}}]}`` and ends with
``data: [DONE]``.

Plain ``http.client`` (no new dependency), read on the caller's thread; ``Reply.cancel()`` from
any other thread closes the connection, which ends the read at once. Every failure a user can
cause is one ``LLMError`` line: a server that cannot be reached, a model it does not have (its
own message from the 404/400 body), other HTTP errors, silence past the timeout, a stream that
breaks mid-reply.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from typing import Iterator

from ..errors import RemoteError

#: ollama's OpenAI-compatible endpoint.
DEFAULT_URL = "http://localhost:11434/v1"
DEFAULT_TIMEOUT = 30.0  # seconds without a byte from the server
MAX_ERROR_BODY = 4096


class LLMError(RemoteError):
    """The chat model's server failed this request (one line; the session goes on)."""


class Cancelled(Exception):
    """Raised inside a reader whose reply was cancelled (a barge-in)."""


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of ``--llm-url``; one line for anything else."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMError(f"--llm-url {url}: not an http(s) URL", hint=f"e.g. {DEFAULT_URL}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise LLMError(f"--llm-url {url}: bad port") from None
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def error_message(body: bytes) -> str:
    """The server's own words from an error body: OpenAI's ``{"error": {"message"}}``, ollama's
    ``{"error": "..."}``, or the first line of plain text."""
    text = body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text.splitlines()[0][:200] if text else ""
    err = data.get("error", data.get("detail", data.get("message"))) if isinstance(data, dict) else None
    if isinstance(err, dict):
        err = err.get("message") or err.get("code")
    return str(err)[:200] if err else text[:200]


class ChatClient:
    """One chat model on one server. ``stream(messages)`` starts a request."""

    def __init__(self, url: str = DEFAULT_URL, model: str = "", *, timeout: float = DEFAULT_TIMEOUT,
                 api_key: str | None = None, options: dict | None = None) -> None:
        self.url, self.model, self.timeout, self.api_key = url, model, timeout, api_key
        self.options = dict(options or {})
        self.scheme, self.host, self.port, self.prefix = split_url(url)

    def stream(self, messages: list[dict]) -> "Reply":
        return Reply(self, messages)


class Reply:
    """One streamed completion: iterate for the text pieces as they come; ``cancel()`` from another
    thread stops it (the iteration then raises ``Cancelled``). ``pieces`` counts what arrived."""

    def __init__(self, client: ChatClient, messages: list[dict]) -> None:
        self.client, self.messages = client, messages
        self.pieces = 0
        self.cancelled = False
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread
            except OSError:
                pass

    def __iter__(self) -> Iterator[str]:
        c = self.client
        where = f"the LLM server at {c.url}"
        body = json.dumps({"model": c.model, "messages": self.messages, "stream": True, **c.options}).encode()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        cls = http.client.HTTPSConnection if c.scheme == "https" else http.client.HTTPConnection
        conn = cls(c.host, c.port, timeout=c.timeout)
        with self._lock:
            if self.cancelled:
                raise Cancelled()
            self._conn = conn
        try:
            try:
                conn.request("POST", c.prefix + "/chat/completions", body, headers)
                response = conn.getresponse()
            except socket.timeout:
                raise self._stopped() or LLMError(f"{where} sent nothing for {c.timeout:g} s") from None
            except (ConnectionError, OSError, http.client.HTTPException) as exc:
                raise self._stopped() or LLMError(
                    f"cannot reach {where} ({_reason(exc)})",
                    hint="start it (ollama: `ollama serve`) or give --llm-url") from None
            if response.status != 200:
                raise self._stopped() or _http_error(response, c.model, where)
            yield from self._events(response, where)
        finally:
            conn.close()

    def _stopped(self) -> Cancelled | None:
        return Cancelled() if self.cancelled else None

    def _events(self, response, where: str) -> Iterator[str]:
        c = self.client
        while True:
            try:
                line = response.readline(1 << 20)
            except socket.timeout:
                raise self._stopped() or LLMError(
                    f"{where} stopped sending for {c.timeout:g} s (after {self.pieces} pieces)") from None
            except (OSError, http.client.HTTPException) as exc:
                raise self._stopped() or LLMError(f"{where}: the reply broke off ({_reason(exc)})") from None
            if self.cancelled:
                raise Cancelled()
            if not line:
                raise LLMError(f"{where}: the reply broke off after {self.pieces} pieces (no [DONE])")
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (": keep-alive"), event: and id: lines
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise LLMError(f"{where} sent something that is not JSON: {data[:80]!r}") from None
            if isinstance(event, dict) and event.get("error"):
                raise LLMError(f"{where}: {error_message(data)}")
            try:
                choice = event["choices"][0] if event.get("choices") else {}
                piece = (choice.get("delta") or {}).get("content") or ""
            except (AttributeError, KeyError, TypeError, IndexError):
                raise LLMError(f"{where} sent an event that is not a chat completion chunk") from None
            if piece:
                self.pieces += 1
                yield piece


def _http_error(response, model: str, where: str) -> LLMError:
    try:
        said = error_message(response.read(MAX_ERROR_BODY))
    except (OSError, http.client.HTTPException):
        said = ""
    status = response.status
    lowered = said.lower()
    if status == 404 and ("model" in lowered or not said) or status == 400 and "model" in lowered:
        return LLMError(f"{where} has no model {model!r} (HTTP {status}{': ' + said if said else ''})",
                        hint="give --llm-model a name it serves (ollama: `ollama list`)")
    if status in (401, 403):
        return LLMError(f"{where} refused the request (HTTP {status}{': ' + said if said else ''})",
                        hint="set MOSHIKIT_LLM_KEY to its API key")
    return LLMError(f"{where} answered HTTP {status} {response.reason}{': ' + said if said else ''}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
