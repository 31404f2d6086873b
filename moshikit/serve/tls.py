"""TLS for ``serve --ssl``: a self-signed certificate kept in moshikit's cache, or the user's."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import MoshikitError, UsageError


def tls_dir() -> Path:
    base = os.environ.get("MOSHIKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "moshikit")
    return Path(base) / "serve-tls"


def self_signed_certificate(directory: str | os.PathLike | None = None, *,
                            hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A self-signed certificate and key (``cert.pem``, ``key.pem``), made with ``openssl`` on
    first use and kept in ``directory`` (default: moshikit's cache) for later runs."""
    d = Path(directory) if directory is not None else tls_dir()
    cert, key = d / "cert.pem", d / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise MoshikitError("--ssl without --ssl-cert/--ssl-key makes a self-signed certificate with openssl, "
                            "which is not installed", hint="install openssl, or pass --ssl-cert and --ssl-key")
    names = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    for h in hosts:
        if h and h not in ("0.0.0.0", "::", "localhost", "127.0.0.1", "::1"):
            try:
                ipaddress.ip_address(h)
                names.append(f"IP:{h}")
            except ValueError:
                names.append(f"DNS:{h}")
    from ..atomic import atomic_path

    with atomic_path(key) as tmp_key, atomic_path(cert) as tmp_cert:  # both appear whole, or neither
        cmd = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "825",
               "-keyout", str(tmp_key), "-out", str(tmp_cert), "-subj", "/CN=moshikit serve",
               "-addext", "subjectAltName=" + ",".join(names)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise MoshikitError("openssl could not make a certificate: "
                                f"{(res.stderr or '').strip().splitlines()[-1:]}")
        os.chmod(tmp_key, 0o600)
    return cert, key


def ssl_context(cert: str | os.PathLike, key: str | os.PathLike):
    import ssl

    for what, p in (("certificate", cert), ("key", key)):
        if not Path(p).is_file():
            raise UsageError(f"{p}: no such TLS {what} file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"{cert}: cannot use this certificate and key ({exc})") from None
    return ctx
