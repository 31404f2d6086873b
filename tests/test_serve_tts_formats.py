"""The TTS server's parts without a server or a model: moshi-server's TTS messages and OpenAI's speech
formats, each decoded back by an independent reader (msgpack, soundfile, sphn); the bound on a slow
reader's audio; the serial engine's queue."""

from __future__ import annotations

import io

import msgpack
import numpy as np
import pytest

from moshikit.serve import speech_formats as F
from moshikit.serve import tts_wire as W


def tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(24000 * seconds)) / 24000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def frames(pcm: np.ndarray):
    for i in range(0, pcm.size, 1920):
        yield pcm[i:i + 1920]


def test_parse_messages_as_moshi_server_reads_them():
    assert W.parse_message(msgpack.packb({"type": "Text", "text": "hello"}), max_text=100) == W.TextIn("hello")
    assert W.parse_message(msgpack.packb({"type": "Eos"}), max_text=100) == W.EosIn()
    assert W.parse_message(b"\x00", max_text=100) == W.EosIn()
    assert W.parse_message("two words", max_text=100) == W.TextIn("two words")
    for bad, why in [(b"\xc1", "msgpack"), (msgpack.packb([1]), "map"), (msgpack.packb({"type": "Nope"}), "Nope"),
                     (msgpack.packb({"type": "Text"}), "text"), (msgpack.packb({"type": "Voice"}), r"\?voice="),
                     (msgpack.packb({"type": "Text", "text": "x" * 101}), "at most 100")]:
        with pytest.raises(W.ProtocolError, match=why):
            W.parse_message(bad, max_text=100)


def test_formats():
    assert W.parse_format(None) == "OggOpus" and W.parse_format("Pcm") == "Pcm"
    with pytest.raises(W.ProtocolError, match="PcmMessagePack, OggOpusMessagePack, Pcm, OggOpus"):
        W.parse_format("Wav")


def test_pcm_messagepack_messages():
    enc = W.Encoder("PcmMessagePack")
    assert [msgpack.unpackb(m) for m in enc.ready()] == [{"type": "Ready"}]
    pcm = tone(0.08)
    (msg,) = enc.audio(pcm)
    got = msgpack.unpackb(msg)
    assert got["type"] == "Audio" and len(got["pcm"]) == 1920
    np.testing.assert_array_equal(np.array(got["pcm"], np.float32), pcm)  # float32 on the wire, as Rust sends f32
    (word,) = enc.word("hello", 0.24, 0.64)
    got = msgpack.unpackb(word)
    assert got["type"] == "Text" and got["text"] == "hello"
    assert got["start_s"] == pytest.approx(0.24) and got["stop_s"] == pytest.approx(0.64)
    assert msgpack.unpackb(enc.error("no free channels")[0]) == {"type": "Error", "message": "no free channels"}


def test_raw_pcm_and_ogg_opus_formats(tmp_path):
    pcm = tone(1.0)
    raw = W.Encoder("Pcm")
    assert raw.ready() == [] and raw.word("x", 0, 1) == [] and raw.error("x") == []
    data = b"".join(m for f in frames(pcm) for m in raw.audio(f))
    np.testing.assert_array_equal(np.frombuffer(data, "<f4"), pcm)
    for fmt in ("OggOpus", "OggOpusMessagePack"):
        enc = W.Encoder(fmt)
        msgs = [m for f in frames(pcm) for m in enc.audio(f)]
        if fmt.endswith("MessagePack"):
            msgs = [msgpack.unpackb(m)["data"] for m in msgs]
        import sphn

        back, rate = sphn.read_opus_bytes(b"".join(msgs))  # decoded at 48 kHz
        assert rate == 48000 and abs(back.shape[-1] / 2 - pcm.size) <= 1920  # Opus pre-skip and page rounding


@pytest.mark.parametrize("fmt", F.SUPPORTED)
def test_speech_formats_decode_to_the_audio(fmt, tmp_path):
    import soundfile as sf

    pcm = tone(2.0)
    enc = F.SpeechEncoder(fmt)
    pieces = [enc.start()] + [enc.write(f) for f in frames(pcm)] + [enc.close()]
    data = b"".join(pieces)
    if fmt in F.STREAMED:  # bytes leave before the end: well before the last frame
        assert len(b"".join(pieces[:len(pieces) // 2])) > 0
    else:
        assert not b"".join(pieces[:-1])
    if fmt == "pcm":
        back = np.frombuffer(data, "<i2") / 32767
        np.testing.assert_allclose(back, pcm, atol=1 / 32767)  # one 16-bit step
        return
    if fmt == "wav":
        assert data[:4] == b"RIFF" and data[40:44] == b"\xff\xff\xff\xff"
        back = np.frombuffer(data[44:], "<i2") / 32767
        np.testing.assert_allclose(back, pcm, atol=1 / 32767)
        return
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(data)
    if fmt == "flac":
        back, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == 24000
        np.testing.assert_allclose(back, pcm, atol=1 / 32767)
        return
    import sphn

    if fmt == "opus":
        back, rate = sphn.read_opus_bytes(data)  # at 48 kHz; pre-skip and the last page completed with silence
        assert rate == 48000 and abs(back.shape[-1] / 2 - pcm.size) <= 1920
        assert np.abs(back).max() > 0.2
        return
    back, rate = sphn.read(str(path))
    # mp3: encoder delay and padding plus the one silent first frame (1152 samples each at most)
    assert rate == 24000 and pcm.size <= back.shape[-1] <= pcm.size + 4 * 1152
    assert np.abs(back).max() > 0.2


def test_a_reader_that_falls_behind_has_its_job_stopped():
    """What a slow client makes the server hold is bounded: past ``max_queued_seconds`` of untaken
    audio its job is cancelled and its queue ends with an error."""
    import asyncio

    from moshikit.serve.tts import Limits, TtsService

    service = TtsService(model=None, engine=None, name="x", batch=1, limits=Limits(max_queued_seconds=0.4))

    async def run():
        job, events = service.job(None, asyncio.get_running_loop())
        for _ in range(20):  # the worker makes audio; nobody takes it
            job.emit(("audio", np.zeros(1920, np.float32)))
            await asyncio.sleep(0)
        got = [events.get_nowait() for _ in range(events.qsize())]
        return job, got

    job, got = asyncio.run(run())
    assert job.cancelled and got[-1] == ("error", "the client reads the audio too slowly")
    assert sum(e[0] == "audio" for e in got) == 6  # 0.4 s = 5 frames queued, the next one trips it


def test_the_serial_engine_takes_jobs_in_turn_within_its_bound():
    """A backend that cannot batch: jobs wait (bounded) and are spoken one at a time once their text is
    all in; beyond the bound submit says no; a job whose client left is skipped."""
    import threading

    from moshikit.serve.tts_engines import Job, SerialEngine
    from moshikit.tts.engine import Settings, Speech, WordTime

    gate = threading.Event()
    spoken: list[str] = []

    class Model:
        def generate(self, chunks, voices, settings, *, on_pcm=None, on_word=None):
            text = " ".join(c.text for c in chunks)
            gate.wait(10)
            spoken.append(text)
            on_pcm(np.zeros(1920, np.float32))
            return Speech(samples=1920, words=[WordTime(text, 0.0, 0.08)])

    engine = SerialEngine(Model(), Settings(), queue=1)
    events: dict[int, list] = {0: [], 1: [], 2: [], 3: []}
    jobs = [Job(None, events[i].append) for i in range(4)]
    engine.start()
    try:
        assert engine.submit(jobs[0]) and engine.submit(jobs[1])
        assert not engine.submit(jobs[2]) and engine.free() == 0  # one speaking, one waiting: full
        jobs[1].cancel()  # its client left before its text was all in
        assert engine.free() == 1 and engine.submit(jobs[3])
        for i in (0, 3):
            jobs[i].push("Hello")
            jobs[i].push("there.")
            jobs[i].end()
        engine.wake()
        gate.set()
        for _ in range(200):
            if events[3] and events[3][-1][0] == "done":
                break
            threading.Event().wait(0.02)
    finally:
        engine.stop()
    assert spoken == ["Hello there.", "Hello there."]
    assert [e[0] for e in events[0]] == ["audio", "word", "done"] and events[0][1][1:] == ("Hello there.", 0.0, 0.08)
    assert events[1] == [] and [e[0] for e in events[3]] == ["audio", "word", "done"]
