"""What one client may make the server hold, and when its connection is cut (the
rules only, no web framework: ``serve.guard`` applies them to connections).

- ``ConnectionGate``: at most ``total`` connections at once, and ``per_client`` from one address;
  the one over either is refused as it arrives (HTTP 503), before a byte of it is read.
- ``StreamWatch`` reads what a connection sends alongside the HTTP server and says when to cut
  it: a request head (request line and headers) that takes longer than the header timeout to
  arrive (the slow client that sends one header line every few seconds, holding a socket
  forever), a head larger than ``max_head``, and, once the connection is a WebSocket, a frame
  whose header announces more than ``max_frame`` bytes (cut when the header arrives, not after
  the server has waited for a payload that never comes).
- ``Throttle``: one log line per kind of refusal every few seconds, not one per connection.

(What a client sends is shown in log lines through ``clienttext.shown``.)
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

#: The most a request head (request line and headers) may take, in bytes.
MAX_HEAD = 1 << 16


class ConnectionGate:
    """Counts open connections, in total and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        if total < 1 or per_client < 1:
            raise ValueError("connection limits must be at least 1")
        self.total, self.per_client = total, per_client
        self.open: collections.Counter[str] = collections.Counter()
        self.count = 0

    def admit(self, client: str) -> str | None:
        """Count a new connection from ``client``; or say why it is refused (and count nothing)."""
        if self.count >= self.total:
            return f"the server holds its most connections ({self.total})"
        if self.open[client] >= self.per_client:
            return f"{self.per_client} connections from this address are open already"
        self.open[client] += 1
        self.count += 1
        return None

    def release(self, client: str) -> None:
        if self.open[client] > 0:
            self.open[client] -= 1
            self.count -= 1
            if not self.open[client]:
                del self.open[client]


class StreamWatch:
    """Follows one connection's incoming bytes: HTTP request heads, their bodies, then (after an
    upgrade) WebSocket frame headers. ``feed(data)`` returns why to cut the connection, or None.
    ``head_since``: when the request head now awaited began (the connection's start for the
    first, its first byte for the next ones), None when none is awaited."""

    def __init__(self, max_frame: int, *, max_head: int = MAX_HEAD, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_frame, self.max_head, self.clock = max_frame, max_head, clock
        self.state = "head"  # head, body, ws, pass (chunked bodies: not followed)
        self.head = bytearray()
        self.head_since: float | None = clock()
        self.left = 0  # bytes of body or frame payload still to skip
        self.frame = bytearray()  # a frame header being read

    def feed(self, data: bytes) -> str | None:
        i, n = 0, len(data)
        while i < n:
            if self.state == "pass":
                return None
            if self.left:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left and self.state == "body":
                    self.state = "head"
                continue
            if self.state == "ws":
                i, why = self._frame(data, i)
            else:
                i, why = self._head(data, i)
            if why:
                return why
        return None

    def _head(self, data: bytes, i: int) -> tuple[int, str | None]:
        if not self.head:
            while i < len(data) and data[i] in b"\r\n":  # blank lines between requests
                i += 1
            if i == len(data):
                return i, None
            if self.head_since is None:
                self.head_since = self.clock()
        start = max(0, len(self.head) - 3)
        self.head += data[i:]
        end = self.head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self.head) > self.max_head:
                return len(data), f"a request head over {self.max_head} bytes"
            return len(data), None
        rest = len(self.head) - (end + 4)
        head = bytes(self.head[: end + 4])
        self.head.clear()
        self.head_since = None
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip().lower()
        if fields.get(b"upgrade") == b"websocket":
            self.state = "ws"
        elif b"chunked" in fields.get(b"transfer-encoding", b""):
            self.state = "pass"
        else:
            try:
                self.left = int(fields.get(b"content-length", b"0"))
            except ValueError:
                self.left = 0
            self.state = "body" if self.left > 0 else "head"
        return len(data) - rest, None

    def _frame(self, data: bytes, i: int) -> tuple[int, str | None]:
        f = self.frame
        while i < len(data):
            f.append(data[i])
            i += 1
            if len(f) < 2:
                continue
            size7 = f[1] & 0x7F
            ext = {126: 2, 127: 8}.get(size7, 0)
            if len(f) == 2 + ext:  # the length is known: judged before the mask and payload come
                size = size7 if not ext else int.from_bytes(f[2:], "big")
                if size > self.max_frame:
                    f.clear()
                    return i, f"a WebSocket frame of {size} bytes announced (the most is {self.max_frame})"
            if len(f) == 2 + ext + (4 if f[1] & 0x80 else 0):
                self.left = size7 if not ext else int.from_bytes(f[2 : 2 + ext], "big")
                f.clear()
                return i, None
        return i, None


class Throttle:
    """``allow(key)``: True at most once every ``every`` seconds per key; ``skipped(key)``: how
    many were held back since the last one allowed."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.last: dict[str, float] = {}
        self.held: collections.Counter[str] = collections.Counter()

    def allow(self, key: str) -> bool:
        now = self.clock()
        if now - self.last.get(key, -1e18) >= self.every:
            self.last[key] = now
            return True
        self.held[key] += 1
        return False

    def skipped(self, key: str) -> int:
        return self.held.pop(key, 0)
