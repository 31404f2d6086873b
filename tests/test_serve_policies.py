"""The server's rules on their own, without a server or a web framework (moshikit.origins,
moshikit.access, moshikit.serve.limits, moshikit.clienttext). What they do to real requests is
tested over HTTP and WebSocket in tests/test_serve.py, tests/test_serve_access.py and tests/web/."""

from __future__ import annotations

import struct

import pytest

from moshikit import access, origins
from moshikit.clienttext import close_reason, shown
from moshikit.errors import UsageError
from moshikit.serve.limits import ConnectionGate, StreamWatch, Throttle


def test_origin_of_a_loopback_server():
    p = origins.OriginPolicy("127.0.0.1", [8998])
    for own in ("http://localhost:8998", "https://localhost:8998", "http://127.0.0.1:8998", "http://[::1]:8998",
                "HTTP://LOCALHOST:8998"):
        assert p.allows(own), own
    assert p.allows(None)  # not a browser page: moshi.client, curl, moshikit chat --url
    for foreign in ("https://evil.example", "http://127.0.0.1:8999", "http://localhost", "null", "",
                    "http://localhost:8998/page", "file://", "http://user@localhost:8998",
                    "http://127.0.0.1.evil.example:8998", "http://localhost:notaport"):
        assert not p.allows(foreign), foreign


def test_origin_of_a_server_on_every_address_and_allowed_ones():
    mine = {"192.168.7.9", "10.0.0.2", "fe80::1"}
    p = origins.OriginPolicy("0.0.0.0", [8998, 9000], ["https://example.org", "http://tool.local:8080/"],
                             is_local=lambda ip: ip in mine or ip.startswith("127."), names={"localhost", "box"})
    for own in ("https://192.168.7.9:8998", "http://10.0.0.2:9000", "http://localhost:8998", "https://box:8998",
                "https://example.org", "https://example.org:443", "http://tool.local:8080"):
        assert p.allows(own), own
    for foreign in ("http://192.168.7.10:8998", "http://[fe80::1]:8998", "http://example.org",
                    "https://box.evil.example:8998", "http://tool.local"):
        assert not p.allows(foreign), foreign  # fe80::1: the server listens on IPv4 only
    assert origins.OriginPolicy("::", [1], is_local=lambda ip: ip in mine, names=()).allows("http://[fe80::1]:1")
    assert origins.OriginPolicy("127.0.0.1", [1], ["*"]).allows("https://anything.example")
    for bad in ("example.org", "ftp://example.org", "https://example.org/path", "https://"):
        with pytest.raises(UsageError, match="not an origin"):
            origins.OriginPolicy("127.0.0.1", [1], [bad])


def test_which_requests_the_origin_is_checked_on():
    up = {"Upgrade": "websocket"}
    assert origins.needs_check("GET", up) and origins.needs_check("POST", {}) and origins.needs_check("delete", {})
    assert not origins.needs_check("GET", {}) and not origins.needs_check("HEAD", {})


def test_paths_and_tokens():
    for spelled in ("/./index.html", "/index.html/", "//index.html", "/%2e/index.html", "/api/../index.html",
                    "/a/../../index.html", "\\index.html"):
        assert access.normalise_path(spelled) == "/index.html", spelled
    assert access.normalise_path("/") == "/" and access.normalise_path("") == "/"
    assert access.needs_token("/app.js") and access.needs_token("/api/info")
    with pytest.raises(UsageError, match="at least 16 characters .this one has 1."):
        access.check_token("a")
    with pytest.raises(UsageError, match="printable"):
        access.check_token("0123456789abcdef ghi")
    assert access.check_token("0123456789abcdef") == "0123456789abcdef"
    q, h = {"token": "t" * 16}, {"Authorization": "Bearer " + "b" * 16}
    assert access.presented(q, h) == ("t" * 16, "query")
    assert access.presented({}, h) == ("b" * 16, "bearer")
    assert access.presented({}, {}, {access.cookie_name(80): "c" * 16}, 80) == ("c" * 16, "cookie")
    assert access.presented({}, {}, {access.cookie_name(80): "c" * 16}, 81) == ("", "")


def test_token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("0123456789abcdef-token\nsecond line\n")
    assert access.read_token_file(f) == "0123456789abcdef-token"
    f.write_text("short\n")
    with pytest.raises(UsageError, match="token-file .*at least 16 characters"):
        access.read_token_file(f)
    f.write_text("\n\n")
    with pytest.raises(UsageError, match="empty"):
        access.read_token_file(f)
    with pytest.raises(UsageError, match="no such file"):
        access.read_token_file(tmp_path / "none")


def test_client_text_in_a_log_line():
    assert shown("[bold red]x[/]") == "[bold red]x[/]"  # kept as text: log lines are printed without markup
    assert shown("a\nb\x1b[31mc\u202ed\x00") == "a\\x0ab\\x1b[31mc\\u202ed\\x00"
    long = shown("x" * 1000)
    assert len(long) == 120 and long.endswith("…")
    assert close_reason("é" * 100) == ("é" * 60).encode() + "…".encode() and len(close_reason("é" * 100)) <= 123


def test_connection_gate():
    gate = ConnectionGate(total=3, per_client=2)
    assert gate.admit("a") is None and gate.admit("a") is None
    assert "2 connections from this address" in gate.admit("a")
    assert gate.admit("b") is None
    assert "most connections (3)" in gate.admit("c")
    gate.release("a")
    assert gate.admit("c") is None and gate.count == 3
    for c in "cb":
        gate.release(c)
    gate.release("nobody")
    assert gate.count == 1 and dict(gate.open) == {"a": 1}


def test_stream_watch_heads_bodies_and_frames():
    now = [100.0]
    w = StreamWatch(1000, clock=lambda: now[0])
    assert w.head_since == 100.0  # the first head is awaited from the connection's start
    assert w.feed(b"GET / HTTP/1.1\r\nHost: x\r") is None and w.head_since == 100.0
    assert w.feed(b"\n\r\n") is None and w.head_since is None  # complete: nothing awaited
    now[0] = 105.0
    assert w.feed(b"POST /x HTTP/1.1\r\nContent-Length: 8\r\n\r\n") is None and w.state == "body"
    assert w.feed(b"\r\n\r\n\r\n\r\n") is None and w.head_since is None  # a body, not a head
    assert w.feed(b"GE") is None and w.head_since == 105.0  # the next head, from its first byte
    assert w.feed(b"T / HTTP/1.1\r\n" + b"X: " + b"y" * 70000) == "a request head over 65536 bytes"
    w = StreamWatch(1000)
    assert w.feed(b"GET /api/chat HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\n\x82\x85abcd12345") is None
    assert w.state == "ws" and w.left == 0
    assert w.feed(b"\x82\xfe\x03\xe8mask" + bytes(1000)) is None  # 1000 bytes: the most
    for cut in (1, 3):  # the header of a frame announcing 2^63 - 1 bytes, in pieces: refused once the length is in
        w = StreamWatch(1000)
        w.feed(b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n")
        data, got = b"\x82\xff" + struct.pack(">Q", (1 << 63) - 1), []
        for i in range(0, len(data), cut):
            got.append(w.feed(data[i : i + cut]))
        assert got[:-1] == [None] * (len(got) - 1) and "frame of 9223372036854775807 bytes" in got[-1]
    w = StreamWatch(1000)
    assert w.feed(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"\x82\xff" * 9) is None  # not followed


def test_throttle():
    now = [0.0]
    t = Throttle(10.0, clock=lambda: now[0])
    assert t.allow("k") and not t.allow("k") and not t.allow("k") and t.allow("other")
    now[0] = 10.0
    assert t.allow("k") and t.skipped("k") == 2 and t.skipped("k") == 0
