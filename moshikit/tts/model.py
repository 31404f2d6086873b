"""Loading Kyutai TTS: resolve ``--model`` like every other command, build moshi's own ``TTSModel``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, UsageError

#: Kyutai's setting of the voice strength (the CFG value the 1.6B model was distilled for).
DEFAULT_CFG = 2.0
DEFAULT_TEMP = 0.6
SPEED_RANGE = (0.5, 2.0)
#: ``--speed 2`` / ``0.5`` add -/+ this much to the padding logit (Kyutai's ``padding_bonus``).
BONUS_PER_OCTAVE = 2.0


def check_tts_config(config: dict | None, source: str) -> dict:
    """The checkpoint's ``tts_config``; one clear line for anything that is not a TTS model."""
    config = config or {}
    if config.get("model_type") != "tts" and "tts_config" not in config:
        kind = config.get("model_type") or ("stt" if "stt_config" in config else "moshi")
        raise ModelError(f"{source} is not a text-to-speech checkpoint (model_type {kind!r}, no tts_config)",
                         hint="use --model tts (kyutai/tts-1.6b-en_fr) or tts-public (kyutai/tts-0.75b-en-public)")
    if "model_id" not in config:
        raise ModelError(f"{source}: its config.json has no model_id (which names the voice files that fit it)")
    return dict(config.get("tts_config") or {})


def padding_bonus(speed: float) -> float:
    """``--speed`` (1 = the model's own pace) as Kyutai's padding bonus (positive = slower)."""
    lo, hi = SPEED_RANGE
    if not lo <= speed <= hi:
        raise UsageError(f"--speed {speed:g} is out of range: use {lo:g} (half speed) to {hi:g} (double speed)")
    return -BONUS_PER_OCTAVE * math.log2(speed)


@dataclass
class TtsModel:
    """A loaded Kyutai TTS model: moshi's ``TTSModel`` plus where it and its voices came from."""

    tts: object  # moshi.models.tts.TTSModel
    name: str
    path: Path  # the checkpoint's folder
    repo: str | None  # hub repo id, None for a local folder
    synthetic: bool = False
    backend: str = "torch"
    word_timings: bool = True  # the model's own alignment (``--words``)
    default_temp: float = DEFAULT_TEMP
    #: What generation builds in place of moshi's ``LMGen`` (same arguments and calls): None for
    #: moshi's own; the CPU engine's (``backends.cpu_tts``) otherwise.
    lm_gen: object = None
    precision: str | None = None  # the weights' format where the backend picks one (cpu: int8, bf16, fp32)
    engine: object = None  # the CPU engine's modules (``backends.cpu_lmgen.Engine``): bench's limit rows
    #: ``open(batch)`` -> a Mimi decoder of ``batch`` streams of its own (``decode(codes [B, K, 1]) ->
    #: pcm [B, 1920]``) that generation decodes its frames with (the CPU engine's: the onnx codec's
    #: decoder graph); None: moshi's Mimi in ``tts`` decodes them.
    open_decoder: object = None

    @property
    def multi_speaker(self) -> bool:
        """Conditioned on voice embeddings (1.6B); otherwise on an audio prefix (0.75B public)."""
        return bool(self.tts.multi_speaker)

    @property
    def cfg_values(self) -> list[float]:
        return sorted(self.tts.valid_cfg_conditionings)

    @property
    def voice_suffix(self) -> str:
        return self.tts.voice_suffix

    @property
    def sample_rate(self) -> int:
        return int(self.tts.mimi.sample_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.tts.mimi.frame_rate)

    @property
    def device(self) -> str:
        return str(self.tts.lm.device)

    @property
    def n_q(self) -> int:
        return int(self.tts.n_q)

    def stream_bytes(self) -> int:
        """Estimated memory of one more text in a batch (its LM's KV caches and activations)."""
        from ..backends.torch_lm import stream_state_bytes

        return stream_state_bytes(self.tts.lm)

    def describe(self) -> dict:
        described = {"name": self.name, "backend": self.backend, "device": self.device, "n_q": self.n_q,
                     "delay_steps": self.tts.delay_steps, "multi_speaker": self.multi_speaker}
        if self.precision:
            described["dtype"] = self.precision
        return described

    def list_voices(self) -> tuple[list[str], str]:
        from .voices import list_voices

        return list_voices(self)

    def resolve_voice(self, voice: str | None):
        from .voices import resolve_voice

        return resolve_voice(self, voice)

    def generate(self, chunks, voices, settings=None, *, on_pcm=None, on_word=None):
        from .engine import generate

        return generate(self, chunks, voices, settings, on_pcm=on_pcm, on_word=on_word)

    def generate_batch(self, scripts, voices, settings=None, *, on_pcm=None):
        from .engine import generate_batch

        return generate_batch(self, scripts, voices, settings, on_pcm=on_pcm)

    def check_text(self, text: str) -> None:
        from .text import check_chunk

        check_chunk(text, self.tts.tokenizer)


@dataclass
class CheckpointVoices:
    """What voice lookup needs from a checkpoint, read from its config.json alone (no weights)."""

    name: str
    path: Path
    multi_speaker: bool
    voice_suffix: str


def checkpoint_voices(model: str | None = None, *, revision: str | None = None) -> CheckpointVoices:
    """``--list-voices`` without loading the model: the voice-file suffix from ``model_id`` and
    whether the model takes embeddings (a ``speaker_wavs`` conditioner) or an audio prefix."""
    import json

    from .. import hub

    resolved = hub.resolve_model(model, kind="tts", revision=revision)
    folder = resolved.path if resolved.path.is_dir() else resolved.path.parent
    config = resolved.config
    if config is None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
    source = str(model if model not in (None, hub.SYNTHETIC) else folder)
    check_tts_config(config, source)
    multi = "speaker_wavs" in (config.get("conditioners") or {})
    mid = config["model_id"]
    return CheckpointVoices(str(model or resolved.repo or folder), folder, multi,
                            f".{mid['sig']}@{mid['epoch']}.safetensors" if multi else "")


#: The last model loaded, reused when the same files are asked for again in this process
#: (a script or a notebook calling ``speak`` repeatedly; the tests). Generation resets every
#: setting it uses, so a reused model behaves as a fresh one.
_LAST: dict = {}


@dataclass
class TtsCheckpoint:
    """A TTS checkpoint's files, resolved the same way for every backend (no weights read)."""

    name: str  # what to call the model (the --model given, the repo, or "synthetic")
    source: str  # how errors name it
    folder: Path
    repo: str | None
    config: dict
    config_path: Path
    files: dict  # moshi_name, mimi_name, tokenizer_name -> Path
    synthetic: bool

    def cache_key(self, *extra) -> tuple:
        paths = tuple(str(p) for p in self.files.values())
        return (paths, tuple(Path(p).stat().st_mtime_ns for p in paths), self.name, *extra)


def resolve_tts_checkpoint(model: str | None = None, *, revision: str | None = None) -> TtsCheckpoint:
    """Resolve ``model`` (``tts``, ``tts-public``, a repo id, a local folder or ``synthetic``) to its
    config.json, LM weights, Mimi and tokenizer; one clear line for anything missing."""
    import json

    from .. import hub

    resolved = hub.resolve_model(model, kind="tts", revision=revision)
    folder = resolved.path if resolved.path.is_dir() else resolved.path.parent
    config = resolved.config
    source = str(model if model not in (None, hub.SYNTHETIC) else folder)
    if config is None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
    check_tts_config(config, source)
    from ..backends.lm_repo import is_other_repo_ref, named_file

    files = {}
    for key in ("moshi_name", "mimi_name", "tokenizer_name"):
        path = resolved.role(key) if resolved.files else None
        if key in config and not is_other_repo_ref(config[key]):  # leaving the folder: refused, found or not
            named_file(folder, config[key], key, resolved.config_path or folder / "config.json")
        if path is None or not Path(path).is_file():
            path = folder / config.get(key, "")
        if not Path(path).is_file():
            raise ModelError(f"{source}: missing {config.get(key) or key} (named by config.json's {key})")
        files[key] = path
    name = str(model) if model not in (None, hub.SYNTHETIC) else (
        "synthetic" if model == hub.SYNTHETIC else str(resolved.repo or folder))
    return TtsCheckpoint(name, source, folder, resolved.repo, config,
                         Path(resolved.config_path or folder / "config.json"), files, model == hub.SYNTHETIC)


#: ``--dtype`` names the torch TTS runs in, and torch's names for them.
TORCH_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16"}


def load_torch_tts(model: str | None = None, *, device: str | None = None, dtype: str | None = None,
                   revision: str | None = None, n_q: int | None = None, reuse: bool = True) -> TtsModel:
    """Resolve ``model`` (``tts``, ``tts-public``, a repo id, a local folder or ``synthetic``) and load it
    through moshi's ``TTSModel.from_checkpoint_info`` on torch (``device``: cpu, cuda, mps).
    ``reuse=False``: a model of its own, neither taken from nor kept for later calls."""
    import torch
    from moshi.models.loaders import CheckpointInfo
    from moshi.models.tts import TTSModel

    from .. import platform

    if dtype not in (None, "auto", *TORCH_DTYPES):
        raise UsageError(f"--dtype {dtype}: Kyutai TTS on PyTorch runs in bf16, fp16 or fp32",
                         hint="8-bit weights are for the Moshi and STT models on a CPU; use --dtype auto")
    dev = platform.real_device("torch", device) or "auto"
    if dev == "auto":
        dev = "cuda" if platform.detect().cuda else "cpu"
    ckpt = resolve_tts_checkpoint(model, revision=revision)
    config, files, source = ckpt.config, ckpt.files, ckpt.source
    key = ckpt.cache_key(dev, dtype, n_q)
    if reuse and _LAST.get("key") == key:
        return _LAST["model"]
    torch_dtype = getattr(torch, TORCH_DTYPES[dtype]) if dtype in TORCH_DTYPES else (
        torch.bfloat16 if dev.startswith("cuda") else torch.float32)
    info = CheckpointInfo.from_hf_repo("local", moshi_weights=files["moshi_name"], mimi_weights=files["mimi_name"],
                                       tokenizer=files["tokenizer_name"], config_path=ckpt.config_path)
    lm_n_q = int(config.get("n_q", 32))
    if n_q is not None and not 1 <= n_q <= lm_n_q:
        raise UsageError(f"--codebooks {n_q}: this model generates 1 to {lm_n_q} codebooks")
    try:
        tts = TTSModel.from_checkpoint_info(info, n_q=n_q or lm_n_q, temp=DEFAULT_TEMP, device=dev,
                                            dtype=torch_dtype)
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"{source}: its config.json does not describe a Kyutai TTS model "
                         f"({type(exc).__name__}: {first})") from None
    loaded = TtsModel(tts, ckpt.name, ckpt.folder, ckpt.repo, synthetic=ckpt.synthetic)
    if not reuse:
        return loaded
    _LAST.clear()
    _LAST.update(key=key, model=loaded)
    return loaded
