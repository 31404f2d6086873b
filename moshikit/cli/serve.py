"""moshikit serve: a Moshi chat server (moshi's protocol) on any backend."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import (DeviceOpt, Dtype, DtypeOpt, HistoryCharsOpt, LLMModelOpt, LLMTimeoutOpt, LLMUrlOpt,
                      LMBackendName, LMBackendOpt, RayAddressOpt, RevisionOpt, SystemOpt, TurnSilenceOpt,
                      TurnThresholdOpt, VoiceOpt, device_value, with_sampling_options)

_RAY = "Ray cluster"


def _model_opt(name: str, what: str, *more: str):
    return Annotated[Optional[str], typer.Option(name, *more, metavar="MODEL", show_default=False, help=what)]


@with_sampling_options
def serve(
    model: _model_opt("--chat", "Moshi or Hibiki to talk with over /api/chat (a catalog name, repo id, folder or "
                                "synthetic; the default when no other model is named: moshiko).", "--model", "-m") = None,
    stt: _model_opt("--stt", "Speech-to-text for moshi-server's /api/asr-streaming and OpenAI's "
                             "/v1/audio/transcriptions (stt-1b, stt-2.6b, synthetic...); with --agent, the "
                             "agent's (default: this machine's, see `moshikit info`).") = None,
    tts: _model_opt("--tts", "Text-to-speech for moshi-server's /api/tts_streaming and OpenAI's /v1/audio/speech "
                             "(tts, pocket, synthetic...); with --agent, the agent's voice model.") = None,
    translate: _model_opt("--translate", "Hibiki for OpenAI's /v1/audio/translations (hibiki, synthetic-hibiki...).")
    = None,
    agent: Annotated[bool, typer.Option("--agent", help="Serve the agent (`moshikit agent`: Kyutai STT -> the "
                                                        "chat model of --llm-url/--llm-model -> Kyutai TTS) on "
                                                        "/api/chat instead of Moshi: the page and Moshi's clients "
                                                        "talk with it unchanged, one session at a time.")] = False,
    llm_url: LLMUrlOpt = "http://localhost:11434/v1",
    llm_model: LLMModelOpt = None,
    system: SystemOpt = None,
    voice: VoiceOpt = None,
    turn_threshold: TurnThresholdOpt = 0.5,
    turn_silence: TurnSilenceOpt = None,
    history_chars: HistoryCharsOpt = 12000,
    llm_timeout: LLMTimeoutOpt = 30.0,
    stt_batch: Annotated[Optional[int], typer.Option("--stt-batch", min=1, show_default=False,
                                                     help="Speech-to-text streams served at once (one batched model; "
                                                          "default sized for the device).")] = None,
    tts_batch: Annotated[Optional[int], typer.Option("--tts-batch", min=1, show_default=False,
                                                     help="Text-to-speech requests served at once (default sized "
                                                          "for the device).")] = None,
    tts_backend: Annotated[Optional[str], typer.Option("--tts-backend", metavar="NAME", show_default=False,
                                                       help="The text-to-speech backend: torch, cpu, mlx or pocket "
                                                            "(default: speak's choice for the model).")] = None,
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
    ray: Annotated[bool, typer.Option("--ray", rich_help_panel=_RAY,
                                      help="Serve on a Ray cluster (Ray Serve): the same routes on --host/--port, "
                                           "each replica loading the models (needs the ray extra).")] = False,
    ray_address: RayAddressOpt = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, rich_help_panel=_RAY,
                                          help="Replicas of the server on the cluster.")] = 1,
    replica_cpus: Annotated[Optional[float], typer.Option("--replica-cpus", min=0.01, show_default=False,
                                                          rich_help_panel=_RAY,
                                                          help="CPUs each replica reserves (default 1).")] = None,
    replica_gpus: Annotated[Optional[float], typer.Option("--replica-gpus", min=0.0, show_default=False,
                                                          rich_help_panel=_RAY,
                                                          help="GPUs each replica reserves; 0.5 puts two on a GPU. "
                                                               "Default: 1 for a CUDA --device, or when the "
                                                               "cluster has GPUs; else 0.")] = None,
    sampling=None,  # SamplingOverrides, from with_sampling_options
) -> None:
    """Serve Kyutai's models in the protocols clients already speak.

    Moshi over moshi's own protocol (/api/chat: the official web client,
    `python -m moshi.client`, `moshikit chat --url`); speech-to-text and
    text-to-speech over moshi-server's streaming protocol and OpenAI's audio
    API; Hibiki over OpenAI's translations. Several models in one server:
    `moshikit serve --stt stt-1b --tts pocket`. Runs until Ctrl-C.
    """
    from .. import access, webpage
    from .. import serve as lib
    from ..errors import UsageError
    from .output import Out

    out = Out()
    if agent:
        if model:
            raise UsageError("--agent and --chat both answer on /api/chat: serve one of them")
        if ray or ray_address:
            raise UsageError("--agent serves from this machine: leave out --ray")
        if batch > 1:
            raise UsageError("--batch is Moshi's: the agent serves one session at a time")
        if not llm_model:
            raise UsageError("which chat model? give --llm-model NAME (ollama: `ollama list`)")
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
    required = access.token_for(host, no_auth=no_auth, token=token)
    if no_auth and not access.is_loopback(host):
        out.message(f"[yellow]warning:[/] --no-auth on {host}: anyone who reaches this port can use the model")
    cfg = lib.ServeConfig(host=host, port=port, static=static, idle_timeout=idle_timeout, token=required,
                          allow_origins=tuple(allow_origin or ()), max_connections=max_connections,
                          max_connections_per_client=max_per_client, header_timeout=header_timeout)
    dev = device_value(device)
    if ray or ray_address:
        if ssl or ssl_cert:
            raise UsageError("--ray serves plain HTTP (Ray Serve's proxy): put TLS in front of it, or leave out --ssl")
        return _serve_on_ray(out, cfg, required, ray_address=ray_address, replicas=replicas, cpus=replica_cpus,
                             gpus=replica_gpus, device=dev, chat=model if model or not (stt or tts or translate)
                             else False, stt=stt, tts=tts, translate=translate, batch=batch, stt_batch=stt_batch,
                             tts_batch=tts_batch, backend=backend.value, dtype=dtype.value, revision=revision,
                             sampling=sampling)
    services = []
    if agent:
        import os

        out.message("[dim]loading the agent's speech-to-text and text-to-speech models...[/]")
        services.append(lib.load_agent_service(
            llm_url, llm_model, cfg, system=system, voice=voice, stt=stt, tts=tts, device=dev,
            seed=getattr(sampling, "seed", None), turn_threshold=turn_threshold, turn_silence=turn_silence,
            history_chars=history_chars, llm_timeout=llm_timeout, api_key=os.environ.get("MOSHIKIT_LLM_KEY") or None,
            tts_backend=tts_backend))
        stt = tts = None  # the agent's: not served on their own routes
    elif model or not (stt or tts or translate):
        out.message("[dim]loading the chat model...[/]")
        conv = lib.load_conversation(model, backend=backend.value, device=dev, sampling=sampling,
                                     batch=batch, revision=revision, dtype=dtype.value)
        services.append(lib.ChatServer(conv, cfg, model=model or "moshiko"))
    if stt:
        out.message("[dim]loading the speech-to-text model...[/]")
        services.append(lib.load_stt_service(stt, backend=backend.value, device=dev, dtype=dtype.value,
                                             batch=stt_batch, revision=revision))
    if tts:
        out.message("[dim]loading the text-to-speech model...[/]")
        services.append(lib.load_tts_service(tts, backend=tts_backend, device=dev, dtype=dtype.value,
                                             batch=tts_batch, revision=revision))
    if translate:
        out.message("[dim]loading the translation model...[/]")
        services.append(lib.load_translate_service(translate, backend=backend.value, device=dev, dtype=dtype.value,
                                                   revision=revision))
    server = lib.ServerApp(services, cfg, log=out.log)  # plain text: the lines hold what clients sent
    chat = server.service("chat")

    def ready(url: str) -> None:
        base = url.removesuffix("/api/chat")
        for s in services:
            if s is chat and agent:
                m = chat.models()[0]
                out.message(f"serving the agent ({m['llm']} at {llm_url}; stt {m['stt']}, tts {m['tts']}; one "
                            f"session at a time): {', '.join(lib.routes_of(s))}")
            elif s is chat:
                lm = chat.conv.lm.info
                out.message(f"serving Moshi ({lm.backend} LM on {lm.device}, {batch} session{'s' if batch > 1 else ''})"
                            f": {', '.join(lib.routes_of(s))}")
            else:
                for m in s.models():
                    out.message(f"serving {s.kind} {m['id']}: {', '.join(lib.routes_of(s))}")
        if chat is not None:
            page = webpage.page_url(url, host, required)
            out.message(f"open {page}" + ("  (the token is required: share this address only with who may use it)"
                                          if required else ""))
            out.write(webpage.with_token(url, required) + "\n")
            if open_page and not webpage.open_in_browser(page):
                out.message("[dim]--open: no browser found here; open the address above[/]")
        else:
            http = base.replace("wss://", "https://").replace("ws://", "http://")
            if required:
                out.message("  (the token is required: send it as `Authorization: Bearer TOKEN`, the "
                            "kyutai-api-key header or ?token=)")
            out.write(http + "\n")
        out.message("Ctrl-C stops")

    lib.serve_forever(server, ready, ssl_ctx=ctx)
    out.message("stopped")


def _serve_on_ray(out, cfg, required, *, ray_address, replicas, cpus, gpus, device, chat, stt, tts, translate, batch,
                  stt_batch, tts_batch, backend, dtype, revision, sampling) -> None:
    """``serve --ray``: the services as loaders each replica runs, deployed on Ray Serve until Ctrl-C."""
    import functools

    from .. import serve as lib
    from ..serve import ray_app

    loaders, streams = [], 2  # what one replica takes at once: its streams and requests, and /api/info
    if chat is not False:
        loaders.append(functools.partial(ray_app.chat_service, chat, cfg, backend=backend, device=device,
                                         sampling=sampling, batch=batch, revision=revision, dtype=dtype))
        streams += batch
    if stt:
        loaders.append(functools.partial(lib.load_stt_service, stt, backend=backend, device=device, dtype=dtype,
                                         batch=stt_batch, revision=revision))
        streams += stt_batch or 8
    if tts:
        loaders.append(functools.partial(lib.load_tts_service, tts, device=device, dtype=dtype, batch=tts_batch,
                                         revision=revision))
        streams += tts_batch or 8
    if translate:
        loaders.append(functools.partial(lib.load_translate_service, translate, backend=backend, device=device,
                                         dtype=dtype, revision=revision))
        streams += 5  # one at the model, four waiting
    spec = ray_app.RaySpec(loaders, cfg, replicas=replicas, num_cpus=cpus, num_gpus=gpus, device=device,
                           max_ongoing=streams)

    def ready(base: str) -> None:
        out.message(f"serving on Ray Serve: {replicas} replica{'s' if replicas > 1 else ''}, each loading "
                    f"{len(loaders)} model{'s' if len(loaders) > 1 else ''}; Ctrl-C stops")
        if required:
            out.message("  (the token is required: ?token=, `Authorization: Bearer TOKEN` or the kyutai-api-key "
                        "header)")
        out.write(base + "\n")

    out.message(f"[dim]deploying on Ray ({ray_address or 'the cluster of this machine'})...[/]")
    ray_app.serve_on_ray(spec, ready, address=ray_address)
    out.message("stopped")
