"""``/api/tts_streaming``: moshi-server's streaming TTS protocol (see ``tts_wire``) over the served model.

The connection takes a slot when it opens (none free: an ``Error`` message "no free channels",
as moshi-server sends it, then close 1013), sends ``Ready``, then reads words while it sends
audio and timed words as they are generated; once the audio of the last word is out it closes
(1000). Bounds: each message at most ``Limits.max_input`` characters, the whole text at most
``Limits.max_stream_text``, no text for ``Limits.idle_timeout`` before ``Eos`` closes it (1008),
a client that leaves ``Limits.max_queued_seconds`` of audio unread is dropped (1008).
"""

from __future__ import annotations

import asyncio

from .. import clienttext
from ..errors import MoshikitError
from . import tts_wire

BUSY = 1013
POLICY = 1008
UNSUPPORTED = 1003


async def streaming(service, websocket) -> None:
    from starlette.websockets import WebSocketDisconnect

    peer = websocket.client.host if websocket.client else "?"
    params = websocket.query_params

    async def refuse(code: int, message: str, encoder=None) -> None:
        service.log(f"tts: refused a stream from {peer}: {clienttext.shown(message, 160)}")
        service.count("tts_refused")
        await websocket.accept()
        for msg in (encoder or tts_wire.Encoder("PcmMessagePack")).error(message):
            await websocket.send_bytes(msg)
        await websocket.close(code, clienttext.close_reason(message).decode("utf-8"))

    try:
        fmt = tts_wire.parse_format(params.get("format"))
    except tts_wire.ProtocolError as exc:
        return await refuse(POLICY, str(exc))
    encoder = tts_wire.Encoder(fmt)
    try:
        voice = await service.voice(params.get("voice"))
    except MoshikitError as exc:
        return await refuse(POLICY, str(exc), encoder)
    loop = asyncio.get_running_loop()
    job, events = service.job(voice, loop)
    slot_engine = service.engine.streams_text  # a SerialEngine takes the job once its text is in
    if (slot_engine and not service.engine.submit(job)) or (not slot_engine and service.engine.free() <= 0):
        service.count("tts_busy")
        return await refuse(BUSY, "no free channels", encoder)
    service.count("tts_streams")
    service.log(f"tts: stream for {peer}: voice {clienttext.shown(voice.name, 80)}, {fmt}")
    reader = None
    reason = "done"
    try:
        await websocket.accept()  # inside: a client gone already still gives its slot back
        reader = asyncio.ensure_future(_read(service, websocket, job, slot_engine))
        for msg in encoder.ready():
            await websocket.send_bytes(msg)
        while True:
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                problem = reader.result()
                if problem is not None:  # the client broke the protocol or went quiet
                    reason = problem[1]
                    for msg in encoder.error(problem[1]):
                        await websocket.send_bytes(msg)
                    await websocket.close(problem[0], clienttext.close_reason(problem[1]).decode("utf-8"))
                    return
                reader = asyncio.ensure_future(asyncio.sleep(3600))  # the client is done sending: wait on audio
                continue
            event = getter.result()
            if event[0] == "audio":
                for msg in encoder.audio(event[1]):
                    await websocket.send_bytes(msg)
            elif event[0] == "word":
                for msg in encoder.word(*event[1:]):
                    await websocket.send_bytes(msg)
            elif event[0] == "error":
                reason = event[1]
                for msg in encoder.error(event[1]):
                    await websocket.send_bytes(msg)
                await websocket.close(POLICY, clienttext.close_reason(event[1]).decode("utf-8"))
                return
            else:
                await websocket.close(1000)
                return
    except (WebSocketDisconnect, RuntimeError, OSError):
        reason = "client left"
    finally:
        if reader is not None:
            reader.cancel()
        job.cancel()
        service.engine.wake()
        service.log(f"tts: stream for {peer} ended ({clienttext.shown(reason, 120)})")


async def _read(service, websocket, job, slot_engine: bool):
    """The client's words into the job until ``Eos``; (close code, why) when it must be dropped."""
    from starlette.websockets import WebSocketDisconnect

    total = 0
    limits = service.limits
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), limits.idle_timeout)
        except asyncio.TimeoutError:
            return POLICY, f"no text for {limits.idle_timeout:g} s"
        except WebSocketDisconnect:
            job.cancel()
            return 1000, "client left"
        if message.get("type") == "websocket.disconnect":
            job.cancel()
            return 1000, "client left"
        data = message.get("bytes")
        if data is None:
            data = message.get("text") or ""
        try:
            parsed = tts_wire.parse_message(data, max_text=limits.max_input)
        except tts_wire.ProtocolError as exc:
            return UNSUPPORTED, str(exc)
        if isinstance(parsed, tts_wire.EosIn):
            job.end()
            if not slot_engine and not service.engine.submit(job):
                return BUSY, "no free channels"
            service.engine.wake()
            return None
        total += len(parsed.text)
        if total > limits.max_stream_text:
            return POLICY, f"more than {limits.max_stream_text} characters of text"
        if parsed.text.strip():
            job.push(parsed.text)
            service.engine.wake()
