"""Text a client sent, made fit for a log line or a WebSocket close reason.

A server's log lines are plain text: they hold what clients send (paths, parameter values,
``Origin`` headers), so whoever prints them must not read markup in them (``moshikit serve``
prints them with Rich's markup off); ``shown`` escapes what a terminal would act on and bounds
the length.
"""

from __future__ import annotations


def shown(text: object, limit: int = 120) -> str:
    """``text`` (something a client sent) safe to put in a log line: characters that are not
    printable (newlines, terminal escapes, bidi controls) written as ``\\xNN``/``\\uNNNN``,
    at most ``limit`` characters."""
    s = str(text)
    out = []
    for c in s[: limit + 1]:
        if c.isprintable():
            out.append(c)
        else:
            out.append(c.encode("unicode_escape").decode("ascii") if ord(c) > 0x7F else f"\\x{ord(c):02x}")
    s = "".join(out)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def close_reason(text: str, limit: int = 123) -> bytes:
    """A WebSocket close reason: UTF-8, at most 123 bytes (the protocol's limit), cut on a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[: limit - 3].decode("utf-8", "ignore").encode("utf-8") + "…".encode("utf-8")
