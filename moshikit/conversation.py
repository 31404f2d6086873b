"""One full-duplex Moshi conversation, frame by frame, on any codec and LM backend.

Each 80 ms frame of the user's audio goes through the codec's streaming encoder,
one LM step and the codec's streaming decoder; what comes back is Moshi's audio for
that frame and the text piece it spoke. The live chat, the offline chat and the
server all drive this one loop, so they agree on timing and text.

No length limit: the LM backends keep a sliding context (the torch backend's ring
KV cache, the mlx backend's rolled cache) and the codec's streaming state is
fixed-size, so a step costs the same after an hour as after a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .backends.base import CodecBackend, LMBackend, SlotResetCodec, StreamsLMBackend, prepare_live

FRAME = 1920
SAMPLE_RATE = 24000
FRAME_SECONDS = FRAME / SAMPLE_RATE

#: Text tokens that carry no text (moshi's padding and end-of-padding ids).
SILENT_TEXT = (0, 3)


@dataclass
class Frame:
    """What one step produced for each of ``B`` streams."""

    pcm: np.ndarray  # float32 [B, 1920]: Moshi's audio (zeros while the LM's delay fills)
    tokens: np.ndarray | None  # int [B]: the text token, None while the delay fills
    text: list[str]  # per stream: the text piece ("" when none), "▁" already turned into a space
    index: int  # frame index since reset
    seconds: float  # wall time this step took


class DuplexEngine(Protocol):
    """What the live chat loop talks to: a local model on its own thread, or a remote server.

    ``send`` never blocks for long (the audio callback's thread may call it);
    ``receive`` returns, without blocking, everything produced since the last call:
    pairs of (Moshi's audio as float32 samples at 24 kHz, possibly empty; a text piece,
    possibly ""). ``close`` stops the engine and frees its resources.
    """

    def send(self, pcm: np.ndarray) -> None: ...

    def receive(self) -> list[tuple[np.ndarray, str]]: ...

    def close(self) -> None: ...


def piece_decoder(tokenizer) -> Callable[[int], str]:
    """Text token -> text piece, as Moshi's clients print it (spaces for ``▁``).

    Shows what moshi's server shows: nothing for the padding ids 0 and 3, and nothing for
    SentencePiece's other control and unknown pieces (``<s>``, ``</s>``, ``<unk>``: in
    Kyutai's tokenizers these are ids 0-3, which a trained Moshi never says but a model with
    random weights does)."""
    size = tokenizer.get_piece_size() if tokenizer is not None else 0
    is_control = getattr(tokenizer, "is_control", lambda i: False)
    is_unknown = getattr(tokenizer, "is_unknown", lambda i: False)
    cache: dict[int, str] = {}

    def piece(token: int) -> str:
        if token in SILENT_TEXT or not 0 <= token < size:
            return ""
        if token not in cache:
            t = int(token)
            cache[t] = "" if is_control(t) or is_unknown(t) else tokenizer.id_to_piece(t).replace("▁", " ")
        return cache[token]

    return piece


@dataclass
class Conversation:
    """Drive ``codec`` + ``lm`` one 80 ms frame at a time over ``batch_size`` streams."""

    codec: CodecBackend
    lm: LMBackend
    tokenizer: object | None = None
    batch_size: int = 1
    clock: Callable[[], float] = time.perf_counter
    index: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.lm.info.dep_q == 0:
            from .errors import ModelError

            raise ModelError("this checkpoint generates no audio (a speech-to-text model?): "
                             "use `moshikit transcribe` with it")
        self._piece = piece_decoder(self.tokenizer)
        self._k = self.lm.info.input_codebooks
        prepare_live(self.codec)
        self.reset()

    def reset(self) -> None:
        self.codec.reset_stream(self.batch_size)
        self.lm.reset(self.batch_size)
        self.index = 0

    def reset_slots(self, mask: np.ndarray) -> None:
        """Restart the streams where ``mask`` is true, leaving the others running (batched
        serving). Needs backends with ``reset_slots`` (the torch codec and LM). A restarted
        stream gives no audio or text (token -1) while its LM delay fills again."""
        mask = np.asarray(mask, dtype=bool).reshape(self.batch_size)
        if mask.all():
            self.reset()
            return
        if not (isinstance(self.codec, SlotResetCodec) and isinstance(self.lm, StreamsLMBackend)):
            from .errors import BackendError

            raise BackendError("these backends cannot restart one stream of a batch",
                               hint="use the torch codec and LM backends, or a batch of 1")
        self.codec.reset_slots(mask)
        self.lm.reset_slots(mask)

    def step(self, pcm: np.ndarray) -> Frame:
        """One frame: ``pcm`` is float32 ``[B, 1920]`` (or ``[1920]`` for one stream)."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim == 1:
            pcm = pcm[None]
        if pcm.shape != (self.batch_size, FRAME):
            raise ValueError(f"a frame is [{self.batch_size}, {FRAME}] samples, not {list(pcm.shape)}")
        t0 = self.clock()
        codes = self.codec.encode_step(pcm)
        out = self.lm.step(codes[:, : self._k, 0])
        if out is None:
            audio = np.zeros((self.batch_size, FRAME), np.float32)
            tokens, text = None, [""] * self.batch_size
        else:
            # Streams restarted with reset_slots hold "not generated yet" ids (< 0) until
            # their delay fills: decode stand-in codes for them and return silence.
            waiting = (out < 0).any(axis=1)
            codes = np.where(waiting[:, None], 0, out[:, 1:]) if waiting.any() else out[:, 1:]
            audio = np.asarray(self.codec.decode_step(codes[:, :, None]), np.float32).reshape(self.batch_size, -1)
            tokens = out[:, 0].copy()
            if waiting.any():
                audio[waiting] = 0.0
                tokens[waiting] = -1
            text = [self._piece(int(t)) for t in tokens]
        frame = Frame(audio, tokens, text, self.index, self.clock() - t0)
        self.index += 1
        return frame


def run_offline(conv: Conversation, pcm: np.ndarray, *, on_frame: Callable[[Frame], None] | None = None,
                tail_frames: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """The conversation over a whole mono file, as fast as the machine allows.

    Returns Moshi's audio (as long as the input plus ``tail_frames`` frames, by default
    the LM's delay, so its last words come out) and the transcript: one entry per text
    piece with its start time in seconds.
    """
    if conv.batch_size != 1:
        raise ValueError("offline chat runs one stream")
    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    n = -(-pcm.size // FRAME)
    tail = max(conv.lm.info.delays) if tail_frames is None else tail_frames
    padded = np.zeros((n + tail) * FRAME, np.float32)
    padded[: pcm.size] = pcm
    conv.reset()
    out = np.zeros_like(padded)
    transcript: list[dict] = []
    for i in range(n + tail):
        frame = conv.step(padded[i * FRAME : (i + 1) * FRAME])
        out[i * FRAME : (i + 1) * FRAME] = frame.pcm[0]
        if frame.text[0]:
            transcript.append({"time": round(i * FRAME_SECONDS, 3), "token": int(frame.tokens[0]),
                               "text": frame.text[0]})
        if on_frame is not None:
            on_frame(frame)
    return out, transcript
