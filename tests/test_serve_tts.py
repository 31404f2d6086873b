"""moshi-server's streaming TTS protocol (/api/tts_streaming) served by moshikit, on the tiny
synthetic Kyutai TTS model: a client written from the protocol gets audio and timed words;
streams share the batched model and each gets what it gets alone; full, bad and broken
requests are refused cleanly, with one log line each."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest

from servetts import audio_of, received, speak_stream, tts_server, words_of, ws_url

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["Hi", "there,", "you."]


@pytest.fixture(scope="module")
def spoken(tts_model):
    """WORDS as `moshikit speak` says them (greedy), before the server takes the model (a model
    in a server is the server's: its modules stream for the server's batch)."""
    from moshikit.tts import Settings, chunks, generate, resolve_voice

    pcm: list = []
    speech = generate(tts_model, chunks([" ".join(WORDS)]), [resolve_voice(tts_model, None)], Settings(temp=0.0),
                      on_pcm=pcm.append)
    return np.concatenate(pcm), [w.text for w in speech.words]


@pytest.fixture(scope="module")
def served(spoken):
    with tts_server(batch=2, queue=0) as (running, lines):
        yield running, lines


@pytest.fixture(scope="module")
def alone(served):
    """WORDS spoken by the server with nothing else on it: (messages, close code)."""
    return speak_stream(served[0].base, WORDS)


def test_a_protocol_client_gets_audio_and_timed_words(alone):
    messages, code = alone
    assert code == 1000
    assert messages[0] == {"type": "Ready"}
    audio = [m for m in messages if m["type"] == "Audio"]
    assert audio and all(len(m["pcm"]) == 1920 for m in audio)  # one 80 ms frame per message, as moshi-server
    words = words_of(messages)
    assert [w for w, _, _ in words] == WORDS
    assert all(0 <= a < b for _, a, b in words) and all(words[i][2] <= words[i + 1][1] + 1e-6
                                                        for i in range(len(words) - 1))
    assert words[-1][2] <= len(audio) * 0.08 + 1e-6  # the words lie within the audio
    assert {m["type"] for m in messages} == {"Ready", "Audio", "Text"}


@pytest.mark.numerics
def test_the_same_words_speak_what_speak_says(alone, spoken):
    """The server speaks a text as `moshikit speak` does (greedy; another batch size, so a tolerance)."""
    messages, _ = alone
    ref, ref_words = spoken
    got = audio_of(messages)
    assert got.size == ref.size
    # batch 2 against batch 1: other kernels; float32 noise through Mimi stays far below one 16-bit step
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert [w for w, _, _ in words_of(messages)] == ref_words


@pytest.mark.numerics
def test_concurrent_streams_share_the_model_and_each_gets_what_it_gets_alone(served, alone):
    running, _ = served
    texts = [WORDS, ["Other", "words", "here."]]
    alone = [alone[0], speak_stream(running.base, texts[1])[0]]
    together: list = [None, None]

    def one(i):
        together[i] = speak_stream(running.base, texts[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for i in range(2):
        messages, code = together[i]
        assert code == 1000
        # the same batch shape whether alone or together: the same kernels, so the same samples
        np.testing.assert_array_equal(audio_of(messages), audio_of(alone[i]))
        assert words_of(messages) == words_of(alone[i])


def test_the_cpu_engine_serves_its_slots(spoken):
    """``serve --tts-backend cpu``: the slots run on moshikit's CPU engine (int8 where this torch
    has it: other numbers than torch's fp32, so the words, whose order the text fixes, and the frames)."""
    from moshikit.cpu_precision import int8_supported

    # int8: a model of its own (the module's server runs the default backend, the engine in fp32 on
    # this tiny checkpoint, and a model in a server is that server's).
    with tts_server(batch=2, backend="cpu", dtype="int8" if int8_supported() else "bf16") as (running, _):
        assert running.service.model.backend == "cpu" and running.service.batch == 2
        messages, code = speak_stream(running.base, WORDS)
    assert code == 1000 and [w for w, _, _ in words_of(messages)] == WORDS
    assert all(len(m["pcm"]) == 1920 for m in messages if m["type"] == "Audio") and audio_of(messages).size > 0


@pytest.mark.slow
def test_raw_pcm_and_ogg_opus_formats(served, alone):
    import sphn

    running, _ = served
    raw, code = speak_stream(running.base, WORDS, fmt="Pcm")
    assert code == 1000 and all(isinstance(m, bytes) for m in raw)
    pcm = np.frombuffer(b"".join(raw), "<f4")
    np.testing.assert_array_equal(pcm, audio_of(alone[0]))
    ogg, code = speak_stream(running.base, WORDS, fmt="OggOpus")
    assert code == 1000 and b"".join(ogg)[:4] == b"OggS"
    back, rate = sphn.read_opus_bytes(b"".join(ogg))
    assert rate == 48000 and abs(back.shape[-1] / 2 - pcm.size) <= 1920  # pre-skip and the last page
    packed, _ = speak_stream(running.base, WORDS, fmt="OggOpusMessagePack")
    assert packed[0] == {"type": "Ready"} and any(m["type"] == "OggOpus" for m in packed)
    assert [w for w, _, _ in words_of(packed)] == WORDS


def refused(base: str, **params):
    from websockets.sync.client import connect

    with connect(ws_url(base, **params), open_timeout=30) as ws:
        messages = received(ws)
    return messages, ws.close_code


@pytest.mark.parametrize("params, code, says", [
    ({"format": "Wav"}, 1008, "PcmMessagePack, OggOpusMessagePack, Pcm, OggOpus"),
    ({"format": "PcmMessagePack", "voice": "../../etc/passwd"}, 1008, "expresso/ex03-ex01_happy_001_channel1_334s.wav"),
])
def test_bad_format_or_voice_is_refused_with_the_valid_ones(served, params, code, says):
    running, lines = served
    before = len(lines)
    messages, got = refused(running.base, **params)
    assert got == code
    assert messages[-1]["type"] == "Error" and says in messages[-1]["message"]
    assert len([ln for ln in lines[before:] if "refused" in ln]) == 1
    assert not any("Traceback" in ln for ln in lines)


def test_another_voice_of_the_model(served, alone):
    import json
    import urllib.request

    running, _ = served
    with urllib.request.urlopen(running.base + "/api/info", timeout=30) as r:
        (tts,) = [s for s in json.loads(r.read())["services"] if s["kind"] == "tts"]
    assert tts["id"] == "synthetic" and tts["slots"] == 2 and "vctk/p225_023.wav" in tts["voices"]
    messages, code = speak_stream(running.base, WORDS, voice="vctk/p225_023.wav")
    other, default = audio_of(messages), audio_of(alone[0])
    assert code == 1000 and other.size > 0
    assert other.size != default.size or not np.array_equal(other, default)


def test_broken_messages_close_the_stream_and_free_its_slot(served):
    from websockets.sync.client import connect

    running, lines = served
    for bad in (b"\xc1\xc1", msgpack.packb({"type": "Voice", "embeddings": [0.0], "shape": [1]}),
                msgpack.packb({"type": "Text", "text": "x" * 5000})):
        with connect(ws_url(running.base, format="PcmMessagePack"), open_timeout=30) as ws:
            ws.send(bad)
            messages = received(ws)
        assert ws.close_code == 1003 and messages[-1]["type"] == "Error"
    messages, code = speak_stream(running.base, ["Hi", "\u65e5\u672c", "you."])  # a word the model cannot speak
    assert code == 1008 and messages[-1]["type"] == "Error" and "cannot speak" in messages[-1]["message"]
    messages, code = speak_stream(running.base, WORDS)  # the server carries on
    assert code == 1000 and words_of(messages)
    assert not any("Traceback" in ln for ln in lines)


def test_a_full_server_refuses_websockets_with_1013_and_http_with_429(served):
    import contextlib
    import json
    import urllib.error
    import urllib.request

    from websockets.sync.client import connect

    running, lines = served
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(ws_url(running.base, format="PcmMessagePack"), open_timeout=30))
                for _ in range(2)]
        for ws in held:
            assert msgpack.unpackb(ws.recv(timeout=30)) == {"type": "Ready"}
        messages, code = refused(running.base, format="PcmMessagePack")
        assert code == 1013 and messages == [{"type": "Error", "message": "no free channels"}]
        body = json.dumps({"model": "synthetic", "input": "Hi you.", "voice": "default"}).encode()
        req = urllib.request.Request(running.base + "/v1/audio/speech", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 429 and int(err.value.headers["Retry-After"]) >= 1
        assert json.loads(err.value.read())["error"]["type"] == "rate_limit_error"
    for _ in range(100):  # the held slots are freed once their clients leave
        if running.service.engine.free() == 2:
            break
        import time

        time.sleep(0.05)
    assert running.service.engine.free() == 2
    messages, code = speak_stream(running.base, WORDS)
    assert code == 1000
    assert sum("busy" in ln or "no free channels" in ln for ln in lines) == 2


# ---------------------------------------------------------------- Pocket TTS: one at a time, from a queue


@pytest.fixture(scope="module")
def pocket_served():
    pytest.importorskip("pocket_tts")
    with tts_server(backend="pocket", queue=2) as (running, lines):
        yield running, lines


def test_pocket_tts_streams_queue_on_its_worker(pocket_served):
    """Pocket TTS cannot batch: concurrent streams wait their turn (a bounded queue) and each gets
    what it gets alone; no word timings (the model has none), so no Text messages."""
    running, lines = pocket_served
    assert running.service.batch == 1 and running.service.engine.capacity == 3
    alone, code = speak_stream(running.base, WORDS)
    assert code == 1000 and alone[0] == {"type": "Ready"} and words_of(alone) == []
    assert audio_of(alone).size > 0
    together: list = [None, None]

    def one(i):
        together[i] = speak_stream(running.base, WORDS)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for messages, code in together:
        assert code == 1000
        # greedy and one at a time; pocket-tts's decoder thread takes as many latent frames per call as are
        # queued (thread timing), which changes float32 rounding only (seen: 7e-8)
        np.testing.assert_allclose(audio_of(messages), audio_of(alone), atol=1e-5)
    assert not any("Traceback" in ln for ln in lines)


def test_pocket_tts_voices_and_pace(pocket_served):
    import json
    import urllib.error
    import urllib.request

    running, _ = pocket_served
    messages, code = refused(running.base, format="PcmMessagePack", voice="nobody")
    assert code == 1008 and "alba" in messages[-1]["message"]
    body = json.dumps({"model": "synthetic", "input": "Hi you.", "speed": 1.5}).encode()
    req = urllib.request.Request(running.base + "/v1/audio/speech", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400 and "own pace" in json.loads(err.value.read())["error"]["message"]
