"""The models moshikit knows, as data, and the rules that pick one for this machine.

Everything about the published Kyutai repositories lives in ``ENTRIES`` below:
one row per (model, variant). Adding a model or a variant means adding a row.
The choice rules live in ``choose`` and explain themselves (``Choice.reasons``).

Sizes are approximate (parameter counts times bytes per parameter, rounded);
``moshikit download --dry-run`` shows the exact sizes the hub reports. File
names marked ``assumed`` in the notes come from Kyutai's configs and scripts
rather than from a listing of the repository; when a repository has a
``config.json`` its ``moshi_name``/``mimi_name``/``tokenizer_name`` win.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from .catalog_machine import current_platform, platform_from_spec  # noqa: F401 (callers read them here)
from .catalog_pocket import POCKET_ALIASES, POCKET_ENTRIES, POCKET_FAMILIES
from .errors import ModelError, UsageError
from .platform import PlatformInfo

MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
MOSHI_TOKENIZER = "tokenizer_spm_32k_3.model"
STT_MIMI_FILE = "mimi-pytorch-e351c8d8@125.safetensors"
TTS_TOKENIZER = "tokenizer_spm_8k_en_fr_audio.model"
#: The voice ``speak`` uses when none is given (a file of kyutai/tts-voices).
DEFAULT_TTS_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"

#: Backends, in the order the auto choice prefers precisions within each.
BACKENDS = ("pytorch", "mlx", "candle", "any")
PRECISION_ORDER = ("bf16", "fp32", "q8", "q4")


@dataclass(frozen=True)
class Family:
    """A model as users name it (``moshika``), whatever its variants."""

    name: str
    kind: str  # "moshi" | "stt" | "codec"
    purpose: str


@dataclass(frozen=True)
class Entry:
    """One published repository (or, for Mimi, one file of one) and what a run needs from it."""

    family: str
    variant: str  # "<backend>-<precision>" except Mimi's "fp32"
    repo: str
    backend: str  # pytorch | mlx | candle | any
    precision: str  # bf16 | q8 | q4 | fp32
    files: tuple[str, ...]  # what a run needs
    size_gb: float  # approximate download
    min_memory_gb: float  # GPU memory (CUDA), unified memory (Apple) or RAM (CPU) it needs to run comfortably
    purpose: str
    optional: tuple[str, ...] = ()  # fetched when the repository has them
    auto: bool = True  # may the automatic choice pick it?
    notes: str = ""

    @property
    def id(self) -> str:
        return f"{self.family}:{self.variant}"

    @property
    def kind(self) -> str:
        return FAMILIES[self.family].kind

    def to_json(self) -> dict:
        return {"model": self.family, "variant": self.variant, "repo": self.repo, "backend": self.backend,
                "precision": self.precision, "files": list(self.files), "optional_files": list(self.optional),
                "size_gb": self.size_gb, "min_memory_gb": self.min_memory_gb, "purpose": self.purpose,
                "auto": self.auto, "notes": self.notes}


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("moshiko", "moshi", "Moshi 7B full-duplex speech dialogue, male voice (Moshiko)"),
    Family("moshika", "moshi", "Moshi 7B full-duplex speech dialogue, female voice (Moshika)"),
    Family("mimi", "codec", "Mimi audio codec alone: 24 kHz audio <-> 12.5 Hz tokens (encode, decode)"),
    Family("stt-1b-en_fr", "stt", "Kyutai STT ~1B, English and French, 0.5 s delay, end-of-turn heads"),
    Family("stt-2.6b-en", "stt", "Kyutai STT ~2.6B, English only, 2.5 s delay, the more accurate one"),
    Family("hibiki-1b", "hibiki", "Hibiki 1B: simultaneous speech translation, French to English, 8 codebooks"),
    Family("hibiki-2b", "hibiki", "Hibiki 2B: simultaneous speech translation, French to English, 16 codebooks"),
    Family("tts-1.6b-en_fr", "tts", "Kyutai TTS ~1.6B, English and French, voices from kyutai/tts-voices"),
    Family("tts-0.75b-en-public", "tts", "Kyutai TTS ~0.75B, English, public data only, voice from an audio prefix"),
    Family("tts-voices", "voices", "Voices for Kyutai TTS: reference clips and their embeddings"),
    *(Family(*f) for f in POCKET_FAMILIES),
)}

#: Short names users type. A family name is an alias of itself.
ALIASES: dict[str, str] = {
    "moshiko": "moshiko", "moshika": "moshika", "mimi": "mimi",
    "stt": "stt-1b-en_fr", "stt-en": "stt-2.6b-en",
    "stt-1b-en_fr": "stt-1b-en_fr", "stt-2.6b-en": "stt-2.6b-en",
    "hibiki": "hibiki-1b", "hibiki-1b": "hibiki-1b", "hibiki-2b": "hibiki-2b",
    "tts": "tts-1.6b-en_fr", "tts-public": "tts-0.75b-en-public", "tts-1.6b-en_fr": "tts-1.6b-en_fr",
    "tts-0.75b-en-public": "tts-0.75b-en-public", "tts-voices": "tts-voices",
    **POCKET_ALIASES,
}


def _moshi(voice: str) -> list[Entry]:
    purpose = FAMILIES[voice].purpose
    spm, mimi = MOSHI_TOKENIZER, MIMI_FILE
    return [
        Entry(voice, "pytorch-bf16", f"kyutai/{voice}-pytorch-bf16", "pytorch", "bf16",
              ("model.safetensors", mimi, spm), 15.8, 24, purpose, optional=("config.json",)),
        Entry(voice, "pytorch-q8", f"kyutai/{voice}-pytorch-q8", "pytorch", "q8",
              ("model.q8.safetensors", mimi, spm), 8.6, 12, purpose, optional=("config.json",),
              notes="int8 through bitsandbytes: CUDA only"),
        Entry(voice, "mlx-bf16", f"kyutai/{voice}-mlx-bf16", "mlx", "bf16",
              ("model.safetensors", mimi, spm), 15.8, 32, purpose, optional=("config.json",), auto=False,
              notes="picked only with --variant: q8 sounds the same at half the memory"),
        Entry(voice, "mlx-q8", f"kyutai/{voice}-mlx-q8", "mlx", "q8",
              ("model.q8.safetensors", mimi, spm), 8.6, 24, purpose, optional=("config.json",)),
        Entry(voice, "mlx-q4", f"kyutai/{voice}-mlx-q4", "mlx", "q4",
              ("model.q4.safetensors", mimi, spm), 4.7, 8, purpose, optional=("config.json",)),
        Entry(voice, "candle-bf16", f"kyutai/{voice}-candle-bf16", "candle", "bf16",
              ("model.safetensors", mimi, spm), 15.8, 24, purpose, optional=("config.json",), auto=False,
              notes="for Kyutai's Rust server (moshi-backend); moshikit's commands do not run it"),
        Entry(voice, "candle-q8", f"kyutai/{voice}-candle-q8", "candle", "q8",
              ("model.q8.gguf", mimi, spm), 8.6, 12, purpose, optional=("config.json",), auto=False,
              notes="for Kyutai's Rust server (moshi-backend); moshikit's commands do not run it"),
    ]


def _stt(name: str, tokenizer: str, size_gb: float, min_gb: float) -> list[Entry]:
    purpose = FAMILIES[name].purpose
    files = ("config.json", "model.safetensors", STT_MIMI_FILE, tokenizer)
    return [
        Entry(name, "pytorch-bf16", f"kyutai/{name}", "pytorch", "bf16", files, size_gb, min_gb, purpose),
        Entry(name, "mlx-bf16", f"kyutai/{name}-mlx", "mlx", "bf16", files, size_gb, min_gb, purpose,
              notes="Mimi and tokenizer names assumed equal to the PyTorch repo's; config.json names them"),
    ]


HIBIKI_TOKENIZER = "tokenizer_spm_48k_multi6_2.model"


def _hibiki(name: str, size_gb: float, min_gb: float) -> list[Entry]:
    """Hibiki's repos (``model_type: "hibiki"``): sizes estimated from the architecture; the
    MLX repo's file names are assumed equal to the PyTorch repo's (config.json names them)."""
    purpose = FAMILIES[name].purpose
    files = ("config.json", "model.safetensors", STT_MIMI_FILE, HIBIKI_TOKENIZER)
    return [
        Entry(name, "pytorch-bf16", f"kyutai/{name}-pytorch-bf16", "pytorch", "bf16", files, size_gb, min_gb,
              purpose),
        Entry(name, "mlx-bf16", f"kyutai/{name}-mlx-bf16", "mlx", "bf16", files, size_gb, min_gb, purpose,
              notes="for moshi_mlx on Apple silicon; file names assumed, config.json names them"),
    ]


ENTRIES: tuple[Entry, ...] = (
    *_moshi("moshiko"),
    *_moshi("moshika"),
    Entry("mimi", "fp32", "kyutai/moshiko-pytorch-bf16", "any", "fp32", (MIMI_FILE,), 0.385, 1,
          FAMILIES["mimi"].purpose,
          notes="the one Mimi file inside the Moshiko repo; torch, rustymimi and MLX all read it"),
    *_stt("stt-1b-en_fr", "tokenizer_en_fr_audio_8000.model", 2.4, 4),
    *_stt("stt-2.6b-en", "tokenizer_en_audio_4000.model", 5.7, 10),
    *_hibiki("hibiki-1b", 3.8, 8),
    *_hibiki("hibiki-2b", 5.6, 12),
    Entry("tts-1.6b-en_fr", "pytorch-bf16", "kyutai/tts-1.6b-en_fr", "pytorch", "bf16",
          ("config.json", "dsm_tts_1e68beda@240.safetensors", MIMI_FILE, TTS_TOKENIZER), 4.1, 6,
          FAMILIES["tts-1.6b-en_fr"].purpose,
          notes="voices come from kyutai/tts-voices (`moshikit download tts-voices`); MLX reads the same repo"),
    Entry("tts-0.75b-en-public", "pytorch-bf16", "kyutai/tts-0.75b-en-public", "pytorch", "bf16",
          ("config.json", "dsm_tts_d6ef30c7@1000.safetensors", MIMI_FILE, TTS_TOKENIZER), 2.0, 4,
          FAMILIES["tts-0.75b-en-public"].purpose,
          notes="weights and tokenizer names assumed from Kyutai's configs; config.json names them. "
                "The voice is any audio file (an audio prefix), not an embedding"),
    Entry("tts-voices", "any-fp32", "kyutai/tts-voices", "any", "fp32",
          (DEFAULT_TTS_VOICE, DEFAULT_TTS_VOICE + ".1e68beda@240.safetensors"), 0.01, 0.1,
          FAMILIES["tts-voices"].purpose,
          notes="the default voice; every other voice: `moshikit download kyutai/tts-voices --file NAME`. "
                "Each voice's licence is in the repo (some are CC-BY-NC)"),
    *(Entry(**e, purpose=FAMILIES[e["family"]].purpose) for e in POCKET_ENTRIES),
)


def entries(family: str | None = None) -> list[Entry]:
    return [e for e in ENTRIES if family is None or e.family == family]


def by_repo(repo: str) -> Entry | None:
    """The catalog entry for a full repo id; the one that needs the most files when several share it."""
    found = [e for e in ENTRIES if e.repo.lower() == repo.lower()]
    return max(found, key=lambda e: len(e.files)) if found else None


def sharing(entry: Entry) -> list[Entry]:
    """Other entries that live in the same repository (Mimi inside the Moshiko repo)."""
    return [e for e in ENTRIES if e.repo == entry.repo and e is not entry]


# ---------------------------------------------------------------- platforms


def accelerator(plat: PlatformInfo) -> tuple[str, float | None, str]:
    """(class, memory in GB, words): the memory that bounds a model on this machine."""
    if plat.apple_silicon:
        return "apple", plat.ram_gb, f"Apple silicon with {_gb(plat.ram_gb)} of unified memory"
    if plat.cuda:
        # The free memory, not the total: a card that drives a display or runs another job
        # has less room than its size (free is known from NVML: pip install nvidia-ml-py).
        g = plat.cuda[0]
        name = g.name + ", " if g.name else ""
        if g.free_gb is None:
            return "cuda", g.total_gb, f"a CUDA GPU ({name}{_gb(g.total_gb)}; free memory unknown, the total used)"
        return "cuda", g.free_gb, f"a CUDA GPU ({name}{_gb(g.free_gb)} free of {_gb(g.total_gb)})"
    return "cpu", plat.ram_gb, f"no GPU ({plat.system} {plat.machine}, {_gb(plat.ram_gb)} of RAM)"


def _gb(value: float | None) -> str:
    return "unknown memory" if value is None else f"{value:.0f} GB"


def runs_on(entry: Entry, plat: PlatformInfo) -> tuple[bool, str]:
    """Can this variant run on ``plat``? (ok, why not)."""
    cls, _, words = accelerator(plat)
    if entry.backend == "mlx" and cls != "apple":
        return False, (f"{entry.repo} is an MLX variant for Apple silicon (Metal); this machine has {words}. "
                       "MLX runs on Linux only on the CPU (mlx[cpu]), far below real time")
    if entry.backend == "pytorch" and entry.precision == "q8" and cls != "cuda":
        return False, (f"{entry.repo} is int8 through bitsandbytes, which needs a CUDA GPU; "
                       f"this machine has {words}")
    return True, ""


def backend_for(plat: PlatformInfo) -> tuple[str, str]:
    """The backend a family's variants are picked from on ``plat``, and why."""
    cls, _, words = accelerator(plat)
    if cls == "apple":
        return "mlx", f"{words}: MLX runs on its GPU (Metal)"
    if cls == "cuda":
        return "pytorch", f"{words}: PyTorch on CUDA"
    return "pytorch", f"{words}: PyTorch on the CPU"


@dataclass
class Choice:
    """The entry picked for a name on a platform, and the reasons, in order."""

    entry: Entry
    asked: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"asked": self.asked, **self.entry.to_json(), "reasons": self.reasons, "warnings": self.warnings}


def suggest(name: str) -> list[str]:
    pool = sorted(set(ALIASES) | {e.repo for e in ENTRIES})
    return difflib.get_close_matches(name, pool, n=3, cutoff=0.5) or difflib.get_close_matches(
        name.split("/")[-1], pool, n=3, cutoff=0.5)


def unknown(name: str) -> ModelError:
    close = suggest(name)
    hint = f"did you mean {', '.join(close)}?" if close else None
    names = ", ".join(sorted(ALIASES))
    return ModelError(f"unknown model {name!r}: not a local path, a catalog name ({names}) or a hub repo id "
                      "(owner/name)", hint=(hint or "see `moshikit models`"))


def is_repo_id(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) == 2 and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts)
            and not name.startswith((".", "~")))


def family_of(name: str) -> str | None:
    return ALIASES.get(name.lower())


def _norm_variant(variant: str) -> str:
    v = variant.strip().lower().replace("_", "-")
    return "py" + v if v == "torch" or v.startswith("torch-") else v


def _variant_matches(entry: Entry, variant: str) -> bool:
    return _norm_variant(variant) in (entry.variant, entry.backend, entry.precision)


def lookup(name: str, plat: PlatformInfo, variant: str | None = None, *,
           any_platform: bool = False) -> Choice | None:
    """``choose`` for catalog names and repo ids; None for a repo id the catalog does not know."""
    if is_repo_id(name) and by_repo(name) is None:
        if variant:
            raise UsageError(f"--variant applies to catalog names, not to {name}",
                             hint="name the variant's repository directly, or drop --variant")
        return None
    return choose(name, plat, variant, any_platform=any_platform)


def choose(name: str, plat: PlatformInfo, variant: str | None = None, *, any_platform: bool = False) -> Choice:
    """The entry ``name`` (an alias, family or catalog repo id) means on ``plat``.

    Backend from the platform (MLX on Apple silicon, PyTorch elsewhere); precision from
    memory: the highest precision whose ``min_memory_gb`` fits (bf16 on a CUDA card with
    room, q8 otherwise; q8 or q4 on Apple silicon by unified memory). ``variant``
    (``pytorch-q8``, ``q8``, ``mlx``...) narrows the choice. Unless ``any_platform``, a
    variant that cannot run here is refused with the reason.
    """
    entry = by_repo(name) if "/" in name else None
    if entry is not None:
        if variant and not _variant_matches(entry, variant):
            raise UsageError(f"--variant {variant} does not match {name} ({entry.variant})",
                             hint="give an alias with --variant, or the variant's repo id alone")
        choice = Choice(entry, name, [f"{name} is the catalog's {entry.family} {entry.variant}"])
        _check_platform(choice, plat, any_platform)
        return choice
    family = family_of(name)
    if family is None:
        raise unknown(name)
    cands = entries(family)
    cls, memory, words = accelerator(plat)
    backend, why = backend_for(plat)
    reasons = [f"{name}: {FAMILIES[family].purpose}" + (f" (alias of {family})" if family != name.lower() else "")]
    if variant:
        matching = [e for e in cands if _variant_matches(e, variant)]
        if not matching:
            raise UsageError(f"{family} has no variant {variant!r}",
                             hint="variants: " + ", ".join(e.variant for e in cands))
        if len(matching) > 1:
            runnable = [e for e in matching if runs_on(e, plat)[0] and e.backend != "candle"] or matching
            here = [e for e in runnable if e.backend == backend] or runnable
            matching = _by_memory([e for e in here if e.auto] or here, memory)
        entry = matching[0]
        reasons.append(f"variant {entry.variant}: asked with --variant {variant}")
        choice = Choice(entry, name, reasons + [f"-> {entry.repo} (about {entry.size_gb:g} GB)"])
        _check_platform(choice, plat, any_platform)
        return choice
    if len(cands) == 1:
        entry = cands[0]
        reasons.append(f"one variant ({entry.variant}): {entry.notes or entry.purpose}")
        return Choice(entry, name, reasons + [f"-> {entry.repo} (about {entry.size_gb:g} GB)"])
    pool = [e for e in cands if e.backend == backend and e.auto and runs_on(e, plat)[0]]
    if not pool:  # a family without a variant for this backend: PyTorch runs everywhere
        pool = [e for e in cands if e.backend == "pytorch" and runs_on(e, plat)[0]]
        why += f"; {family} has no {backend} variant, so PyTorch"
    reasons.append(f"backend {pool[0].backend}: {why}")
    ranked = _by_memory(pool, memory)
    entry = ranked[0]
    warnings = []
    left_out = [e for e in cands if e.backend == entry.backend and e.auto and not runs_on(e, plat)[0]]
    if len(pool) == 1:
        extra = "".join(f"; {e.variant} cannot run here" for e in left_out)
        reasons.append(f"precision {entry.precision}: the only {entry.backend} variant for this machine{extra}")
    elif memory is None:
        reasons.append(f"precision {entry.precision}: memory unknown, so the smallest")
    elif entry.min_memory_gb <= memory:
        better = [e for e in pool if PRECISION_ORDER.index(e.precision) < PRECISION_ORDER.index(entry.precision)]
        above = "".join(f"; {e.precision} wants {e.min_memory_gb:g} GB" for e in better)
        reasons.append(f"precision {entry.precision}: {_gb(memory)} covers the {entry.min_memory_gb:g} GB it "
                       f"wants{above}")
    else:
        reasons.append(f"precision {entry.precision}: the smallest; no variant fits {_gb(memory)}")
    if memory is not None and entry.min_memory_gb > memory:
        warnings.append(f"{entry.repo} wants about {entry.min_memory_gb:g} GB and this machine has "
                        f"{_gb(memory)}: it may not fit")
    if cls == "cpu" and entry.kind == "moshi":
        warnings.append("no GPU: Moshi 7B on a CPU runs far below real time (about 25x slower on 2 cores)")
    return Choice(entry, name, reasons + [f"-> {entry.repo} (about {entry.size_gb:g} GB)"], warnings)


def _by_memory(pool: list[Entry], memory: float | None) -> list[Entry]:
    """``pool`` best precision first, starting at the first that fits ``memory`` (smallest first when none does)."""
    ranked = sorted(pool, key=lambda e: PRECISION_ORDER.index(e.precision))
    if memory is None:
        return sorted(ranked, key=lambda e: e.min_memory_gb)
    fits = [e for e in ranked if e.min_memory_gb <= memory]
    if fits:
        return fits + [e for e in ranked if e not in fits]
    return sorted(ranked, key=lambda e: e.min_memory_gb)


def _check_platform(choice: Choice, plat: PlatformInfo, any_platform: bool) -> None:
    ok, why = runs_on(choice.entry, plat)
    if ok:
        return
    if any_platform:
        choice.warnings.append(why)
        return
    fits = [e.variant for e in entries(choice.entry.family) if runs_on(e, plat)[0] and e.backend != "candle"]
    hint = (f"use --variant {' or '.join(fits)}, or " if fits else "") + \
        "add --any-platform to fetch it for another machine"
    raise ModelError(why, hint=hint)


def explain(name: str, plat: PlatformInfo, variant: str | None = None, *, any_platform: bool = False) -> list[str]:
    """Why ``name`` resolves to the entry it does on ``plat``: one line per reason."""
    c = choose(name, plat, variant, any_platform=any_platform)
    return c.reasons + [f"warning: {w}" for w in c.warnings]
