"""Speaking with Pocket TTS: moshikit's chunks through pocket-tts's own ``generate_audio_stream``.

Text arriving chunk by chunk (``--stream`` sends single words) is regrouped into sentences, and
each sentence is one call of ``generate_audio_stream(state, sentence)`` from the voice's state,
as pocket-tts itself does for each piece of a long text; its audio goes to ``on_pcm`` as it is
decoded. ``<break time="0.5s"/>`` becomes that much silence between calls. The same seed gives
the same samples: the seed is set once before the first sentence, and pocket-tts's decoder then
takes one latent frame per call (by default it decodes as many as are queued, which depends on
thread timing and changes the last bits of the output).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import UsageError
from .engine import Settings, Speech
from .model import DEFAULT_CFG
from .text import BREAK_RE, Chunk, sentences

FRAME = 1920  # samples per latent frame (12.5 Hz at 24 kHz)


def check_settings(s: Settings) -> None:
    """What Pocket TTS cannot do is one line each."""
    if s.cfg != DEFAULT_CFG:
        raise UsageError(f"--cfg {s.cfg:g}: Pocket TTS has no classifier-free guidance", hint="drop --cfg")
    if s.padding_bonus:
        raise UsageError("--speed: Pocket TTS has no pace control", hint="drop --speed")
    if s.keep_codes:
        raise UsageError("Pocket TTS makes no Mimi tokens", hint="write audio (.wav, .flac, .ogg)")


def pieces(sentence: str) -> Iterator[tuple[str, float]]:
    """(text, pause after it in seconds) for a sentence with ``<break time=.../>`` tags."""
    pos = 0
    for m in BREAK_RE.finditer(sentence):
        yield sentence[pos:m.start()].strip(), float(m.group(1))
        pos = m.end()
    yield sentence[pos:].strip(), 0.0


def generate(model, chunks: Iterable[Chunk], voices: list, settings: Settings | None = None, *,
             on_pcm: Callable[[np.ndarray], None] | None = None) -> Speech:
    import threading

    import torch

    s = settings or Settings()
    check_settings(s)
    tts = model.tts
    state = model.voice_state(voices[0] if voices else model.resolve_voice(None))
    tts.temp = s.temp
    tts.max_decoder_frames_per_call = 1 if s.seed is not None else 0
    if s.seed is not None:
        torch.manual_seed(s.seed)
    result = Speech()
    started = clock()
    first_text: list[float] = []

    def texts() -> Iterator[str]:
        for chunk in chunks:
            if not first_text:
                first_text.append(clock())
            model.check_text(chunk.text)
            result.characters += len(chunk.text)
            yield model.clean(chunk.text) + " "

    def emit(pcm: np.ndarray) -> None:
        if result.first_audio is None:
            result.first_audio = clock() - (first_text[0] if first_text else started)
        result.samples += pcm.size
        if on_pcm is not None:
            on_pcm(pcm)

    limit = s.max_steps * FRAME if s.max_steps else None
    stop = threading.Event()
    spoke = False
    for sentence in sentences(texts()):
        for text, pause in pieces(sentence):
            if text and not stop.is_set():
                spoke = True
                stream = tts.generate_audio_stream(state, text, copy_state=True, stop=stop)
                try:
                    for audio in stream:
                        pcm = np.clip(audio.numpy(), -1, 1).astype(np.float32)
                        if limit is not None and result.samples + pcm.size >= limit:
                            pcm = pcm[:max(0, limit - result.samples)]
                            stop.set()
                            result.ended = False
                        if pcm.size:
                            emit(pcm)
                except BaseException:
                    # The caller stopped it (on_pcm raised: a barge-in, a client gone): pocket-tts
                    # generates and decodes on two threads of its own, which run on unless told
                    # and drained (after the stop, a frame at most).
                    stop.set()
                    for _ in stream:
                        pass
                    raise
            if pause and not stop.is_set():
                emit(np.zeros(int(round(pause * model.sample_rate)), np.float32))
    if not spoke:
        raise UsageError("nothing to say: the text is empty")
    result.frames = -(-result.samples // FRAME)
    result.steps = result.frames
    result.seconds = clock() - started
    return result


def clock() -> float:
    return time.perf_counter()
