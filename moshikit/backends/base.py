"""Backend interfaces. Numpy arrays cross this boundary, never framework tensors.

A codec backend wraps one implementation of the Mimi codec; an LM backend wraps
one implementation of the Moshi language model (temporal + depth transformer).
Commands only ever see these Protocols, so a new backend never touches a command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class CodecInfo:
    """What a loaded codec is: enough to write and check token files."""

    backend: str
    device: str
    sample_rate: int = 24000
    frame_size: int = 1920
    num_codebooks: int = 8
    cardinality: int = 2048
    total_codebooks: int = 32

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.frame_size


@runtime_checkable
class CodecBackend(Protocol):
    """The Mimi codec.

    Shapes: audio is float32 ``[B, T]`` at ``info.sample_rate``; codes are
    int64 ``[B, K, F]`` with ``K = info.num_codebooks``.

    Whole-array calls are stateless: ``encode`` pads ``T`` with zeros up to a
    multiple of ``frame_size`` and returns ``ceil(T / frame_size)`` frames;
    ``decode`` returns ``F * frame_size`` samples.

    Streaming calls carry state between calls: ``reset_stream(B)`` starts a
    stream of ``B`` parallel items, then ``encode_step`` takes a positive
    multiple of ``frame_size`` samples and ``decode_step`` any number of
    frames. Encoding a file chunk by chunk gives the codes of a whole-file
    encode. A stream's encoder and decoder states are independent.

    Optional capabilities are Protocols of their own (below): ``LiveCodec``,
    ``SlotResetCodec``, ``OwnStateEncoders``, ``ParallelStreams``. Callers test them with
    ``isinstance``, and the conformance suite checks each backend's signatures against them.
    """

    info: CodecInfo
    #: True when a batch of B items costs clearly less than B single calls.
    batch_gain: bool

    def encode(self, pcm: np.ndarray) -> np.ndarray: ...

    def decode(self, codes: np.ndarray) -> np.ndarray: ...

    def reset_stream(self, batch_size: int = 1) -> None: ...

    def encode_step(self, pcm: np.ndarray) -> np.ndarray: ...

    def decode_step(self, codes: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class LiveCodec(Protocol):
    """``prepare_live()``, called once by live loops (chat, serve), lets a backend decode small
    ``decode_step`` calls faster within a stated tolerance (the onnx backend's int8 live decoder)."""

    def prepare_live(self) -> None: ...


@runtime_checkable
class SlotResetCodec(Protocol):
    """Restarts the streams of the current batch where ``mask`` (bool ``[B]``) is true, encoder and
    decoder, leaving the others running (batched serving, transcription with slot refill)."""

    def reset_slots(self, mask: np.ndarray) -> None: ...


@runtime_checkable
class StreamEncoder(Protocol):
    """One encoder stream with a state of its own: ``encode`` takes ``[B, n]`` (whole frames) and
    returns ``[B, K, n / frame_size]``, continuing its stream."""

    def encode(self, pcm: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class OwnStateEncoders(Protocol):
    """Opens encoders whose stream states are kept apart from the codec's batch state (a stream
    then gets the codes it gets alone). ``single_thread`` asks for an encoder that can run at the
    same time as others from several threads, where the backend can (see ``ParallelStreams``)."""

    def open_encoder(self, batch: int = 1, *, single_thread: bool = False) -> StreamEncoder: ...


@runtime_checkable
class ParallelStreams(OwnStateEncoders, Protocol):
    """``parallel_streams``: how many ``open_encoder(single_thread=True)`` encoders pay off at once."""

    @property
    def parallel_streams(self) -> int: ...


def prepare_live(codec) -> None:
    """What a live loop does once before its first frame: the codec's optional ``prepare_live``."""
    if isinstance(codec, LiveCodec):
        codec.prepare_live()


@dataclass(frozen=True)
class LMInfo:
    backend: str
    device: str
    n_q: int  # audio codebooks the model reads (user stream + its own)
    dep_q: int  # audio codebooks it generates per step (0 for speech-to-text)
    text_card: int
    card: int
    delays: tuple[int, ...]
    context: int
    extra_heads: int = 0  # pause-prediction heads (Kyutai STT 1B has 4)
    precision: str = ""  # what the weights run in (int8, bf16, fp16, fp32), where the backend says

    @property
    def input_codebooks(self) -> int:
        """How many of the user's codebooks ``step`` reads (``n_q - dep_q``)."""
        return self.n_q - self.dep_q


@dataclass(frozen=True)
class SamplingConfig:
    temp: float = 0.8
    temp_text: float = 0.7
    top_k: int = 250
    top_k_text: int = 25
    seed: int | None = None


@dataclass(frozen=True)
class SamplingOverrides:
    """Sampling settings a user gave; None keeps the model's own (its ``lm_gen_config``)."""

    temp: float | None = None
    temp_text: float | None = None
    top_k: int | None = None
    top_k_text: int | None = None
    seed: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in vars(self).values())

    def over(self, base: SamplingConfig) -> SamplingConfig:
        """``base`` with what was given here put on top."""
        from dataclasses import replace

        return replace(base, **{k: v for k, v in vars(self).items() if v is not None})


@runtime_checkable
class LMBackend(Protocol):
    """One Moshi-style LM run step by step over ``B`` parallel streams.

    ``step`` takes the user's audio codes for one frame, int ``[B, K_in]``
    (``K_in`` = the codec codebooks the model listens to), and returns int
    ``[B, 1 + dep_q]`` (text token, then the model's audio codes) or ``None``
    while the model's acoustic delay is still filling.
    """

    info: LMInfo

    def reset(self, batch_size: int = 1) -> None: ...

    def step(self, codes: np.ndarray) -> np.ndarray | None: ...

    def text_tokenizer(self):
        """The checkpoint's SentencePiece model (``sentencepiece.SentencePieceProcessor``)."""
        ...


@runtime_checkable
class SamplingControl(Protocol):
    """An LM whose sampling can change between sessions (``serve``'s per-session settings):
    ``sampling`` is the current setting; ``set_sampling`` takes effect from the next step."""

    sampling: SamplingConfig

    def set_sampling(self, sampling: SamplingConfig) -> None: ...


@runtime_checkable
class StreamsLMBackend(LMBackend, Protocol):
    """An LM backend that can also restart single streams of a batch and report its
    extra heads (what batched transcription needs). ``step_heads`` is ``step`` plus
    the first-class probability of each extra head, float ``[B, extra_heads]``
    (for Kyutai STT, head ``i`` is the probability of a pause of 0.5/1/2/3 s)."""

    def reset_slots(self, mask: np.ndarray) -> None: ...

    def step_heads(self, codes: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]: ...


@runtime_checkable
class MaskedStepLM(StreamsLMBackend, Protocol):
    """A ``StreamsLMBackend`` that can step only some streams of its batch: ``step_heads_masked``
    is ``step_heads`` for the rows where ``active`` (bool ``[B]``) is true; the other streams are
    not advanced (their state is as if the call had not happened) and their result rows mean
    nothing. Batched serving steps the streams whose audio has arrived and leaves the others."""

    def step_heads_masked(self, codes: np.ndarray, active: np.ndarray) -> tuple[np.ndarray | None,
                                                                                np.ndarray | None]: ...


@runtime_checkable
class ReservingLM(Protocol):
    """An LM whose streams' state grows as they run (the cpu engine's KV cache): ``reserve(frames)``
    allocates it now for ``frames`` frames of every stream of the current batch (up to the
    model's context), so that no later step stops to grow it. Servers reserve at start."""

    def reserve(self, frames: int) -> None: ...


@runtime_checkable
class GuidedLM(LMBackend, Protocol):
    """An LM backend that runs a conditioned model the way Kyutai runs Hibiki: ``set_guidance(cfg)``
    (classifier-free guidance strength, 1 = off; applies from the next ``reset``) and
    ``step_end_of_input()`` (one step whose input codes all equal ``card``: the end of the source)."""

    sampling: SamplingConfig

    def set_guidance(self, cfg_coef: float) -> None: ...

    def step_end_of_input(self) -> np.ndarray | None: ...


@runtime_checkable
class TTSBackend(Protocol):
    """A loaded text-to-speech model: everything ``speak`` (and the Python API, and ``bench tts``)
    asks of a backend.

    ``chunks`` are ``moshikit.tts.text.Chunk`` (text cut at sentence ends, one turn each);
    ``voices`` come from ``resolve_voice``; ``generate`` streams mono float32 PCM at
    ``sample_rate`` to ``on_pcm`` as it is produced, calls ``on_word(word, start_seconds)`` as
    the model takes each word, and returns a ``moshikit.tts.engine.Speech``. ``n_q`` is the
    number of Mimi codebooks it generates (``settings.keep_codes`` then fills ``Speech.codes``),
    or 0 when it produces no Mimi tokens (``.mimi`` output is then refused).
    """

    name: str
    backend: str  # the registry name: torch, mlx, pocket
    synthetic: bool
    word_timings: bool  # whether ``Speech.words`` has each word's times (``--words``)

    @property
    def default_temp(self) -> float:
        """The sampling temperature the model is meant to run at (``--temp`` not given)."""
        ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def multi_speaker(self) -> bool:
        """Takes several voices at once (``--dialogue``)."""
        ...

    @property
    def n_q(self) -> int: ...

    def describe(self) -> dict: ...

    def list_voices(self) -> tuple[list[str], str]:
        """(voice names, where they were found)."""
        ...

    def resolve_voice(self, voice: str | None):
        """``--voice`` (None: the default) as a ``moshikit.tts.voices.Voice``; one-line error if unusable."""
        ...

    def generate(self, chunks, voices: list, settings, *, on_pcm=None, on_word=None): ...

    def check_text(self, text: str) -> None:
        """One-line ``UsageError`` for text this model cannot speak (characters its tokenizer lacks...)."""
        ...


@runtime_checkable
class BatchTTS(TTSBackend, Protocol):
    """A TTS backend that speaks several texts at once (one batch row each; on a GPU the batch
    costs about one text's time). ``on_pcm(i, pcm)`` receives row ``i``'s audio."""

    def generate_batch(self, scripts: list, voices: list, settings, *, on_pcm=None) -> list: ...
