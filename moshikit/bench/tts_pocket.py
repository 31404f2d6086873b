"""``bench tts --pocket MODEL``: moshikit's pocket backend next to pocket-tts's own streaming API
(``TTSModel.generate_audio_stream``, what its ``generate_audio`` collects), same text, same voice,
in the same round-robin as the Kyutai TTS rows. Neither side is seeded (a seed makes moshikit ask
pocket-tts's decoder for one frame per call, for repeatable output): both decode as pocket-tts does
by default."""

from __future__ import annotations

import time
from typing import Callable


def pocket_subjects(model_name: str, text: str) -> list[tuple[str, int, Callable[[], tuple[float | None, int]], str]]:
    """(row name, batch, run -> (first audio seconds, samples), device) for the pocket rows. Both run
    on one torch thread, as pocket-tts sets on import (its decoder runs in a second thread); the
    other rows keep the process's setting."""
    from ..tts import Settings, chunks, load_tts
    from ..tts.pocket import one_thread

    model = load_tts(model_name, backend="pocket")
    voice = model.resolve_voice(None)
    tts = model.tts
    temp = model.default_temp

    def ours():
        speech = model.generate(chunks([text]), [voice], Settings(temp=temp))
        return speech.first_audio, speech.samples

    state = model.voice_state(voice)

    def theirs():
        tts.temp, tts.max_decoder_frames_per_call = temp, 0
        first, samples, started = None, 0, time.perf_counter()
        for audio in tts.generate_audio_stream(state, text):
            if first is None:
                first = time.perf_counter() - started
            samples += audio.shape[-1]
        return first, samples

    def on_one_thread(fn):
        def run():
            with one_thread():
                return fn()
        return run

    return [("moshikit speak -b pocket", 1, ours, "cpu"),  # generate runs on one thread itself
            ("pocket-tts generate_audio_stream (reference)", 1, on_one_thread(theirs), "cpu")]
