"""Which web pages may drive a ``moshikit serve``: the ``Origin`` check (no web framework here).

A browser names the page that makes a request in its ``Origin`` header; a page from another
site can open a WebSocket to a server on this machine as easily as the server's own page can.
So a WebSocket, and any request that changes state (anything but GET, HEAD and OPTIONS), is
refused when it carries an ``Origin`` that is not the server's own: http or https on one of
the addresses it listens on (every address of this machine for ``0.0.0.0`` or ``::``, with
``localhost`` and the machine's names) and one of its ports, or one the user allows
(``--allow-origin``, repeatable; ``*`` allows any). A client that sends no ``Origin`` (``moshi.client``,
``moshikit chat --url``, curl: programs, not pages) is not a browser page and passes. Host names
in an ``Origin`` are never looked up: an address a page's own DNS can point anywhere
(DNS rebinding) is refused unless it is one of the server's names.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from .access import is_loopback
from .errors import UsageError

#: Methods that only read: a cross-site page's GET gets nothing it may read (browsers keep the
#: answer from it) and changes nothing here.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an ``Origin`` value (host lower case, IPv6 without brackets,
    the scheme's default port filled in); None for ``null`` and anything that is not
    ``http(s)://host[:port]``."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username is not None or parts.password is not None:
        return None
    return scheme, parts.hostname.lower().rstrip("."), port if port is not None else DEFAULT_PORTS[scheme]


def needs_check(method: str, headers) -> bool:
    """True for the requests an ``Origin`` must be checked on: WebSocket upgrades and every
    method that may change state. ``headers``: a case-insensitive mapping."""
    return method.upper() not in SAFE_METHODS or headers.get("Upgrade", "").lower() == "websocket"


@functools.lru_cache(maxsize=256)
def is_local_address(ip: str) -> bool:
    """True when ``ip`` is one of this machine's addresses (binding a socket to it succeeds)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.is_loopback:
        return True
    if addr.is_unspecified or addr.is_multicast:
        return False
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def machine_names() -> set[str]:
    """This machine's own names (what a user on the network may type in place of its address)."""
    names = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        name = (name or "").lower().rstrip(".")
        if name:
            names |= {name, name.split(".")[0] + ".local"}
    return names


class OriginPolicy:
    """The origins a server listening on ``host`` at ``ports`` accepts.

    ``allow``: extra origins (``https://example.org``, ``http://host:8080``) or ``*``.
    ``is_local`` decides whether an address is this machine's (for a wildcard ``host``);
    ``names``: this machine's names (default: ``machine_names()``); both are arguments so that a
    test can stand in for a machine with other addresses.
    """

    def __init__(self, host: str, ports: Iterable[int], allow: Iterable[str] = (), *,
                 is_local: Callable[[str], bool] = is_local_address, names: Iterable[str] | None = None) -> None:
        self.host = host.strip("[]").lower()
        self.ports = frozenset(int(p) for p in ports)
        self.any = False
        self.extra: set[tuple[str, str, int]] = set()
        for o in allow:
            if o.strip() == "*":
                self.any = True
                continue
            parsed = parse_origin(o)
            if parsed is None:
                raise UsageError(f"--allow-origin {o!r}: not an origin (write scheme://host[:port], e.g. "
                                 "https://example.org, or * for any page)")
            self.extra.add(parsed)
        self.is_local = is_local
        self.wildcard = self.host in WILDCARDS
        own = set(names) if names is not None else machine_names()
        if self.wildcard:
            self.names = own
        elif is_loopback(self.host):
            self.names = {"localhost", "127.0.0.1", "::1", self.host}
        else:
            self.names = {self.host} | self._addresses(self.host)

    @staticmethod
    def _addresses(host: str) -> set[str]:
        """The addresses the server's own ``--host`` name stands for (looked up once, at start)."""
        try:
            return {info[4][0].lower() for info in socket.getaddrinfo(host, None)}
        except OSError:
            return set()

    def own(self, origin: tuple[str, str, int]) -> bool:
        _, host, port = origin
        if port not in self.ports:
            return False
        if host in self.names:
            return True
        if self.wildcard:
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                return False
            if addr.version == 4 and self.host == "0.0.0.0" or self.host in ("::", ""):
                return self.is_local(str(addr))
        return False

    def allows(self, origin: str | None) -> bool:
        """True for no ``Origin`` (not a browser page), the server's own and the allowed ones."""
        if origin is None:
            return True
        if self.any:
            return True
        parsed = parse_origin(origin)
        return parsed is not None and (parsed in self.extra or self.own(parsed))
