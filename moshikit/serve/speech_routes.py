"""``POST /v1/audio/speech``: OpenAI's speech API over the served TTS model, the audio streamed as it is made.

JSON body: ``model`` (the served model's id, or one of OpenAI's TTS model names), ``input``
(at most ``Limits.max_input`` characters), ``voice`` (see ``serve.tts``), ``response_format``
(``mp3`` by default as OpenAI; wav, opus, flac, pcm; see ``speech_formats``), ``speed`` and
``stream_format``: ``audio`` (the bytes of the format, streamed) or ``sse`` (OpenAI's server-sent
events: ``speech.audio.delta`` events carrying the same bytes in base64 as they are made, then
``speech.audio.done`` with ``usage``: input words and output 80 ms frames, as Kyutai's models
count neither in OpenAI's tokens); ``instructions`` is accepted and ignored (Kyutai's models
take no style prompt). Errors are OpenAI's error object; once the audio has started, a failure
can only end the body early (and is logged; with ``sse``, an ``error`` event says why).
"""

from __future__ import annotations

import asyncio
import json

from .. import clienttext
from ..errors import MoshikitError
from . import speech_formats

KNOWN_FIELDS = ("model", "input", "voice", "response_format", "speed", "stream_format", "instructions")


async def speech(service, request):
    from starlette.responses import StreamingResponse

    from .http import HTTPProblem, busy_response, openai_error, read_body

    peer = request.client.host if request.client else "?"

    def refuse(status: int, message: str, param: str | None = None, code: str | None = None):
        service.log(f"tts: refused a speech request from {peer}: {message}")
        service.count("tts_refused")
        return openai_error(status, message, param=param, code=code)

    try:
        body = await read_body(request, service.limits.max_body)
    except HTTPProblem as exc:
        return refuse(exc.status, exc.message, code=exc.code)
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return refuse(400, "the body must be a JSON object")
    if not isinstance(req, dict):
        return refuse(400, "the body must be a JSON object")
    model = req.get("model")
    if not isinstance(model, str) or model not in (service.name, *OPENAI_MODELS):
        return refuse(400 if model is None else 404, f"model {clienttext.shown(model, 80)!r} is not served here: "
                      f"use {service.name!r}", param="model", code="model_not_found")
    text = req.get("input")
    if not isinstance(text, str) or not text.strip():
        return refuse(400, "input must be a non-empty string", param="input")
    if len(text) > service.limits.max_input:
        return refuse(400, f"input is {len(text)} characters long; at most {service.limits.max_input}",
                      param="input", code="string_above_max_length")
    fmt = req.get("response_format", "mp3")
    if fmt not in speech_formats.SUPPORTED:
        known = fmt in speech_formats.FORMATS
        return refuse(400, f"response_format {clienttext.shown(fmt, 40)!r} is not "
                      f"{'supported here' if known else 'a format'}: use one of "
                      f"{', '.join(speech_formats.SUPPORTED)}", param="response_format")
    stream_format = req.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        return refuse(400, f"stream_format {clienttext.shown(stream_format, 40)!r}: use 'audio' (the audio bytes, "
                      "streamed) or 'sse' (OpenAI's speech.audio.delta events)", param="stream_format")
    try:
        bonus = service.pace(req.get("speed", 1.0))
    except MoshikitError as exc:
        return refuse(400, str(exc), param="speed")
    voice_name = req.get("voice")
    if voice_name is not None and not isinstance(voice_name, str):
        return refuse(400, "voice must be a string", param="voice")
    try:
        voice = await service.voice(voice_name)
        await asyncio.to_thread(service.check_text, text)
    except MoshikitError as exc:
        return refuse(400, str(exc), param="voice" if "voice" in str(exc) else "input")
    try:
        encoder = speech_formats.SpeechEncoder(fmt)
    except Exception as exc:  # noqa: BLE001 - e.g. a libsndfile built without MP3: one line, not a 500
        return refuse(400, f"response_format {fmt}: not available on this server ({type(exc).__name__})",
                      param="response_format")
    loop = asyncio.get_running_loop()
    job, events = service.job(voice, loop, padding_bonus=bonus)
    from ..tts.text import sentences

    for sentence in sentences([text]):
        job.push(sentence)
    job.end()
    if not service.engine.submit(job):
        service.log(f"tts: busy, refused a speech request from {peer} (429)")
        service.count("tts_busy")
        return busy_response(RETRY_AFTER_S, "every TTS slot is taken")
    service.engine.wake()
    service.count("tts_requests")
    service.log(f"tts: speech for {peer}: {len(text)} characters, {fmt}{' as sse' if stream_format == 'sse' else ''}, "
                f"voice {clienttext.shown(voice.name, 80)}")
    made = {"samples": 0}
    body = _body(service, job, events, encoder, peer, made)
    if stream_format == "sse":
        return StreamingResponse(_events(body, len(text.split()), made), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Audio-Media-Type": encoder.content_type})
    return StreamingResponse(body, media_type=encoder.content_type)


RETRY_AFTER_S = 2  # seconds a refused client is told to wait
#: OpenAI's TTS model names, accepted for the one TTS model served (clients written for OpenAI send them).
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


def _event(data: dict) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def _events(body, words: int, made: dict):
    """OpenAI's ``stream_format: sse`` around the audio body: a delta event per piece of the format's
    bytes, then ``speech.audio.done`` (or an ``error`` event when the audio ended early)."""
    import base64

    async for data in body:
        if isinstance(data, _Failed):
            yield _event({"type": "error", "error": {"message": data.message, "type": "server_error"}})
            return
        yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    frames = -(-made["samples"] // 1920)  # 80 ms at 24 kHz
    yield _event({"type": "speech.audio.done", "usage": {"input_tokens": words, "output_tokens": frames,
                                                         "total_tokens": words + frames}})


class _Failed(bytes):
    """The end of a body cut by a failure (no bytes; its message for an ``sse`` client)."""

    def __new__(cls, message: str) -> "_Failed":
        obj = super().__new__(cls, b"")
        obj.message = message
        return obj


async def _body(service, job, events: asyncio.Queue, encoder, peer: str, made: dict):
    """The response body: the format's header, then audio as each frame is generated."""
    try:
        head = encoder.start()
        if head:
            yield head
        while True:
            event = await events.get()
            kind = event[0]
            if kind == "audio":
                made["samples"] += len(event[1])
                data = encoder.write(event[1])
                if data:
                    yield data
            elif kind == "done":
                tail = encoder.close()
                if tail:
                    yield tail
                return
            elif kind == "error":
                service.log(f"tts: speech for {peer} failed: {clienttext.shown(event[1], 160)}")
                yield _Failed(f"the speech failed: {event[1]}")  # nothing to the audio body
                return
    finally:
        job.cancel()
        service.engine.wake()
