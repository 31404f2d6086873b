"""Pocket TTS (Kyutai's ~100M-parameter CPU text-to-speech, the ``pocket-tts`` package) as a ``speak`` backend.

Its weights come in two published repos: ``kyutai/pocket-tts`` (with voice cloning; gated: its
terms must be accepted on the hub) and ``kyutai/pocket-tts-without-voice-cloning`` (open; the
predefined voices only). pocket-tts itself falls back from the first to the second silently when
the download fails; moshikit fetches both through its own cache (``HF_HUB_CACHE``, offline mode,
``moshikit download pocket-tts``), falls back the same way, but says so, and refuses
``--voice some.wav`` on the open weights with what to do. The model is then loaded by
pocket-tts's own ``TTSModel.load_model`` from a config naming those local files, and speaks
through its public ``generate_audio_stream``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog_pocket import OPEN_REPO  # the catalog's rows name the same repos
from ..errors import ModelError, UsageError
from .pocket_config import LANGUAGE_DIR, TOKENIZER, WEIGHTS, config_dir, import_pocket_tts, one_thread, write_config
from .voices import Voice, check_audio

GATED_REPO = "kyutai/pocket-tts"
#: Names that mean Pocket TTS (catalog family and its alias).
MODEL_NAMES = ("pocket-tts", "pocket", "pocket-tts-open")
#: pocket-tts 4.0.1's predefined voices (``embeddings/<name>.safetensors`` in the open repo).
PREDEFINED_VOICES = ("alba", "marius", "javert", "jean", "fantine", "cosette", "eponine", "azelma", "anna",
                     "vera", "charles", "paul", "george", "mary", "jane", "michael", "eve", "bill_boerst",
                     "peter_yearsley", "stuart_bell", "caro_davy", "giovanni", "lola", "juergen", "rafael",
                     "daan", "estelle")
DEFAULT_VOICE = "alba"
GATED_HINT = ("accept the terms at https://huggingface.co/kyutai/pocket-tts, then log in with `hf auth login` "
              "(or set HF_TOKEN) and load again; the predefined voices work without it (--list-voices)")


def is_pocket_name(model) -> bool:
    return model is not None and str(model).lower() in MODEL_NAMES


@dataclass
class PocketFiles:
    """Where a Pocket TTS model's files are, and whether they can clone a voice."""

    name: str
    config: Path  # pocket-tts YAML naming local files
    folder: Path
    synthetic: bool = False
    cloning: bool = True
    no_cloning: str | None = None  # why not, when not
    voices_dir: Path | None = None  # local embeddings/<name>.safetensors (synthetic and local models)


def locate(model: str | None, *, revision: str | None = None) -> PocketFiles:
    """``--model`` for the pocket backend: none/``pocket-tts``/``pocket`` (the published English model),
    ``synthetic``, or a local folder with a ``config.yaml`` (or that YAML itself)."""
    from .. import hub

    if model is None or is_pocket_name(model):
        return _published(revision, open_only=str(model).lower() == "pocket-tts-open")
    if model == hub.SYNTHETIC:
        from ..synthetic.pocket import ensure_synthetic_pocket

        folder = ensure_synthetic_pocket()
        return PocketFiles("synthetic", folder / "config.yaml", folder, synthetic=True,
                           voices_dir=folder / LANGUAGE_DIR / "embeddings")
    path = Path(str(model)).expanduser()
    config = path / "config.yaml" if path.is_dir() else path
    if config.is_file() and config.suffix in (".yaml", ".yml"):
        emb = config.parent / LANGUAGE_DIR / "embeddings"
        return PocketFiles(str(model), config, config.parent, voices_dir=emb if emb.is_dir() else None)
    raise ModelError(f"{model}: not a Pocket TTS model (give pocket-tts, synthetic, or a folder with its "
                     "config.yaml)", hint="Kyutai TTS models (tts, tts-public) run with -b torch")


def _fetch(repo: str, name: str, revision: str | None) -> Path:
    from ..download.hubapi import fetch_file  # one line for gated, offline, missing files

    try:
        return fetch_file(repo, name, revision)
    except ModelError as exc:
        from ..download import download_command

        exc.hint = exc.hint or (f"run `{download_command('pocket-tts')}` when connected (or "
                                f"`{download_command('pocket-tts-open')}`: without voice cloning)")
        raise


def _published(revision: str | None, open_only: bool = False) -> PocketFiles:
    """The published English model through moshikit's cache: the gated weights if they can be had,
    else the open ones (and why not)."""
    import yaml

    import_pocket_tts()
    from pocket_tts.utils.config import CONFIGS_DIR

    cfg = yaml.safe_load((CONFIGS_DIR / "english.yaml").read_text(encoding="utf-8"))
    tokenizer = _fetch(OPEN_REPO, TOKENIZER, None)
    cloning, why = True, None
    try:
        if open_only:
            raise ModelError("--model pocket-tts-open has none")
        weights = _fetch(GATED_REPO, WEIGHTS, revision)
    except ModelError as exc:
        cloning, why = False, str(exc)
        weights = _fetch(OPEN_REPO, WEIGHTS, revision)
    cfg.pop("weights_path_without_voice_cloning", None)
    cfg.pop("weights_path", None)
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(folder / f"english-{'cloning' if cloning else 'open'}.yaml", cfg, weights, tokenizer)
    return PocketFiles("pocket-tts-open" if open_only else "pocket-tts", config, weights.parent, cloning=cloning,
                       no_cloning=why)


_LAST: dict = {}


def load_pocket(model: str | None = None, *, device: str | None = None, dtype: str | None = None,
                revision: str | None = None) -> "PocketModel":
    if device not in (None, "auto", "cpu"):
        raise UsageError(f"--device {device}: Pocket TTS runs on the CPU", hint="drop --device, or use -b torch")
    if dtype not in (None, "auto", "float32", "fp32"):
        raise UsageError(f"--dtype {dtype}: Pocket TTS runs in float32")
    files = locate(model, revision=revision)
    key = (str(files.config), files.config.stat().st_mtime_ns, files.cloning)
    if _LAST.get("key") == key:
        return _LAST["model"]
    import logging

    import_pocket_tts()
    from pocket_tts import TTSModel

    if files.synthetic:  # random weights never emit EOS: pocket-tts warns on every sentence
        logging.getLogger("pocket_tts").setLevel(logging.ERROR)
    try:
        tts = TTSModel.load_model(config=files.config)
    except (AssertionError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"{files.name}: pocket-tts cannot load it ({type(exc).__name__}: {first})") from None
    tts.has_voice_cloning = files.cloning  # what was really downloaded, not pocket-tts's guess
    loaded = PocketModel(tts, files)
    _LAST.clear()
    _LAST.update(key=key, model=loaded)
    return loaded


class Vocabulary:
    """Pocket TTS's tokenizer as ``tts.text.check_chunk`` reads one (``unk_id``, ``encode``)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    def unk_id(self) -> int:
        inner = getattr(self.tok, "tokenizer", None)
        if inner is not None:
            unk = inner.token_to_id("<unk>")
            return -1 if unk is None else unk
        return self.tok.sp.unk_id()

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text))


@dataclass
class PocketModel:
    """A loaded Pocket TTS model (``backends.base.TTSBackend``): one voice, no Mimi tokens, no word timings."""

    tts: object  # pocket_tts.TTSModel
    files: PocketFiles
    backend: str = "pocket"
    word_timings: bool = False
    states: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def synthetic(self) -> bool:
        return self.files.synthetic

    @property
    def sample_rate(self) -> int:
        return int(self.tts.sample_rate)

    @property
    def multi_speaker(self) -> bool:
        return False

    @property
    def n_q(self) -> int:
        return 0

    @property
    def default_temp(self) -> float:
        return float(self.tts.config.default_temperature)

    def describe(self) -> dict:
        return {"name": self.name, "backend": self.backend, "device": "cpu", "n_q": 0, "multi_speaker": False,
                "sample_rate": self.sample_rate, "voice_cloning": self.files.cloning,
                "no_cloning_reason": self.files.no_cloning}

    def list_voices(self) -> tuple[list[str], str]:
        return voice_names(self.files)

    def resolve_voice(self, voice: str | None) -> Voice:
        name = voice or DEFAULT_VOICE
        local = Path(name).expanduser()
        if local.is_file():
            if local.suffix == ".safetensors":
                return Voice(name, local, "state")
            check_audio(local, name, "a predefined voice (--list-voices -b pocket)")
            if not self.files.cloning:
                raise UsageError(f"{name}: voice cloning needs the gated weights of {GATED_REPO}, which could not "
                                 f"be downloaded ({self.files.no_cloning})", hint=GATED_HINT)
            return Voice(name, local, "audio")
        if name.startswith((".", "/", "~")) or name.endswith((".safetensors", ".wav", ".flac", ".mp3", ".ogg")):
            raise UsageError(f"{name}: no such voice file")
        known, _ = self.list_voices()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise UsageError(f"unknown voice {name!r}", hint=(f"did you mean {', '.join(close)}?" if close else
                                                              "see `moshikit speak --list-voices -b pocket`"))
        if self.files.voices_dir is not None:
            return Voice(name, self.files.voices_dir / f"{name}.safetensors", "state")
        return Voice(name, _fetch(OPEN_REPO, f"{LANGUAGE_DIR}/embeddings/{name}.safetensors", None), "state")

    def clean(self, text: str) -> str:
        """pocket-tts's own character replacements (curly apostrophes...), from its config."""
        for a, b in (getattr(self.tts, "replace_characters", None) or {}).items():
            text = text.replace(a, b)
        return text

    def check_text(self, text: str) -> None:
        from .text import check_chunk

        check_chunk(self.clean(text), Vocabulary(self.tts.flow_lm.conditioner.tokenizer))

    def voice_state(self, voice: Voice):
        """pocket-tts's model state for ``voice`` (kept: encoding a voice sample costs a second or so)."""
        key = str(voice.path)
        if key not in self.states:
            source = Path(voice.path)
            if voice.kind == "audio":  # moshikit reads it (pocket-tts's reader takes only 16-bit wav, not float)
                import torch

                from ..audio import read_24k

                source = torch.from_numpy(read_24k(voice.path).reshape(-1).copy())[None]
            try:
                self.states[key] = self.tts.get_state_for_audio_prompt(source)
            except (AssertionError, ValueError, KeyError, RuntimeError, OSError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise UsageError(f"{voice.name}: Pocket TTS cannot use this voice ({first})") from None
            self.states = {key: self.states[key]} if len(self.states) > 4 else self.states
        return self.states[key]

    def generate(self, chunks, voices, settings=None, *, on_pcm=None, on_word=None):
        from .pocket_speak import generate

        with one_thread():
            return generate(self, chunks, voices, settings, on_pcm=on_pcm)


def voice_names(files: PocketFiles) -> tuple[list[str], str]:
    if files.voices_dir is not None:
        return sorted(p.stem for p in files.voices_dir.glob("*.safetensors")), str(files.voices_dir)
    return list(PREDEFINED_VOICES), f"{OPEN_REPO} (pocket-tts's predefined voices)"
