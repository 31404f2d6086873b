"""OpenAI's speech API (POST /v1/audio/speech) served by moshikit on the tiny synthetic Kyutai TTS
model, with the official `openai` package as the client: streamed wav and mp3 that decode to the
audio the model makes, the other formats, and OpenAI-shaped refusals with one log line each."""

from __future__ import annotations

import time

import numpy as np
import pytest

from servetts import audio_of, speak_stream, tts_server

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "Hi there. Fine, you?"


@pytest.fixture(scope="module")
def served():
    with tts_server(batch=2, queue=2) as (running, lines):
        yield running, lines


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0].base + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(served):
    """TEXT through moshi-server's protocol on the same server: the float samples to expect."""
    messages, code = speak_stream(served[0].base, TEXT.split())
    assert code == 1000
    return audio_of(messages)


def s16(pcm: np.ndarray) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32767


def test_streamed_wav_arrives_while_the_text_is_spoken(served, client, reference):
    running, _ = served
    chunks, first_audio, busy_then = [], None, None
    started = time.perf_counter()
    with client.audio.speech.with_streaming_response.create(model="synthetic", voice="alloy", input=TEXT,
                                                             response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            if first_audio is None and sum(len(c) for c in chunks) > 44:
                first_audio = time.perf_counter() - started
                busy_then = running.service.engine.load()  # still speaking the rest of the text
    total = time.perf_counter() - started
    data = b"".join(chunks)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[40:44] == b"\xff\xff\xff\xff"  # open-ended
    pcm = s16(data[44:])
    assert pcm.size == reference.size
    np.testing.assert_allclose(pcm, reference, atol=1 / 32767)  # one 16-bit step
    assert busy_then == 1, "the first audio came only after the whole text was spoken"
    print(f"wav: first audio after {first_audio:.2f} s of {total:.2f} s for {reference.size / 24000:.2f} s of audio")


def test_streamed_mp3_decodes_to_the_speech(served, client, reference, tmp_path):
    import sphn

    with client.audio.speech.with_streaming_response.create(model="synthetic", voice="default", input=TEXT,
                                                             response_format="mp3") as response:
        assert response.headers["content-type"] == "audio/mpeg"
        pieces = list(response.iter_bytes())
    path = tmp_path / "speech.mp3"
    path.write_bytes(b"".join(pieces))
    back, rate = sphn.read(str(path))
    # encoder delay and padding plus the one silent first frame: at most a few MPEG frames (1152 samples)
    assert rate == 24000 and reference.size <= back.shape[-1] <= reference.size + 4 * 1152
    assert len(pieces) > 1


def test_sse_events_carry_the_same_audio(served, client, reference):
    """``stream_format: sse`` (as the official client sends it): speech.audio.delta events whose
    base64 bytes, joined, are the pcm of the plain stream, then speech.audio.done with usage."""
    import base64
    import json

    events = []
    with client.audio.speech.with_streaming_response.create(model="synthetic", voice="default", input=TEXT,
                                                             response_format="pcm", stream_format="sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-audio-media-type"] == "audio/pcm"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"} and len(kinds) > 2
    pcm = s16(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]))
    np.testing.assert_allclose(pcm, reference, atol=1 / 32767)  # one 16-bit step, as the wav stream
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == len(TEXT.split()) and usage["output_tokens"] == -(-reference.size // 1920)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.slow
def test_pcm_opus_and_flac(served, client):
    import io

    import soundfile as sf
    import sphn

    wav = client.audio.speech.create(model="synthetic", voice="default", input="Hi you.", response_format="wav")
    expected = s16(wav.content[44:])
    pcm = client.audio.speech.create(model="synthetic", voice="default", input="Hi you.", response_format="pcm")
    np.testing.assert_array_equal(s16(pcm.content), expected)  # the same samples, without the header
    flac = client.audio.speech.create(model="synthetic", voice="default", input="Hi you.", response_format="flac")
    back, rate = sf.read(io.BytesIO(flac.content), dtype="float32")
    assert rate == 24000
    np.testing.assert_allclose(back, expected, atol=1 / 32767)  # both 16-bit
    opus = client.audio.speech.create(model="synthetic", voice="default", input="Hi you.", response_format="opus")
    back, rate = sphn.read_opus_bytes(opus.content)
    assert rate == 48000 and abs(back.shape[-1] / 2 - expected.size) <= 1920


@pytest.mark.parametrize("kwargs, error, param, says", [
    ({"voice": "nobody"}, "BadRequestError", "voice", "default, expresso/"),
    ({"input": "a " * 2100}, "BadRequestError", "input", "at most 4096"),
    ({"response_format": "aac"}, "BadRequestError", "response_format", "wav, mp3, opus, flac, pcm"),
    ({"speed": 3.0}, "BadRequestError", "speed", "0.5 to 2"),
    ({"speed": 9.0}, "BadRequestError", "speed", "0.25 to 4.0"),
    ({"model": "whisper-1"}, "NotFoundError", "model", "'synthetic'"),
    ({"input": "\u65e5\u672c"}, "BadRequestError", "input", "cannot speak"),
    ({"extra_body": {"stream_format": "chunks"}}, "BadRequestError", "stream_format", "'audio'"),
])
def test_bad_requests_get_openai_errors_and_one_log_line(served, client, kwargs, error, param, says):
    running, lines = served
    before = len(lines)
    args = dict(model="synthetic", voice="default", input="Hi you.", response_format="wav") | kwargs
    with pytest.raises(getattr(openai, error)) as err:
        client.audio.speech.create(**args)
    body = err.value.body
    assert body["param"] == param and says in body["message"] and body["type"] == "invalid_request_error"
    assert len(lines) - before == 1 and "refused" in lines[-1]
    assert not any("Traceback" in ln for ln in lines)


def test_raw_bodies_that_are_not_requests(served):
    import json
    import urllib.error
    import urllib.request

    running, lines = served
    for body, status in ((b"not json", 400), (b"[1, 2]", 400), (b"{" + b" " * (70 << 10) + b"}", 413)):
        req = urllib.request.Request(running.base + "/v1/audio/speech", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == status and "message" in json.loads(err.value.read())["error"]
    assert not any("Traceback" in ln for ln in lines)


def test_a_client_that_leaves_mid_speech_frees_its_slot(served):
    import http.client
    import json

    running, lines = served
    host, port = running.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/audio/speech", json.dumps({"model": "synthetic", "input": TEXT, "response_format": "pcm"}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.read1(1920)  # the first audio came
    assert running.service.engine.load() == 1
    conn.close()  # gone before the end
    for _ in range(200):
        if running.service.engine.load() == 0:
            break
        time.sleep(0.05)
    assert running.service.engine.load() == 0
    assert not any("Traceback" in ln for ln in lines)
