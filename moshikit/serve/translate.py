"""OpenAI's ``POST /v1/audio/translations``, served by Hibiki: speech in, English text out.

The route takes OpenAI's multipart upload (``file``; ``model`` and ``prompt`` are accepted and
not used: the server serves one Hibiki, and Hibiki takes no prompt) and answers in the
``response_format`` asked: ``json`` (``{"text": ...}``), ``text``, ``srt``, ``vtt`` or
``verbose_json`` (duration, language ``english``, the text and its timed segments). Times are
those of the translation's own timeline (Hibiki speaks its translation as it listens: a word
comes out a little after the words it translates), as ``moshikit translate`` writes them.

The upload is bounded in size (``max_upload``, 25 MB as OpenAI's) and in duration
(``max_seconds``, read from the file's header before it waits for the model). The model runs
on one worker thread, one request at a time, with at most ``queue`` requests waiting behind it;
past that a request is refused at once with 429 and ``Retry-After``. A client that hangs up
(waiting or being served) has its translation stopped before the next 2 s of input, so the
model goes on to the next. Every refusal is one log line, and every error is OpenAI's error
object (``serve.http``), never a traceback.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .app import Logs
from ..clienttext import shown
from ..errors import AudioError, MoshikitError
from .upload import ClientLeft, TooLong, Upload, form_of, open_upload, read_blocks

ROUTE = "/v1/audio/translations"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json",
               "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
               "vtt": "text/vtt; charset=utf-8"}
MAX_UPLOAD = 25 * 1024 * 1024  # OpenAI's limit for an audio upload
FORM_OVERHEAD = 64 * 1024  # the multipart envelope and the small fields around the file
MAX_SECONDS = 600.0
QUEUE = 4


def verbose_json(result) -> dict:
    """OpenAI's ``verbose_json`` of a translation (``TranslationVerbose``): the input's duration,
    ``english``, the text, and one entry per subtitle segment of the translation. The fields
    Whisper fills from its decoder (``tokens``, ``avg_logprob``, ``compression_ratio``,
    ``no_speech_prob``) have neutral values here: Hibiki gives none of them."""
    transcript = result.transcript()
    segments = [{"id": i, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                 "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0,
                 "no_speech_prob": 0.0}
                for i, s in enumerate(transcript.segments)]
    return {"task": "translate", "language": "english", "duration": round(result.duration, 3),
            "text": result.text, "segments": segments}


def render_translation(result, fmt: str) -> str:
    """The body of a response in ``fmt`` (one of ``RESPONSE_FORMATS``)."""
    import json

    from ..transcript import render

    if fmt == "json":
        return json.dumps({"text": result.text}, ensure_ascii=False)
    if fmt == "verbose_json":
        return json.dumps(verbose_json(result), ensure_ascii=False)
    if fmt == "text":
        return result.text + "\n"
    if fmt in ("srt", "vtt"):
        return render(result.transcript(), fmt)
    raise ValueError(f"unknown response format {fmt!r}")


# ---------------------------------------------------------------- the service


class TranslateService(Logs):
    """``POST /v1/audio/translations`` on one loaded ``Translator`` (see the module docstring)."""

    kind = "translate"

    def __init__(self, translator, name: str, *, max_upload: int = MAX_UPLOAD, max_seconds: float = MAX_SECONDS,
                 queue: int = QUEUE, retry_after: int = 10, opts=None) -> None:
        from ..translate import TranslateOptions

        self.tr = translator
        self.name = name
        self.max_upload = max_upload
        self.max_seconds = max_seconds
        self.queue = queue
        self.retry_after = retry_after
        self.opts = opts or TranslateOptions(formats=[])
        self.pending = 0  # requests at the model: running (at most one) and waiting
        self.ctx = None
        self.executor: ThreadPoolExecutor | None = None

    # ---- the Service protocol

    def models(self) -> list[dict]:
        info = self.tr.describe()
        return [{"id": self.name, "route": ROUTE, "protocol": "openai", "slots": 1, "busy": int(self.pending > 0),
                 "queue": self.queue, "waiting": max(0, self.pending - 1), "backend": info["lm_backend"],
                 "device": info["device"]}]

    def routes(self) -> list:
        from starlette.routing import Route

        return [Route(ROUTE, self.handle, methods=["POST"])]

    async def start(self, ctx) -> None:
        self.ctx = ctx
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="moshikit-translate")

    async def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    # ---- work

    def run(self, upload: Upload, gone: threading.Event | None = None):
        """On the model's thread: the whole upload through Hibiki (``translate_stream``), stopped
        between two blocks of input once ``gone`` is set."""
        from ..translate import translate_stream

        return translate_stream(self.tr, read_blocks(upload, gone=gone), source="upload", opts=self.opts)


    async def handle(self, request):
        from starlette.datastructures import UploadFile
        from starlette.responses import Response

        from .http import HTTPProblem, busy_response, openai_error, read_body

        peer = request.client.host if request.client else "?"

        def refuse(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str = "invalid_request_error"):
            self.log(f"translate: refused {peer}: {shown(message, 200)}")
            self.count("translate_refused")
            return openai_error(status, message, type=type, param=param, code=code)

        try:
            body = await read_body(request, self.max_upload + FORM_OVERHEAD)
        except HTTPProblem as problem:  # over the limit (413), or too slow to arrive (408)
            self.log(f"translate: refused {peer}: {problem.message}")
            self.count("translate_refused")
            return problem.as_response()
        try:
            form = await form_of(request, body)
        except ValueError as exc:
            return refuse(400, f"the request is not a multipart form ({shown(exc, 80)})")
        del body  # the form holds the file now (spooled to disk past 1 MB)
        try:
            upload = form.get("file")
            fmt = form.get("response_format") or "json"
            if not isinstance(upload, UploadFile):
                return refuse(400, "the request has no audio file (multipart field 'file')", "file")
            if fmt not in RESPONSE_FORMATS:
                return refuse(400, f"response_format {shown(fmt, 40)!r} is not one of "
                              f"{', '.join(RESPONSE_FORMATS)}", "response_format")
            data = await upload.read()
            filename = upload.filename or ""
        finally:
            await form.close()
        if len(data) > self.max_upload:
            return refuse(413, f"the file is over {self.max_upload} bytes", "file")
        if self.pending > self.queue:
            self.log(f"translate: busy, refused {peer} ({self.pending} requests at the model)")
            self.count("translate_busy")
            return busy_response(self.retry_after, "the translation model is busy")
        self.pending += 1
        try:
            try:
                opened = await asyncio.to_thread(open_upload, data, filename, self.max_seconds)
            except TooLong as exc:
                return refuse(400, str(exc), "file", "audio_too_long")
            except AudioError as exc:
                return refuse(400, f"could not decode the audio: {exc}", "file")
            del data
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            gone = threading.Event()
            watcher = asyncio.create_task(hung_up(request, gone))
            try:
                result = await loop.run_in_executor(self.executor, self.run, opened, gone)
            except ClientLeft:
                self.log(f"translate: {peer} left; its translation stopped after {time.perf_counter() - started:.1f} s")
                self.count("translate_left")
                return Response(status_code=400)  # nobody reads it
            except MoshikitError as exc:
                return refuse(400, f"could not translate the audio: {exc}", "file")
            except Exception as exc:  # noqa: BLE001 - the model failed: one line, no traceback
                self.log(f"translate: failed for {peer}: {type(exc).__name__}: {shown(exc, 120)}")
                self.count("translate_failed")
                return openai_error(500, "the model failed on this request", type="server_error")
            finally:
                watcher.cancel()
                opened.close()
        finally:
            self.pending -= 1
        took = time.perf_counter() - started
        self.log(f"translate: {peer} {result.duration:.1f} s of audio -> {len(result.text)} characters "
                 f"in {took:.1f} s ({fmt})")
        self.count("translate_done")
        return Response(render_translation(result, fmt), media_type=MEDIA_TYPES[fmt])


async def hung_up(request, gone: threading.Event) -> None:
    """Set ``gone`` when the client of ``request`` (its body read) disconnects."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


def load_translate_service(model: str | None, *, backend: str | None = None, device: str | None = None,
                           dtype: str | None = None, revision: str | None = None, seed: int | None = None,
                           max_upload: int = MAX_UPLOAD, max_seconds: float = MAX_SECONDS, queue: int = QUEUE,
                           on_load: Callable[[str], None] | None = None) -> TranslateService:
    """Load Hibiki through ``moshikit translate``'s path (``load_translator``: a catalog name,
    repo id, path or ``synthetic``) and wrap it in the service."""
    from ..translate import load_translator

    tr = load_translator(model, backend=backend, device=device, dtype=dtype, revision=revision, seed=seed)
    name = model or "hibiki"
    if on_load is not None:
        on_load(f"translate: {name} on {tr.lm.info.backend}/{tr.lm.info.device}")
    return TranslateService(tr, name, max_upload=max_upload, max_seconds=max_seconds, queue=queue)


__all__ = ["MAX_SECONDS", "MAX_UPLOAD", "RESPONSE_FORMATS", "ROUTE", "TranslateService", "hung_up", "load_translate_service",
           "render_translation", "verbose_json"]
