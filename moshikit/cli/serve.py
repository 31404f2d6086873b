"""moshikit serve: a Moshi chat server (moshi's protocol) on any backend."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import DeviceOpt, Dtype, DtypeOpt, LMBackendName, LMBackendOpt, ModelOpt, RevisionOpt, device_value



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
                                                      "--host is not loopback).", show_default=False)] = None,
    temp: Annotated[Optional[float], typer.Option(
        "--temp", min=0.0, help="Audio sampling temperature (0: greedy). Default: the model's config.",
        show_default=False)] = None,
    temp_text: Annotated[Optional[float], typer.Option("--temp-text", min=0.0, help="Text sampling temperature.",
                                                       show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="Audio top-k.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed the sampling (runs repeat exactly).",
                                                show_default=False)] = None,
    idle_timeout: Annotated[float, typer.Option("--idle-timeout", min=0.1, help="Close a session that sends no "
                                                                                "audio for this many seconds.")] = 30.0,
    revision: RevisionOpt = None,
) -> None:
    """Serve Moshi over the protocol of moshi's own server (WebSocket /api/chat, Opus audio).

    The official web client, `python -m moshi.client` and `moshikit chat --url` work
    against it. Runs in the foreground until Ctrl-C.
    """
    from .. import access, webpage
    from .. import serve as lib
    from ..backends.base import SamplingConfig
    from ..backends.lm_repo import resolve_repo
    from ..errors import UsageError
    from .output import Out

    out = Out()
    if (ssl_cert is None) != (ssl_key is None):
        raise UsageError("--ssl-cert and --ssl-key go together")
    sampling = None
    if any(v is not None for v in (temp, temp_text, top_k, seed)):
        base = SamplingConfig()
        if model is not None:
            try:
                from ..backends.lm_repo import sampling_from

                base = sampling_from(resolve_repo(model), None)
            except Exception:  # noqa: BLE001 (a hub id not yet resolved: LMGen's defaults)
                pass
        sampling = SamplingConfig(temp=base.temp if temp is None else temp,
                                  temp_text=base.temp_text if temp_text is None else temp_text,
                                  top_k=base.top_k if top_k is None else top_k, top_k_text=base.top_k_text,
                                  seed=seed)
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
    cfg = lib.ServeConfig(host=host, port=port, static=static, idle_timeout=idle_timeout, token=required)
    server = lib.ChatServer(conv, cfg, log=lambda m: out.message(f"[dim]{m}[/]"))

    def ready(url: str) -> None:
        page = webpage.page_url(url, host, required)
        info = f"{conv.lm.info.backend} LM on {conv.lm.info.device}, {batch} session{'s' if batch > 1 else ''}"
        out.message(f"serving Moshi ({info}); Ctrl-C stops")
        out.message(f"open {page}" + ("  (the token is required: share this address only with who may use it)"
                                      if required else ""))
        print(webpage.with_token(url, required), flush=True)
        if open_page and not webpage.open_in_browser(page):
            out.message("[dim]--open: no browser found here; open the address above[/]")

    lib.serve_forever(server, ready, ssl_ctx=ctx)
    out.message("stopped")
