"""POST /v1/audio/translations on a tiny synthetic Hibiki: the official `openai` package translates
in every response format (the text is what `translate` gives offline for the same audio), and bad,
oversized, too long and too many requests get OpenAI's error object with the matching status."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import numpy as np
import pytest
import soundfile as sf

from moshikit.serve import translate as served
from moshikit.translate import Translation

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # openai marks the translations API so
F = 1920


def wav_bytes(pcm: np.ndarray, rate: int = 24000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format="WAV")
    return buf.getvalue()


# ---------------------------------------------------------------- without a server


def fake_result() -> Translation:
    pieces = [{"time": 0.08, "text": " Hello"}, {"time": 0.16, "text": " wor"}, {"time": 0.24, "text": "ld"},
              {"time": 0.32, "text": " "}, {"time": 0.4, "text": "again."}]
    return Translation("upload", 2.5, output_seconds=2.64, pieces=pieces)


def test_response_bodies_in_every_format():
    import srt
    import webvtt

    r = fake_result()
    assert json.loads(served.render_translation(r, "json")) == {"text": "Hello world again."}
    assert served.render_translation(r, "text") == "Hello world again.\n"
    verbose = json.loads(served.render_translation(r, "verbose_json"))
    assert verbose["language"] == "english" and verbose["duration"] == 2.5 and verbose["task"] == "translate"
    assert verbose["text"] == "Hello world again."
    # a space in a piece of its own still ends the word before it: "again." is a word of its own
    [seg] = verbose["segments"]
    assert seg["text"] == "Hello world again." and seg["start"] == 0.08 and seg["end"] == 0.48
    assert {"id", "seek", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"} <= seg.keys()
    [sub] = list(srt.parse(served.render_translation(r, "srt")))
    assert sub.content == "Hello world again." and sub.start.total_seconds() == 0.08
    [cue] = webvtt.from_buffer(io.StringIO(served.render_translation(r, "vtt")))
    assert cue.text == "Hello world again." and cue.end == "00:00:00.480"
    with pytest.raises(ValueError):
        served.render_translation(r, "tsv")


def test_an_upload_is_opened_measured_and_removed(speech, tmp_path):
    import os

    up = served.open_upload(wav_bytes(speech[:24000]), "clip.wav", max_seconds=5)
    try:
        assert up.duration == pytest.approx(1.0) and os.path.exists(up.path) and up.path.endswith(".wav")
    finally:
        up.close()
    assert not os.path.exists(up.path)
    with pytest.raises(served.TooLong, match="2 s long; this server takes at most 1 s"):
        served.open_upload(wav_bytes(speech[:48000]), "x.wav", max_seconds=1)
    with pytest.raises(served.AudioError, match="^the uploaded file: not a readable audio file"):
        served.open_upload(b"RIFF junk", "../../etc/passwd", max_seconds=5)
    leftovers = [p for p in os.listdir(os.path.dirname(up.path)) if p.startswith("moshikit-upload-")]
    assert leftovers == []
# ---------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(mimi_weights):
    from moshikit.serve import RunningServer, ServeConfig
    from moshikit.serve.app import ServerApp

    svc = served.load_translate_service("synthetic", backend="torch", device="cpu", seed=1, max_seconds=3,
                                        max_upload=200_000, queue=0)
    lines: list[str] = []
    running = RunningServer(ServerApp([svc], ServeConfig(port=0), log=lines.append))
    yield running, svc, lines
    running.stop()


def client(running, **kw):
    import openai

    return openai.OpenAI(base_url=f"{running.base}/v1", api_key="unused", max_retries=0, **kw)


def test_the_openai_client_translates_in_every_format(server, speech):
    import srt
    import webvtt
    from moshikit.translate import translate_stream

    running, svc, _ = server
    pcm = speech[: 2 * 24000]
    api = client(running)
    got = {fmt: api.audio.translations.create(model="hibiki", file=("talk.wav", wav_bytes(pcm)),
                                              response_format=fmt, prompt="ignored")
           for fmt in ("json", "text", "srt", "vtt", "verbose_json")}
    # the server ran the same seeded model on the same audio as `translate` does offline (16-bit wav)
    offline = translate_stream(svc.tr, [sf.read(io.BytesIO(wav_bytes(pcm)), dtype="float32")[0]])
    assert offline.text and got["json"].text == offline.text
    assert got["text"] == offline.text + "\n"
    verbose = got["verbose_json"]
    assert verbose.language == "english" and verbose.duration == 2.0 and verbose.text == offline.text
    segments = offline.transcript().segments
    assert [(s.start, s.text) for s in verbose.segments] == [(round(s.start, 3), s.text) for s in segments]
    assert [s.content for s in srt.parse(got["srt"])] == [s.text for s in segments]
    assert [c.text for c in webvtt.from_buffer(io.StringIO(got["vtt"]))] == [s.text for s in segments]


def test_bad_requests_get_openai_errors(server, speech):
    import openai

    running, _, lines = server
    api = client(running)
    with pytest.raises(openai.BadRequestError) as err:
        api.audio.translations.create(model="hibiki", file=("a.wav", b"not audio \x1b[31m" * 20))
    assert err.value.status_code == 400 and err.value.param == "file"
    assert "could not decode the audio" in err.value.message and "Traceback" not in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        api.audio.translations.create(model="hibiki", file=("a.wav", wav_bytes(speech[:24000])),
                                      response_format="docx")
    assert err.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as err:  # 4 s: over this server's 3 s
        api.audio.translations.create(model="hibiki", file=("a.wav", wav_bytes(speech[: 4 * 24000])))
    assert err.value.code == "audio_too_long"
    with pytest.raises(openai.APIStatusError) as err:  # 300 kB: over this server's 200 kB
        api.audio.translations.create(model="hibiki", file=("a.wav", wav_bytes(speech[: 150_000])))
    assert err.value.status_code == 413 and err.value.body and "message" in err.value.body
    assert sum("translate: refused" in line for line in lines) >= 4
    assert all("\x1b" not in line for line in lines)


def test_a_form_without_a_file_is_refused(server):
    import aiohttp

    running, _, _ = server

    async def post():
        async with aiohttp.ClientSession() as s:
            form = aiohttp.FormData({"model": "hibiki"})
            async with s.post(f"{running.base}/v1/audio/translations", data=form) as r:
                return r.status, await r.json()

    status, body = asyncio.run(post())
    assert status == 400 and body["error"]["param"] == "file" and body["error"]["type"] == "invalid_request_error"


def test_a_full_server_says_429_with_retry_after(server, speech):
    import openai

    running, svc, lines = server
    hold = threading.Event()
    busy = svc.executor.submit(hold.wait)  # the model's one thread is taken...
    result: dict = {}

    def first():
        result["text"] = client(running).audio.translations.create(
            model="hibiki", file=("a.wav", wav_bytes(speech[:24000]))).text

    t = threading.Thread(target=first)
    t.start()
    try:
        for _ in range(100):  # ... and a request waits for it: with queue=0 the server is now full
            if svc.pending:
                break
            threading.Event().wait(0.05)
        assert svc.pending == 1
        [model] = svc.models()
        assert model["busy"] == 1 and model["waiting"] == 0 and model["route"] == "/v1/audio/translations"
        with pytest.raises(openai.RateLimitError) as err:
            client(running).audio.translations.create(model="hibiki", file=("a.wav", wav_bytes(speech[:24000])))
        assert err.value.status_code == 429 and int(err.value.response.headers["Retry-After"]) > 0
    finally:
        hold.set()
        busy.result(10)
        t.join(60)
    assert result["text"]  # the waiting one was served once the model was free
    assert svc.pending == 0 and any("translate: busy" in line for line in lines)


def test_a_client_that_hangs_up_has_its_translation_stopped(server, speech):
    import aiohttp

    running, svc, lines = server
    hold = threading.Event()
    busy = svc.executor.submit(hold.wait)  # the request waits for the model...
    done_before = sum("characters in" in line for line in lines)

    async def post_and_leave():
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(speech[: 3 * 24000]), filename="a.wav")
        async with aiohttp.ClientSession() as s:
            with pytest.raises(asyncio.TimeoutError):
                async with s.post(f"{running.base}/v1/audio/translations", data=form,
                                  timeout=aiohttp.ClientTimeout(total=1.0)):
                    pass

    try:
        asyncio.run(post_and_leave())  # ... and its client gives up meanwhile
        assert svc.pending == 1
    finally:
        hold.set()
        busy.result(10)
    for _ in range(200):
        if svc.pending == 0:
            break
        threading.Event().wait(0.05)
    assert svc.pending == 0 and any(" left; its translation stopped" in line for line in lines)
    assert sum("characters in" in line for line in lines) == done_before  # nothing was translated for it
