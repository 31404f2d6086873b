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
    with pytest.raises(served.TooLong, match="2 s long; this server translates at most 1 s"):
        served.open_upload(wav_bytes(speech[:48000]), "x.wav", max_seconds=1)
    with pytest.raises(served.AudioError, match="^the uploaded file: not a readable audio file"):
        served.open_upload(b"RIFF junk", "../../etc/passwd", max_seconds=5)
    leftovers = [p for p in os.listdir(os.path.dirname(up.path)) if p.startswith("moshikit-upload-")]
    assert leftovers == []
