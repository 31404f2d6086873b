"""moshikit serve: a Moshi chat server (moshi's protocol) on any backend."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import (DeviceOpt, Dtype, DtypeOpt, LMBackendName, LMBackendOpt, ModelOpt, RevisionOpt, device_value,
                      with_sampling_options)



@with_sampling_options
def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 lets other machines in "
                                                     "(browsers then need --ssl for the microphone).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0 picks a free one).")] = 8998,
    backend: LMBackendOpt = LMBackendName.auto,
    device: DeviceOpt = None,
    dtype: DtypeOpt = Dtype.auto,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Concurrent sessions, one stream each of a batched "
                                                              "model (GPU; torch backend). With 1, a second client "
                                                              "is refused while one talks.")] = 1,
    ssl: Annotated[bool, typer.Option("--ssl", help="Serve https/wss; without --ssl-cert/--ssl-key a self-signed "
                                                    "certificate is made (and kept) with openssl.")] = False,
    ssl_cert: Annotated[Optional[str], typer.Option("--ssl-cert", help="TLS certificate (PEM); implies --ssl.",
                                                    show_default=False)] = None,
    ssl_key: Annotated[Optional[str], typer.Option("--ssl-key", help="TLS private key (PEM); implies --ssl.",
                                                   show_default=False)] = None,
    static: Annotated[Optional[str], typer.Option("--static", help="Directory of another web client (e.g. "
                                                                   "Kyutai's moshi client dist/) served at / "
                                                                   "instead of moshikit's page.",
                                                  show_default=False)] = None,
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in this machine's browser.")] = False,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback --host without a token "
                                                            "(anyone who reaches the port can use the model).")] = False,
    token: Annotated[Optional[str], typer.Option("--token", envvar="MOSHIKIT_SERVE_TOKEN", metavar="TOKEN",
                                                 help="The access token to require (default: a new one when "
                                                      "--host is not loopback; at least 16 characters). "
                                                      "Visible to other users in `ps`: prefer --token-file "
                                                      "or the environment variable.", show_default=False)] = None,
    token_file: Annotated[Optional[str], typer.Option("--token-file", metavar="PATH",
                                                      help="Read the access token from the first line of this "
                                                           "file.", show_default=False)] = None,
    allow_origin: Annotated[Optional[list[str]], typer.Option("--allow-origin", metavar="ORIGIN",
                                                              help="Also let pages from this origin "
                                                                   "(https://example.org) open sessions; repeatable; "
                                                                   "* for any page. Pages of the server's own "
                                                                   "addresses, and clients that are not browsers, "
                                                                   "need none.", show_default=False)] = None,
    max_connections: Annotated[int, typer.Option("--max-connections", min=1, help="Connections held open at "
                                                                                 "once; more are refused (503).")] = 200,
    max_per_client: Annotated[int, typer.Option("--max-per-client", min=1,
                                                help="Connections held open at once from one client "
                                                     "address.")] = 32,
    header_timeout: Annotated[float, typer.Option("--header-timeout", min=0.1,
                                                  help="Seconds a client has to send a request's headers "
                                                       "(and finish a TLS handshake) before it is cut "
                                                       "off.")] = 10.0,
    idle_timeout: Annotated[float, typer.Option("--idle-timeout", min=0.1, help="Close a session that sends no "
                                                                                "audio for this many seconds.")] = 30.0,
    revision: RevisionOpt = None,
    sampling=None,  # SamplingOverrides, from with_sampling_options
) -> None:
    """Serve Moshi over the protocol of moshi's own server (WebSocket /api/chat, Opus audio).

    The official web client, `python -m moshi.client` and `moshikit chat --url` work
    against it. Runs in the foreground until Ctrl-C.
    """
    from .. import access, webpage
    from .. import serve as lib
    from ..errors import UsageError
    from .output import Out

    out = Out()
    if (ssl_cert is None) != (ssl_key is None):
        raise UsageError("--ssl-cert and --ssl-key go together")
    if token_file is not None:
        if token:
            raise UsageError("--token and --token-file (or MOSHIKIT_SERVE_TOKEN) go one at a time")
        token = access.read_token_file(token_file)
    elif token:
        access.check_token(token, "--token (or MOSHIKIT_SERVE_TOKEN)")
    from ..origins import OriginPolicy

    OriginPolicy(host, (), allow_origin or ())  # a bad --allow-origin: one line before the model loads
    sampling = sampling or None  # nothing given: the model's own settings
    ctx = None
    if ssl or ssl_cert:
        if ssl_cert is None:
            cert, key = lib.self_signed_certificate(hosts=(host,))
            out.message(f"[dim]TLS: self-signed certificate {cert} (browsers ask you to accept it once)[/]")
        else:
            cert, key = ssl_cert, ssl_key
        ctx = lib.ssl_context(cert, key)
    out.message("[dim]loading the model...[/]")
    conv = lib.load_conversation(model, backend=backend.value, device=device_value(device), sampling=sampling,
                                 batch=batch, revision=revision, dtype=dtype.value)
    required = access.token_for(host, no_auth=no_auth, token=token)
    if no_auth and not access.is_loopback(host):
        out.message(f"[yellow]warning:[/] --no-auth on {host}: anyone who reaches this port can use the model")
    cfg = lib.ServeConfig(host=host, port=port, static=static, idle_timeout=idle_timeout, token=required,
                          allow_origins=tuple(allow_origin or ()), max_connections=max_connections,
                          max_connections_per_client=max_per_client, header_timeout=header_timeout)
    server = lib.ChatServer(conv, cfg, log=out.log)  # plain text: the lines hold what clients sent

    def ready(url: str) -> None:
        page = webpage.page_url(url, host, required)
        info = f"{conv.lm.info.backend} LM on {conv.lm.info.device}, {batch} session{'s' if batch > 1 else ''}"
        out.message(f"serving Moshi ({info}); Ctrl-C stops")
        out.message(f"open {page}" + ("  (the token is required: share this address only with who may use it)"
                                      if required else ""))
        out.write(webpage.with_token(url, required) + "\n")
        if open_page and not webpage.open_in_browser(page):
            out.message("[dim]--open: no browser found here; open the address above[/]")

    lib.serve_forever(server, ready, ssl_ctx=ctx)
    out.message("stopped")
