"""OpenAI's ``POST /v1/audio/transcriptions`` on the served STT model.

The route takes OpenAI's multipart upload: ``file`` (wav, flac, ogg/opus, mp3... whatever
``transcribe`` reads), ``model``, ``language`` and ``prompt`` (accepted; the server serves one
model, Kyutai's models take no prompt and find the language themselves), ``response_format``
(``json``, ``text``, ``srt``, ``vtt``, ``verbose_json``), ``timestamp_granularities[]``
(``segment``, the default, and/or ``word``: what ``verbose_json`` lists) and ``stream``
(``true``: server-sent events, ``transcript.text.delta`` per word as the model says it, then
``transcript.text.done``, as OpenAI sends them).

A request takes a slot of the shared batched model, like a WebSocket stream; its audio is read
block by block and fed as fast as the model goes (never more than a few seconds ahead of it).
Words and times are ``transcribe``'s (``moshikit.transcript``: refined against the audio's
energy), segments and srt/vtt too. The upload is bounded in size (25 MB, as OpenAI's) and
duration (read from its header before any model time is spent); errors are OpenAI's error object.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

from ..clienttext import shown
from ..errors import AudioError
from .http import HTTPProblem, busy_response, openai_error, read_body
from .stt_engine import FILE_CHUNK, SAMPLE_RATE, Feed, transcript_words
from .upload import TooLong, form_of, open_upload, read_blocks

ROUTE = "/v1/audio/transcriptions"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json",
               "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
               "vtt": "text/vtt; charset=utf-8"}
GRANULARITIES = ("word", "segment")
MAX_UPLOAD = 25 * 1024 * 1024  # OpenAI's limit for an audio upload
FORM_OVERHEAD = 64 * 1024  # the multipart envelope and the small fields around the file
MAX_SECONDS = 1800.0
#: How far a request's audio is read ahead of the model (seconds).
READ_AHEAD = 8.0
LANGUAGES = {"en": "english", "fr": "french"}


# ---------------------------------------------------------------- response bodies


def verbose_json(t, language: str, granularities) -> dict:
    """OpenAI's ``verbose_json`` (``TranscriptionVerbose``) of a ``Transcript``. The fields Whisper
    fills from its decoder (``tokens``, ``avg_logprob``, ``compression_ratio``, ``no_speech_prob``)
    have neutral values: Kyutai's models give none of them."""
    out = {"task": "transcribe", "language": language, "duration": round(t.duration, 3), "text": t.text,
           "usage": {"type": "duration", "seconds": int(math.ceil(t.duration))}}
    if "segment" in granularities or not granularities:
        out["segments"] = [{"id": i, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                            "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0,
                            "no_speech_prob": 0.0} for i, s in enumerate(t.segments)]
    if "word" in granularities:
        out["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in t.words]
    return out


def render_body(t, fmt: str, language: str = "english", granularities=()) -> str:
    """The body of a response in ``fmt`` (one of ``RESPONSE_FORMATS``)."""
    from ..transcript import render

    if fmt == "json":
        return json.dumps({"text": t.text, "usage": {"type": "duration", "seconds": int(math.ceil(t.duration))}},
                          ensure_ascii=False)
    if fmt == "verbose_json":
        return json.dumps(verbose_json(t, language, granularities), ensure_ascii=False)
    if fmt == "text":
        return t.text + "\n"
    if fmt in ("srt", "vtt"):
        return render(t, fmt)
    raise ValueError(f"unknown response format {fmt!r}")


def sse(data: dict) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


# ---------------------------------------------------------------- one request in a slot


class Job:
    """One upload in a slot: its audio read on a thread of its own (at most ``READ_AHEAD`` seconds
    ahead of the model), its words built as ``transcribe`` builds them."""

    def __init__(self, service, upload, *, on_word=None) -> None:
        from ..transcript import Energy

        self.service, self.upload = service, upload
        model = service.model
        self.energy = Energy()
        self.words = transcript_words(model, self.energy)
        self.prefix = model.prefix_frames
        self.samples = upload.samples
        self._energy_frames = 0
        self.on_word = on_word  # (text) on the loop, as each word completes
        self.feed = Feed(chunk=FILE_CHUNK, sink=self._sink, on_end=self._end)
        self.feed.tap = self._tap
        self.done = asyncio.Event()
        self.transcript = None
        self.error: str | None = None
        self.bad_input = False  # the error is the upload's (400), not the server's (500)

    # worker thread

    def _tap(self, frames) -> None:
        for f in frames:  # the audio's energy (for word refinement), prefix and padding left out
            i, self._energy_frames = self._energy_frames, self._energy_frames + 1
            start = (i - self.prefix) * f.size
            if i >= self.prefix and start < self.samples:
                self.energy.add(f[: self.samples - start])

    def _sink(self, feed, tokens) -> None:
        for t in tokens:
            for w in self.words.feed(t.step, t.token):
                if w.text and self.on_word is not None:
                    self.service.post(self.on_word, w.text)

    def _end(self, feed) -> None:
        from ..transcript import Transcript, segment

        if feed.error or self.error:
            self.error = self.error or feed.error
        elif not feed.cancelled:
            duration = self.samples / SAMPLE_RATE
            for w in self.words.finish(feed.steps):
                if w.text and self.on_word is not None and w.start <= duration + 1e-6:
                    self.service.post(self.on_word, w.text)
            words = [w for w in self.words.words if w.start <= duration + 1e-6]
            for w in words:
                w.end = min(w.end, duration)
            self.transcript = Transcript("upload", duration, words, segment(words), [], self.service.model.describe())
        self.service.post(self.done.set)

    # reader thread

    def read(self) -> None:
        feed = self.feed
        try:
            feed.push_frames(self.prefix)
            for block in read_blocks(self.upload):
                while feed.buffered_samples > READ_AHEAD * SAMPLE_RATE and not feed.cancelled:
                    time.sleep(0.02)
                if feed.cancelled:
                    return
                feed.push(block)
            feed.close(flush_frames=self.service.model.delay_frames)
        except AudioError as exc:
            self.error, self.bad_input = str(exc), True
            feed.cancel()
        finally:
            self.upload.close()


# ---------------------------------------------------------------- the route


class Transcriptions:
    """``POST /v1/audio/transcriptions`` for one ``SttService``."""

    def __init__(self, service, *, max_upload: int | None = None, max_seconds: float | None = None) -> None:
        self.service = service
        self.max_upload = int(max_upload or MAX_UPLOAD)
        self.max_seconds = float(max_seconds or MAX_SECONDS)

    def refuse(self, peer: str, status: int, message: str, *, param: str | None = None, code: str | None = None):
        self.service.log(f"stt: {peer} transcription refused ({status}): {shown(message)}")
        self.service.count(f"stt_http_{status}")
        return openai_error(status, message, param=param, code=code)

    async def handle(self, request):
        from starlette.datastructures import UploadFile
        from starlette.responses import Response, StreamingResponse

        svc = self.service
        peer = shown(f"{request.client.host}:{request.client.port}" if request.client else "?")
        try:
            body = await read_body(request, self.max_upload + FORM_OVERHEAD)
        except HTTPProblem as exc:
            svc.log(f"stt: {peer} transcription refused ({exc.status}): {exc.message}")
            svc.count(f"stt_http_{exc.status}")
            return exc.as_response()
        try:
            form = await form_of(request, body)
        except ValueError as exc:
            return self.refuse(peer, 400, f"the body must be a multipart form ({exc})")
        file = form.get("file")
        if not isinstance(file, UploadFile):
            return self.refuse(peer, 400, "missing the audio 'file'", param="file")
        fmt = str(form.get("response_format") or "json")
        if fmt not in RESPONSE_FORMATS:
            return self.refuse(peer, 400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                               param="response_format")
        granularities = [str(g) for g in form.getlist("timestamp_granularities[]") + form.getlist(
            "timestamp_granularities")]
        if any(g not in GRANULARITIES for g in granularities):
            return self.refuse(peer, 400, "timestamp_granularities[] takes word and segment",
                               param="timestamp_granularities")
        stream = str(form.get("stream") or "false").lower() in ("true", "1")
        language = str(form.get("language") or "")[:32]
        language = LANGUAGES.get(language.lower(), language.lower() or "english")
        data = await file.read()
        if len(data) > self.max_upload:
            return self.refuse(peer, 413, f"the file is larger than {self.max_upload} bytes", param="file",
                               code="file_too_large")
        if not data:
            return self.refuse(peer, 400, "the uploaded file is empty", param="file")
        try:
            upload = await asyncio.to_thread(open_upload, data, file.filename or "", self.max_seconds)
        except (AudioError, TooLong) as exc:
            return self.refuse(peer, 400, str(exc), param="file")
        del data, body, form
        queue: asyncio.Queue | None = asyncio.Queue() if stream else None
        job = Job(svc, upload, on_word=queue.put_nowait if queue is not None else None)
        engine = svc.engine
        if engine is None or engine.failed:
            upload.close()
            svc.log(f"stt: {peer} transcription refused (503): the model has failed")
            return openai_error(503, engine.failed if engine else "the model is not running", type="server_error")
        if not engine.submit(job.feed, may_wait=True):
            upload.close()
            svc.log(f"stt: {peer} transcription refused (429): every slot is taken and {svc.queue} wait")
            svc.count("stt_http_429")
            return busy_response(retry_after=max(1.0, min(30.0, upload.duration / 4)))
        threading.Thread(target=job.read, name="moshikit-stt-upload", daemon=True).start()
        started = time.perf_counter()
        svc.count("stt_transcriptions")

        def done_line() -> None:
            t = job.transcript
            if t is not None:
                svc.log(f"stt: {peer} transcribed {t.duration:.1f} s into {len(t.words)} words in "
                        f"{time.perf_counter() - started:.1f} s ({'stream' if stream else fmt})")

        if stream:
            return StreamingResponse(self._events(job, queue, request, done_line), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        while not job.done.is_set():
            try:
                await asyncio.wait_for(job.done.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.feed.cancel()
                    svc.log(f"stt: {peer} went away before its transcription was done")
                    return Response(status_code=499)
        if job.transcript is None:
            svc.log(f"stt: {peer} transcription failed: {shown(job.error)}")
            bad = job.bad_input
            return openai_error(400 if bad else 500, job.error or "the transcription failed",
                                type="invalid_request_error" if bad else "server_error", param="file" if bad else None)
        done_line()
        return Response(render_body(job.transcript, fmt, language, granularities), media_type=MEDIA_TYPES[fmt])

    async def _events(self, job: Job, queue: asyncio.Queue, request, done_line):
        first = True
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                finished = asyncio.ensure_future(job.done.wait())
                await asyncio.wait({getter, finished}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    finished.cancel()
                    text = getter.result()
                    yield sse({"type": "transcript.text.delta", "delta": text if first else " " + text})
                    first = False
                    continue
                getter.cancel()
                while not queue.empty():
                    text = queue.get_nowait()
                    yield sse({"type": "transcript.text.delta", "delta": text if first else " " + text})
                    first = False
                break
            if job.transcript is None:
                self.service.log(f"stt: a streamed transcription failed: {shown(job.error)}")
                yield sse({"error": {"message": job.error or "failed", "type": "server_error", "param": None,
                                     "code": None}})
                return
            done_line()
            yield sse({"type": "transcript.text.done", "text": job.transcript.text})
        finally:
            job.feed.cancel()  # a client gone mid-stream frees its slot
