"""``bench tts``: time to first audio and x real time of ``moshikit speak``'s generation, next to
moshi's ``TTSModel.generate`` driven directly as Kyutai's scripts/tts_pytorch.py drives it, in the
same run, round-robin (a busy machine slows every row alike).

Both sides speak the same text with the same voice and seed, so they produce the same audio
(the parity the tests check): the rows differ only by how the work is driven. Both run at
each batch size of the sweep: moshi's generate over a batch of texts, and moshikit's
``generate_batch`` (what ``speak DIR`` runs with ``--batch``). Rows of the CPU engine
(``-b cpu``) come with a ``limit: LM step, <precision>`` row: the LM's roofline on this machine
(``bench.limits``; Mimi's decode and sampling are outside it), and their share of it, ``of_limit``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .core import Row, latency_row, throughput_row

TEXT = ("The quick brown fox jumps over the lazy dog. It is a small model that only exists for tests, "
        "and it speaks noise. Please tell me a story about the sea and the wind.")


@dataclass
class TtsPlan:
    model: str | None = "synthetic"
    device: str | None = None
    reference: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    words: int = 20  # words of TEXT spoken per measurement
    repeats: int = 2
    seed: int = 0
    max_steps: int | None = None  # a cap on generation steps (random full-size weights never finish a text)
    dtype: str | None = None
    warmup: bool = True  # one unmeasured run of each row first (minutes on a CPU at full size: skipped there)
    backends: list[str] = field(default_factory=lambda: ["torch"])  # moshikit's rows, one per backend
    pocket: str | None = None  # a Pocket TTS model: adds its rows (bench/tts_pocket.py)
    kyutai: bool = True  # the Kyutai TTS rows


def torch_dtype(plan: TtsPlan) -> str | None:
    """The dtype of the PyTorch rows: the plan's, except int8 (the CPU engine's format; torch runs its default)."""
    return None if plan.dtype == "int8" else plan.dtype


def _sync() -> None:
    try:
        import torch
    except ImportError:  # an MLX-only install
        return

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Reference:
    """moshi's TTSModel.generate with Mimi decoding each frame as it comes (tts_pytorch.py's playing path)."""

    def __init__(self, model, voice, text: str, batch: int) -> None:
        self.model, self.batch = model, batch
        tts = model.tts
        self.entries = [tts.prepare_script([text], padding_between=1)] * batch
        self.attributes = [tts.make_condition_attributes([voice.path], cfg_coef=2.0)] * batch
        self.first: float | None = None
        self.samples = 0
        self.max_steps: int | None = None

    def __call__(self) -> None:
        import torch

        tts = self.model.tts
        tts.temp, tts.padding_bonus, tts.cfg_coef = 0.6, 0.0, 1.0
        if self.max_steps:
            tts.max_gen_length = self.max_steps
        self.first, self.samples = None, 0
        started = time.perf_counter()

        def on_frame(frame):
            if (frame != -1).all():
                pcm = tts.mimi.decode(frame[:, 1:, :])
                if self.first is None:
                    self.first = time.perf_counter() - started
                self.samples += pcm.shape[-1]

        torch.manual_seed(0)
        with torch.no_grad(), tts.mimi.streaming(self.batch):
            tts.generate(self.entries, self.attributes, on_frame=on_frame)
        _sync()


def bench_tts(plan: TtsPlan, *, clock: Callable[[], float] = time.perf_counter) -> Iterator[Row]:
    text = " ".join(TEXT.split()[: plan.words])
    subjects: list[tuple[str, int, Callable[[], tuple[float | None, int]], str]] = []
    if plan.pocket:
        from .tts_pocket import pocket_subjects

        subjects += pocket_subjects(plan.pocket, text)
    engines: dict[str, object] = {}  # row name -> the model, where the CPU engine runs it
    if plan.kyutai:
        subjects += _kyutai_subjects(plan, text, engines)
    machine = None
    for row in _measure(subjects, plan, text, clock):
        model = engines.get(row.name) if row.unit == "x real time" else None
        if model is None:
            yield row
            continue
        from .core import FRAME_SECONDS
        from .limits import limit_row, lm_limit, measure_machine

        if machine is None:
            machine = measure_machine((model.precision,))
        batch = row.params["batch"]
        frames = int(row.params["audio_s"] / FRAME_SECONDS)
        bound = lm_limit(model.engine.step, model.engine.depth, batch, frames, machine, model.precision)
        row.params["of_limit"] = round(row.stats.p50 / bound["x_real_time"], 4)
        yield row
        yield limit_row("tts", row.task, bound, machine, model.precision, batch=batch, device=row.params["device"])


def _kyutai_subjects(plan: TtsPlan, text: str, engines: dict) -> list:
    from ..tts import Settings, chunks, load_tts

    subjects: list[tuple[str, int, Callable[[], tuple[float | None, int]], str]] = []
    model = voice = None
    # torch's row is "moshikit speak", another backend's "moshikit speak -b NAME"; Pocket TTS is --pocket
    for backend in [b for b in plan.backends if b != "pocket"]:
        mine = load_tts(plan.model, backend=backend, dtype=plan.dtype if backend == "cpu" else torch_dtype(plan),
                        device=plan.device if backend == "torch" or plan.device == "cpu" else None)
        mine_voice = mine.resolve_voice(None)
        if backend == "torch":
            model, voice = mine, mine_voice

        def ours(mine=mine, mine_voice=mine_voice):
            speech = mine.generate(chunks([text]), [mine_voice], Settings(seed=plan.seed, max_steps=plan.max_steps))
            _sync()
            return speech.first_audio, speech.samples

        flag = "" if backend == "torch" else f" -b {backend}"
        one, batched = "moshikit speak" + flag, "moshikit speak DIR --batch" + flag
        if getattr(mine, "engine", None) is not None:
            engines.update(dict.fromkeys((one, batched), mine))
        subjects.append((one, 1, ours, str(mine.describe().get("device"))))
        if not hasattr(mine, "generate_batch"):
            continue
        for batch in [b for b in plan.batch_sizes if b > 1]:
            def ours_batch(batch=batch, mine=mine, mine_voice=mine_voice):
                speeches = mine.generate_batch([chunks([text]) for _ in range(batch)], [[mine_voice]] * batch,
                                               Settings(seed=plan.seed, max_steps=plan.max_steps))
                _sync()
                return min(s.first_audio for s in speeches), speeches[0].samples
            subjects.append((batched, batch, ours_batch, mine.device))
    if plan.reference and model is None:
        model = load_tts(plan.model, backend="torch", device=plan.device, dtype=torch_dtype(plan))
        voice = model.resolve_voice(None)
    if plan.reference:
        for batch in plan.batch_sizes:
            ref = _Reference(model, voice, text, batch)
            ref.max_steps = plan.max_steps

            def theirs(ref=ref):
                ref()
                return ref.first, ref.samples
            subjects.append(("moshi TTSModel.generate (reference)", batch, theirs, model.device))
    return subjects


def _measure(subjects: list, plan: TtsPlan, text: str, clock: Callable[[], float]) -> Iterator[Row]:
    for _, _, fn, _ in subjects if plan.warmup else ():  # warm-up
        fn()
    walls: dict[int, list[float]] = {i: [] for i in range(len(subjects))}
    firsts: dict[int, list[float]] = {i: [] for i in range(len(subjects))}
    audio: dict[int, float] = {}
    for _ in range(plan.repeats):
        for i, (_, batch, fn, _) in enumerate(subjects):
            t = clock()
            first, samples = fn()
            walls[i].append(clock() - t)
            if first is not None:
                firsts[i].append(first)
            audio[i] = samples / 24000 * batch
    task = f"speak {len(text.split())} words"
    for i, (name, batch, _, device) in enumerate(subjects):
        params = dict(batch=batch, device=device, words=len(text.split()), audio_s=round(audio[i] / batch, 2))
        yield throughput_row("tts", name, task, audio[i], walls[i], **params)
        if firsts[i]:
            yield latency_row("tts", name, "time to first audio", firsts[i], **params)
