"""A Moshi chat server on any backend, speaking the protocol of moshi's own server.

The official web client, ``python -m moshi.client``, ``moshikit chat --url`` and anything
written against moshi's server talk to it unchanged: ``GET /api/chat`` upgrades to a
WebSocket, the server sends the handshake byte, then Ogg Opus audio (kind 1) flows
both ways and Moshi's text pieces come as kind 2 (see ``wire``).

One model serves ``batch`` sessions at once: each session owns one stream (a "slot")
of a batched ``Conversation``; all slots advance together, one 80 ms frame per step.
A session that joins restarts its slot only (``Conversation.reset_slots``). With
``batch=1`` (the default) a second client gets a clear refusal (an error message, kind
5, then close code 1013 "try again later") instead of waiting, as moshi's server does,
for the first to leave.

Robustness: every bound is explicit. Messages over ``max_message`` bytes close the
session (1009); audio that is not Ogg Opus, or a message that would decode to more
than ``wire.MAX_PACKETS_PER_MESSAGE`` Opus packets, closes it (1003/1009); a client
whose queued input exceeds ``max_input_seconds`` is no longer read until the model
catches up (TCP back-pressure); one that leaves more than ``max_output_seconds`` of
replies unread, or sends no audio for ``idle_timeout``, is dropped. In a batch, a
stream whose audio is late by more than ``late_seconds`` gets silence for that step,
so one slow client never holds the others back. The model runs on one worker thread,
so the network loop stays responsive while it computes.

Slot restarts: the LM's streams restart exactly (same tokens as a fresh stream); the
codec decoder of a restarted slot decodes stand-in codes while the LM's delay fills,
which perturbs its first ~0.4 s of output audio (on the synthetic checkpoint: 27% of
the peak in the first answered frame, under 3% in the next four, then float noise). Per-session sampling
parameters in the URL (``text_temperature``, ``text_topk``, ``audio_temperature``,
``audio_topk``, as Kyutai's web client sends them; see ``chatparams``) apply to that
session with ``batch=1``; a batch shares one sampling, so there they are ignored (logged).

The web page (``webpage``) is served at ``/`` unless ``static`` names another client; a
``token`` (``access``) guards every path. A WebSocket or state-changing request from a web
page of another origin is refused with 403 (``origins``); clients that send no ``Origin``
pass. Connections are bounded in number, in total and per client address, and a request's
head must arrive within ``header_timeout``; a WebSocket frame announcing more than
``max_message`` bytes closes its connection when its header arrives (``serve.limits``). The
rules are plain functions and classes; ``serve.app`` (an ASGI middleware in front of every route)
and ``serve.guard`` (in front of every connection) apply them.

The chat service is one ``Service`` of a ``ServerApp``: a Starlette application that can hold
the other models too (speech-to-text, text-to-speech, translation), served by uvicorn
(``serve.running``) or on Ray Serve.
"""

from .app import Context, ServerApp, Service, routes_of
from .model import check_moshi_config, load_conversation
from .running import RunningServer, serve_forever
from .server import ChatServer
from .session import FRAME, FRAMES_PER_SECOND, ServeConfig, Session
from .tls import self_signed_certificate, ssl_context, tls_dir

__all__ = ["FRAME", "FRAMES_PER_SECOND", "ChatServer", "Context", "RunningServer", "ServeConfig", "ServerApp",
           "Service", "Session", "load_agent_service", "load_stt_service", "load_translate_service", "load_tts_service", "routes_of",
           "check_moshi_config", "load_conversation", "self_signed_certificate", "serve_forever", "ssl_context",
           "tls_dir"]


def load_agent_service(llm_url, llm_model, cfg=None, **options):
    """The agent (``moshikit agent``) as the chat service: Moshi's protocol on /api/chat."""
    from .agent import load_agent_service as load

    return load(llm_url, llm_model, cfg, **options)


def load_stt_service(model, **options):
    """Speech-to-text as a service (moshi-server's streaming protocol, OpenAI's transcriptions)."""
    from .stt import load_stt_service as load

    return load(model, **options)


def load_tts_service(model, **options):
    """Text-to-speech as a service (moshi-server's streaming protocol, OpenAI's speech)."""
    from .tts import load_tts_service as load

    return load(model, **options)


def load_translate_service(model, **options):
    """Hibiki as a service (OpenAI's translations)."""
    from .translate import load_translate_service as load

    return load(model, **options)
