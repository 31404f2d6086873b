"""The web page ``moshikit serve`` answers ``GET /`` with (unless ``--static DIR``): plain HTML,
CSS and JavaScript in ``moshikit/web/`` (microphone through getUserMedia, Opus through
WebCodecs in the protocol's Ogg framing, playback through an AudioWorklet). The same files
work as ``python -m moshi.server --static <that folder>``."""

from __future__ import annotations

import socket
from pathlib import Path

PAGE_DIR = Path(__file__).resolve().parent / "web"


def lan_address() -> str | None:
    """This machine's address on its default route (what a phone on the same network opens),
    found without sending anything; None without a network."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))
        addr = s.getsockname()[0]
        return None if addr.startswith("0.") else addr
    except OSError:
        return None
    finally:
        s.close()


def page_url(ws_url: str, host: str, token: str | None) -> str:
    """The page's address for a server whose chat URL is ``ws_url``: http(s), the LAN address
    for a server on all interfaces, and ``?token=`` when one is required."""
    from urllib.parse import urlsplit

    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    shown = parts.hostname or "localhost"
    if host in ("0.0.0.0", "::", ""):
        shown = lan_address() or "localhost"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{parts.port}/" + (f"?token={token}" if token else "")


def with_token(ws_url: str, token: str | None) -> str:
    return ws_url + (f"?token={token}" if token else "")


def open_in_browser(url: str) -> bool:
    import webbrowser

    try:
        return bool(webbrowser.open(url))
    except Exception:  # noqa: BLE001 (no browser here: the address is printed anyway)
        return False
