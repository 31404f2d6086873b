"""Talk to Moshi: which model and device a chat may use, warming it up, and offline chat
over a file. The live parts (the local engine, the sound-card loop, recording) are in
``moshikit.live``; their names are re-exported here for the chat command and the API.

No length limit: the LM's context slides, the codec's streaming state is fixed-size, the
statistics keep a fixed window, and recordings are written as they go.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .conversation import FRAME, Conversation
from .errors import ModelError
from .live import (LatencyWindow, LiveConfig, LiveState, LocalEngine, Recorder, level, run_live, transcript_json,
                   write_json_atomic)

__all__ = ["LocalEngine", "LatencyWindow", "LiveConfig", "LiveState", "Recorder", "check_realtime_device",
           "level", "load_chat", "run_live", "run_offline_chat", "transcript_json", "warm_up", "write_json_atomic"]


# --------------------------------------------------------------------------- loading


#: Above this LM width a checkpoint is a full-size Moshi (the 7B has dim 4096).
_LARGE_DIM = 2048


def is_explicit_small(model: str | None) -> bool:
    if model is None:
        return False
    if model == "synthetic":
        return True
    return Path(model).expanduser().exists()


def check_realtime_device(model: str | None, backend: str | None, device: str | None) -> str | None:
    """Refuse live chat with a hub or catalog model on a CPU; return a warning for a
    large local checkpoint on a CPU (None when there is nothing to say)."""
    from . import platform

    choice = platform.resolve("lm", backend, device)
    dev = choice.device
    if dev in (None, "auto"):
        dev = platform.default_lm().device if choice.backend == "torch" else "gpu"
    if dev != "cpu":
        return None
    if not is_explicit_small(model):
        raise ModelError(
            "Moshi 7B cannot run in real time on a CPU (one step takes seconds, a frame lasts 80 ms): "
            "live chat needs a CUDA GPU or Apple silicon",
            hint="talk to a server with --url, run a file offline with --input, or pass --model with a "
                 "tiny local checkpoint ('synthetic' for test weights)")
    cfg_path = Path(model).expanduser() / "config.json" if model != "synthetic" else None
    if cfg_path is not None and cfg_path.is_file():
        try:
            dim = int(json.loads(cfg_path.read_text()).get("dim", 0))
        except (ValueError, OSError, TypeError):
            dim = 0
        if dim > _LARGE_DIM:
            return (f"{model} is a full-size Moshi (dim {dim}): a CPU cannot run it in real time, "
                    "expect most frames to be dropped")
    return None


def load_chat(model: str | None = None, *, backend: str | None = None, device: str | None = None,
              sampling=None, revision: str | None = None, dtype: str | None = None) -> Conversation:
    """The model for a chat (one stream): see ``serve.load_conversation``."""
    from .serve import load_conversation

    return load_conversation(model, backend=backend, device=device, sampling=sampling, revision=revision,
                             dtype=dtype)


def warm_up(conv: Conversation, *, frames: int | None = None, budget: float = 60.0) -> list[float]:
    """Step ``conv`` over a little quiet noise, then reset it: first calls allocate, pick
    kernels and fill caches (the first step has taken seconds), and a live loop must not pay
    that with the user's first words. Runs the LM's delay plus 4 frames by default (stops
    early past ``budget`` seconds). Returns the step times."""
    n = max(conv.lm.info.delays) + 4 if frames is None else frames
    rng = np.random.default_rng(0)
    times: list[float] = []
    t0 = time.monotonic()
    conv.reset()
    for _ in range(n):
        pcm = (rng.standard_normal((conv.batch_size, FRAME)) * 1e-3).astype(np.float32)
        times.append(conv.step(pcm).seconds)
        if time.monotonic() - t0 > budget:
            break
    conv.reset()
    return times


# --------------------------------------------------------------------------- offline


def run_offline_chat(conv: Conversation, pcm: np.ndarray, *,
                     on_text: Callable[[str], None] | None = None,
                     on_frame: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[dict]]:
    """The live loop's model work over a whole file, as fast as the machine allows.

    Returns Moshi's audio (input length plus the LM's delay) and the transcript
    (``{"time", "token", "text"}`` per piece). With a seeded sampling config two runs
    give the same bytes.
    """
    from .conversation import run_offline

    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    total = -(-pcm.size // FRAME) + max(conv.lm.info.delays)

    def frame(f) -> None:
        if on_text is not None and f.text[0]:
            on_text(f.text[0])
        if on_frame is not None:
            on_frame(f.index + 1, total)

    return run_offline(conv, pcm, on_frame=frame)
