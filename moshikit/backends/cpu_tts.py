"""Kyutai TTS on moshikit's CPU engine (``speak -b cpu``): moshi's ``TTSModel`` for everything
around the language model (the text state machine, voices and conditions, Mimi), its LM's
temporal and depth transformers rebuilt by ``cpu_lmgen.Engine`` (``cpu_step``: compact KV cache,
cross-attention to the speaker computed once per stream, int8/bf16 kernels picked for the CPU;
``cpu_depth``), generated through ``cpu_lmgen.CpuLMGen`` in place of moshi's ``LMGen``
(``tts.engine`` drives either the same way).

``--dtype``: int8, bf16, or fp32 (the reference: the tests compare it with ``-b torch``);
``auto`` as for the other models (``cpu_precision.choose``): int8 for Kyutai TTS 1.6B, fp32 for a
small checkpoint. The checkpoint resolves as for the torch
backend (``tts.model``), ``--model synthetic`` included.
"""

from __future__ import annotations

from functools import partial

from ..errors import BackendError


def probe() -> str:
    import moshi
    import torch
    from moshi.models.tts import TTSModel  # noqa: F401 (moshi >= 0.2.9)

    return f"torch {torch.__version__}, moshi {moshi.__version__}"


#: The last model loaded, reused when the same files and precision are asked for again (as for torch).
_LAST: dict = {}


def load(model: str | None, *, device: str | None = None, dtype: str | None = None,
         revision: str | None = None, **options):
    """A ``tts.model.TtsModel`` whose generation runs on the CPU engine (``backends.base.TTSBackend``)."""
    from .torch_env import prepare as _prepare_torch

    _prepare_torch()
    from ..tts.model import load_torch_tts, resolve_tts_checkpoint
    from .cpu_depth import unsupported_depth
    from .cpu_engine import engine_format
    from .cpu_kernels import kv_dtype
    from .cpu_lmgen import CpuLMGen, Engine
    from .cpu_step import unsupported
    from .torch_lm import file_dtype

    if str(device or "cpu").split(":")[0] not in ("cpu", "auto"):
        raise BackendError(f"the cpu backend runs on the CPU, not {device}", hint="use --backend torch on a GPU")
    engine_format(dtype)  # a --dtype the engine cannot run is refused before any download
    ckpt = resolve_tts_checkpoint(model, revision=revision)
    precision = engine_format(dtype, ckpt.files["moshi_name"])
    if (ckpt.config or {}).get("quantize"):
        raise BackendError(f"{ckpt.source}: a quantized (-q8) checkpoint", hint="use the bf16 checkpoint, or "
                           "--backend torch")
    key = ckpt.cache_key(precision, options.get("n_q"))
    if _LAST.get("key") == key:
        return _LAST["model"]
    fp32 = precision == "fp32" or file_dtype(ckpt.files["moshi_name"]) == "fp32"
    loaded = load_torch_tts(model, device="cpu", dtype="float32" if fp32 else "bfloat16", revision=revision,
                            n_q=options.get("n_q"), reuse=False)
    lm = loaded.tts.lm
    why = unsupported(lm) or unsupported_depth(lm)
    if why:
        raise BackendError(f"{ckpt.source}: the cpu backend cannot run this model yet ({why})",
                           hint="use --backend torch")
    # release: moshi's copies of what the engine converts are emptied (the model's size again in
    # bf16); this model is the cpu backend's alone (``reuse=False``), and what generation still reads
    # of it (the conditioners, the fuser, its sizes and token ids) stays.
    engine = Engine(lm, precision, kv_dtype(precision), release=True)
    loaded.backend, loaded.precision, loaded.engine = "cpu", precision, engine
    loaded.open_decoder = _decoders(loaded.tts.mimi, loaded.n_q)
    loaded.lm_gen = partial(CpuLMGen, engine=engine)
    _LAST.clear()
    _LAST.update(key=key, model=loaded)
    return loaded


def _decoders(mimi, n_q: int):
    """The onnx codec's decoder graph of the model's Mimi, cached beside the codec's by weights
    (``tts.engine`` decodes each frame with it: about half the time of moshi's Mimi on a CPU, see
    docs/benchmarks.md), or None where onnxruntime is missing or the graph cannot be made here
    (moshi's Mimi decodes)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from .onnx_codec import stream_decoders

    return stream_decoders(mimi, n_q)


def voices(model: str | None, *, revision: str | None = None) -> tuple[str, list[str], str]:
    """(model name, voice names, where) from the checkpoint's config.json alone (as the torch backend)."""
    from .torch_tts import voices as torch_voices

    return torch_voices(model, revision=revision)
