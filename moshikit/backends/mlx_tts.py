"""Kyutai TTS on MLX: moshi_mlx's ``Lm`` and TTS state machine (Apple silicon; CPU elsewhere).

The checkpoint resolves as for the torch backend (``tts.model.resolve_tts_checkpoint``: the same
config.json, ``dsm_tts_*.safetensors``, Mimi and tokenizer, ``--model synthetic`` included), and
voices are the same files (embeddings for the 1.6B model, an audio prefix for the 0.75B public
one). The LM loads through moshi_mlx's ``LmConfig.from_config_dict`` and
``Lm.load_pytorch_weights`` (as Kyutai's ``scripts/tts_mlx.py`` does); Mimi is moshikit's MLX
codec (``backends.mlx_codec``: moshi_mlx's Mimi with moshi's causal mask, so decoding matches
torch). Generation is ``backends.mlx_tts_engine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, UsageError


def probe() -> str:
    from importlib.metadata import version

    import mlx.core  # noqa: F401  (fails without the runtime: libmlx.so)
    import moshi_mlx.models.tts  # noqa: F401  (moshi_mlx >= 0.2.9)

    return f"mlx {version('mlx')}, moshi_mlx {version('moshi_mlx')}"


#: moshi's TTSModel defaults, so that both backends stop at the same step.
FINAL_PADDING = 4
MAX_GEN_LENGTH = 30000
INITIAL_PADDING = 2
MAX_PADDING = 8


@dataclass
class MlxTtsModel:
    """A loaded Kyutai TTS model on MLX (``backends.base.TTSBackend``)."""

    lm: object  # moshi_mlx.models.Lm
    codec: object  # backends.mlx_codec.MlxCodec
    tokenizer: object  # sentencepiece.SentencePieceProcessor
    machine: object  # moshi_mlx.models.tts.StateMachine
    config: dict
    name: str
    path: Path
    repo: str | None
    device: str  # cpu or gpu
    dtype: str
    n_q: int
    delay_steps: int
    synthetic: bool = False
    backend: str = "mlx"
    word_timings: bool = True
    default_temp: float = 0.6
    final_padding: int = FINAL_PADDING
    max_gen_length: int = MAX_GEN_LENGTH

    @property
    def sample_rate(self) -> int:
        return int(self.codec.info.sample_rate)

    @property
    def frame_rate(self) -> float:
        return self.codec.info.sample_rate / self.codec.info.frame_size

    @property
    def multi_speaker(self) -> bool:
        """Conditioned on voice embeddings (1.6B); otherwise on an audio prefix (0.75B public)."""
        provider = self.lm.condition_provider
        return provider is not None and "speaker_wavs" in provider.conditioners

    @property
    def cfg_values(self) -> list[float]:
        """The CFG strengths the model was distilled for (empty: CFG is not a condition)."""
        provider = self.lm.condition_provider
        if provider is None or "cfg" not in provider.conditioners:
            return []
        return sorted(float(v) for v in provider.conditioners["cfg"].possible_values)

    @property
    def voice_suffix(self) -> str:
        mid = self.config["model_id"]
        return f".{mid['sig']}@{mid['epoch']}.safetensors"

    def describe(self) -> dict:
        return {"name": self.name, "backend": self.backend, "device": self.device, "n_q": self.n_q,
                "delay_steps": self.delay_steps, "multi_speaker": self.multi_speaker, "dtype": self.dtype}

    def list_voices(self) -> tuple[list[str], str]:
        from ..tts.voices import list_voices

        return list_voices(self)

    def resolve_voice(self, voice: str | None):
        from ..tts.voices import resolve_voice

        return resolve_voice(self, voice)

    def check_text(self, text: str) -> None:
        from ..tts.text import check_chunk

        check_chunk(text, self.tokenizer)

    def generate(self, chunks, voices, settings=None, *, on_pcm=None, on_word=None):
        from .mlx_tts_engine import generate

        return generate(self, chunks, voices, settings, on_pcm=on_pcm, on_word=on_word)


def mx_dtype_of(mx, dtype: str | None, on_gpu: bool):
    """``--dtype`` as an MLX dtype (auto: bfloat16 on a GPU, float32 on a CPU, as for torch)."""
    from ..errors import BackendError

    table = {"bf16": mx.bfloat16, "bfloat16": mx.bfloat16, "fp16": mx.float16, "float16": mx.float16,
             "fp32": mx.float32, "float32": mx.float32}
    if dtype in (None, "auto"):
        return mx.bfloat16 if on_gpu else mx.float32
    if dtype not in table:
        raise BackendError(f"unknown dtype {dtype!r}", hint="use bfloat16, float16 or float32")
    return table[dtype]


#: The last model loaded, reused when the same files are asked for again (as for torch).
_LAST: dict = {}


def load(model: str | None, *, device: str | None = None, dtype: str | None = None,
         revision: str | None = None, **options) -> MlxTtsModel:
    """Resolve ``model`` as the torch backend does and load it on MLX (``device``: cpu or gpu)."""
    import mlx.core as mx
    import sentencepiece
    from moshi_mlx import models
    from moshi_mlx.models.tts import StateMachine, TokenIds

    from ..tts.model import resolve_tts_checkpoint
    from . import mlx_codec

    ckpt = resolve_tts_checkpoint(model, revision=revision)
    config, files = ckpt.config, ckpt.files
    dev = mlx_codec.pick_device(mx, device)
    on_gpu = dev == mx.gpu
    n_q = options.get("n_q")
    key = ckpt.cache_key(str(dev), dtype, n_q)
    if _LAST.get("key") == key:
        return _LAST["model"]
    if config.get("tts_config", {}).get("multistream"):
        raise ModelError(f"{ckpt.source}: a multistream TTS model; moshi_mlx cannot run it",
                         hint="use -b torch")
    lm_n_q = int(config.get("n_q", 32))
    if n_q is not None and not 1 <= n_q <= int(config.get("dep_q", lm_n_q)):
        raise UsageError(f"--codebooks {n_q}: this model generates 1 to {config.get('dep_q', lm_n_q)} codebooks")
    mx_dtype = mx_dtype_of(mx, dtype, on_gpu)
    with mx.stream(dev):
        try:
            lm_config = models.LmConfig.from_config_dict(config)
            lm = models.Lm(lm_config)
            lm.load_pytorch_weights(str(files["moshi_name"]), lm_config, strict=True)
        except (KeyError, TypeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ModelError(f"{ckpt.source}: cannot load as a Kyutai TTS model on MLX "
                             f"({type(exc).__name__}: {first})") from None
        lm.set_dtype(mx_dtype)
        if n_q is not None and n_q < lm.dep_q:
            # Generate only the first n_q codebooks (as moshi's TTSModel with n_q): the rest are
            # fed to the model as the zero token.
            lm.depformer.slices = lm.depformer.slices[:n_q]
            lm.cfg.depformer.num_slices = n_q
        mx.eval(lm.parameters())
    codec = mlx_codec.load(Path(files["mimi_name"]), device=device, num_codebooks=lm.dep_q)
    tokenizer = sentencepiece.SentencePieceProcessor(str(files["tokenizer_name"]))  # type: ignore[call-arg]
    tts = dict(config.get("tts_config") or {})
    machine = StateMachine(token_ids=TokenIds(lm.cfg.text_out_vocab_size + 1),
                           second_stream_ahead=tts.get("second_stream_ahead", 0), max_padding=MAX_PADDING,
                           initial_padding=INITIAL_PADDING)
    frame_rate = codec.info.sample_rate / codec.info.frame_size
    loaded = MlxTtsModel(lm, codec, tokenizer, machine, config, ckpt.name, ckpt.folder, ckpt.repo,
                         "gpu" if on_gpu else "cpu", str(mx_dtype).split(".")[-1], int(lm.dep_q),
                         int(tts["audio_delay"] * frame_rate), synthetic=ckpt.synthetic)
    _LAST.clear()
    _LAST.update(key=key, model=loaded)
    return loaded


def voices(model: str | None, *, revision: str | None = None) -> tuple[str, list[str], str]:
    """(model name, voice names, where) from the checkpoint's config.json alone (as for torch)."""
    from ..tts.model import checkpoint_voices
    from ..tts.voices import list_voices

    found = checkpoint_voices(model, revision=revision)
    return (found.name, *list_voices(found))
