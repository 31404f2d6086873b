"""Generating speech: moshi's TTS state machine and ``LMGen`` driven step by step over text that
arrives chunk by chunk, decoded to audio as it is generated.

This is ``moshi.models.tts.TTSModel.generate`` (same ``LMGen`` arguments, same hooks, same
skipped depth-transformer steps, same stopping rule), run as one continuous stream whose
script is fed lazily: before every step the queue of words holds at least the
look-ahead the model reads (``second_stream_ahead`` + 1 words) or the whole rest of the
text, so the model sees exactly what it would have seen with the whole script up front,
and the same seed gives the same codes. Memory stays flat: the KV cache is a ring,
audio leaves frame by frame, and only the words' timings are kept. On the cpu backend the
model's ``lm_gen`` (``backends.cpu_lmgen.CpuLMGen``: the same arguments and hooks over
moshikit's CPU engine) stands in for ``LMGen``, and its ``open_decoder`` (the onnx codec's
decoder graph) decodes the frames in place of moshi's Mimi.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from .text import Chunk, check_chunk
from .voices import Voice


@dataclass
class WordTime:
    text: str
    start: float
    end: float


@dataclass
class Speech:
    """What one generation produced (the audio went to ``on_pcm``)."""

    frames: int = 0  # audio frames (80 ms) sent out
    samples: int = 0
    words: list[WordTime] = field(default_factory=list)
    characters: int = 0
    steps: int = 0
    ended: bool = True  # False when max_steps stopped it before the text was all spoken
    seconds: float = 0.0  # wall time
    first_audio: float | None = None  # wall seconds from the first text's arrival to the first audio frame
    codes: list = field(default_factory=list)  # [K] int arrays per frame, when kept

    @property
    def duration(self) -> float:
        return self.samples / 24000


@dataclass
class Settings:
    temp: float = 0.6
    cfg: float = 2.0
    padding_bonus: float = 0.0
    seed: int | None = None
    max_steps: int | None = None
    keep_codes: bool = False
    decode: bool = True


def condition_attributes(model, voices: list[Voice], cfg: float):
    """(moshi's ``ConditionAttributes`` for one row spoken with ``voices`` at CFG strength ``cfg``, None);
    for audio-prefix models ([], the voice as a prefix of codes)."""
    tts = model.tts
    if not model.multi_speaker:
        return [], [tts.get_prefix(voices[0].path)] if voices else None
    distilled = bool(tts.valid_cfg_conditionings)
    if distilled and cfg not in tts.valid_cfg_conditionings:
        from ..errors import UsageError

        values = ", ".join(f"{v:g}" for v in sorted(tts.valid_cfg_conditionings))
        raise UsageError(f"--cfg {cfg:g}: this model was trained for {values}")
    return [tts.make_condition_attributes([v.path for v in voices], cfg_coef=cfg if distilled else None)], None


def entries_of(model, chunk: Chunk) -> list:
    """A chunk as moshi's script entries; the speaker token opens each turn, as in the whole script."""
    from moshi.models.tts import script_to_entries

    tts = model.tts
    script = [""] * (chunk.turn % 2) + [chunk.text]
    return script_to_entries(tts.tokenizer, tts.machine.token_ids, tts.mimi.frame_rate, script,
                             multi_speaker=model.multi_speaker and chunk.first, padding_between=1)


def generate(model, chunks: Iterable[Chunk], voices: list[Voice], settings: Settings | None = None, *,
             on_pcm: Callable[[np.ndarray], None] | None = None,
             on_word: Callable[[str, float], None] | None = None) -> Speech:
    """Speak ``chunks`` (one continuous stream) with ``voices``; audio frames of 1920 float32
    samples go to ``on_pcm`` as soon as they are decoded."""
    return generate_batch(model, [chunks], [voices], settings,
                          on_pcm=None if on_pcm is None else (lambda _, pcm: on_pcm(pcm)),
                          on_word=None if on_word is None else (lambda _, word, at: on_word(word, at)))[0]


class _Row:
    """One text of a batch: its script fed lazily into the state machine, its prefix, its result."""

    def __init__(self, model, chunks: Iterable[Chunk], prefix, ahead: int) -> None:
        self.model, self.ahead = model, ahead
        self.state = model.tts.machine.new_state([])
        self.source: Iterator[Chunk] = iter(chunks)
        self.exhausted = False
        self.first_text: float | None = None
        self.result = Speech()
        self.text_prefix = self.audio_prefix = None
        self.prefix_frames = 0
        if prefix is not None:
            from collections import deque

            tts = model.tts
            self.prefix_frames = prefix.shape[-1]
            self.text_prefix = deque(prefix[0].cpu().tolist())
            delays = [d + tts.delay_steps for d in tts.lm.delays[tts.lm.audio_offset:]]
            self.audio_prefix = deque(delayed(prefix[tts.lm.audio_offset:], delays,
                                              tts.machine.token_ids.ungenerated).to(tts.lm.device).t())

    def fill(self) -> None:
        """Queue words until the model's look-ahead is covered (or the text is all in)."""
        state = self.state
        while not self.exhausted and sum(1 for e in state.entries if e.tokens) < self.ahead:
            chunk = next(self.source, None)
            if chunk is None:
                self.exhausted = True
                return
            check_chunk(chunk.text, self.model.tts.tokenizer)
            if self.first_text is None:
                self.first_text = time.perf_counter()
            self.result.characters += len(chunk.text)
            state.entries.extend(entries_of(self.model, chunk))

    def done(self, offset: int) -> bool:
        tts = self.model.tts
        end = self.state.end_step
        return end is not None and offset >= end + tts.delay_steps + tts.final_padding


def generate_batch(model, scripts: list[Iterable[Chunk]], voices: list[list[Voice]], settings: Settings | None = None,
                   *, on_pcm: Callable[[int, np.ndarray], None] | None = None,
                   on_word: Callable[[int, str, float], None] | None = None) -> list[Speech]:
    """Speak several scripts at once, one batch row each (moshi's ``TTSModel.generate`` over a
    batch, fed lazily): row ``i`` speaks ``scripts[i]`` with ``voices[i]``; its audio goes to
    ``on_pcm(i, pcm)`` until its own end. All rows run until the longest ends."""
    import torch
    from moshi.conditioners import dropout_all_conditions
    from moshi.models.lm import LMGen

    s = settings or Settings()
    tts = model.tts
    tts.temp, tts.padding_bonus = s.temp, s.padding_bonus
    attributes, prefixes = [], []
    for row_voices in voices:
        row_attributes, row_prefixes = condition_attributes(model, row_voices, s.cfg)
        attributes += row_attributes
        prefixes.append(row_prefixes[0] if row_prefixes else None)
    if not tts.valid_cfg_conditionings:  # CFG done at inference (no distilled strengths), as moshi does
        tts.cfg_coef = s.cfg
    if tts.cfg_coef != 1.0 and attributes:
        attributes = list(attributes) + dropout_all_conditions(attributes)
    condition_tensors = tts.lm.condition_provider.prepare_and_provide(attributes)
    if s.seed is not None:
        torch.manual_seed(s.seed)

    ids = tts.machine.token_ids
    ahead = tts.machine.second_stream_ahead + 1
    device = tts.lm.device
    rows = [_Row(model, script, prefix, ahead) for script, prefix in zip(scripts, prefixes)]
    batch = len(rows)
    offset = 0
    masked_until = [r.prefix_frames + tts.delay_steps for r in rows] if any(p is not None for p in prefixes) \
        else None

    def on_text_logits(logits):
        if tts.padding_bonus:
            logits[..., ids.pad] += tts.padding_bonus

    def on_audio(tokens):
        for q in range(tokens.shape[1]):
            if offset < tts.lm.delays[q + tts.lm.audio_offset] + tts.delay_steps:
                tokens[:, q] = ids.zero
        for b, row in enumerate(rows):
            if row.audio_prefix:
                codes = row.audio_prefix.popleft()
                tokens[b] = torch.where(codes != ids.ungenerated, codes, tokens[b])

    def on_text(tokens):
        outs = []
        for b, (row, token) in enumerate(zip(rows, tokens.tolist())):
            if row.text_prefix:
                outs.append(row.text_prefix.popleft())
                continue
            state = row.state
            before = len(state.transcript)
            out, _ = tts.machine.process(offset, state, token)
            if on_word is not None and len(state.transcript) > before:
                on_word(b, state.transcript[-1][0], state.transcript[-1][1] / tts.mimi.frame_rate)
            outs.append(out)
        tokens[:] = torch.tensor(outs, dtype=torch.long, device=tokens.device)

    if not tts.multistream:
        tts.lm.dep_q = tts.n_q
    lm_gen = (model.lm_gen or LMGen)(tts.lm, temp=tts.temp, temp_text=tts.temp, cfg_coef=tts.cfg_coef,
                   condition_tensors=condition_tensors, on_text_logits_hook=on_text_logits,
                   on_text_hook=on_text, on_audio_hook=on_audio, cfg_is_masked_until=masked_until,
                   cfg_is_no_text=True)
    no_depformer = torch.full((batch, tts.lm.dep_q, 1), ids.zero, dtype=torch.long, device=device)
    missing = tts.lm.n_q - tts.lm.dep_q
    inputs = torch.full((batch, missing, 1), ids.zero, dtype=torch.long, device=device)
    limit = s.max_steps or tts.max_gen_length
    started = time.perf_counter()
    frame_index = 0
    for row in rows:
        row.fill()
        if not row.state.entries:
            from ..errors import UsageError

            raise UsageError("nothing to say: the text is empty")
    # The CPU engine's own decoder (the onnx codec's graph), else moshi's Mimi in the model.
    decoder = model.open_decoder(batch) if s.decode and model.open_decoder is not None else None
    with torch.no_grad(), lm_gen.streaming(batch), tts.mimi.streaming(batch):
        while True:
            for row in rows:
                row.fill()
            live = [not row.done(offset) for row in rows]
            if not any(live):
                break
            if offset >= limit:
                for row, on in zip(rows, live):
                    row.result.ended = not on
                break
            frame = lm_gen.step(inputs, depformer_replace_tokens=no_depformer if offset < tts.delay_steps else None)
            offset += 1
            if frame is None:
                continue
            frame_index += 1
            if frame_index <= tts.delay_steps:
                continue
            codes = frame[:, 1:, :]
            pcm = decode_frame(model, decoder, codes) if s.decode else None
            kept = codes[:, :, 0].cpu().numpy().astype(np.int64) if s.keep_codes else None
            for b, row in enumerate(rows):
                if not live[b]:
                    continue
                result = row.result
                if kept is not None:
                    result.codes.append(kept[b])
                if pcm is not None:
                    if frame_index - tts.delay_steps <= row.prefix_frames:
                        continue
                    if result.first_audio is None:
                        result.first_audio = time.perf_counter() - (row.first_text or started)
                    result.samples += pcm.shape[-1]
                    if on_pcm is not None:
                        on_pcm(b, pcm[b])
                result.frames += 1
    seconds = time.perf_counter() - started
    for row in rows:
        result = row.result
        result.steps, result.seconds = offset, seconds
        if not s.decode:
            result.samples = result.frames * 1920
        result.words = word_times(row.state, tts.mimi.frame_rate, row.prefix_frames, row.state.end_step or offset)
    return [row.result for row in rows]


def decode_frame(model, decoder, codes, active: np.ndarray | None = None) -> np.ndarray:
    """A frame's audio [B, 1920] float32 in [-1, 1] from its ``codes`` [B, K, 1] (a tensor): by the
    model's own ``decoder`` (``TtsModel.open_decoder``; ``active``: the rows that decode, the others
    keep their state) where it has one, else by moshi's Mimi in ``model.tts`` (streaming, its exec
    mask set by the caller)."""
    if decoder is not None:
        pcm = decoder.decode(codes.cpu().numpy(), active)
    else:
        pcm = model.tts.mimi.decode(codes).float().cpu().numpy()[:, 0]
    return np.clip(pcm, -1, 1).astype(np.float32, copy=False)


def delayed(codes, delays: list[int], fill: int):
    """``codes`` [K, T] with codebook k shifted right by ``delays[k]`` steps (the rest ``fill``)."""
    import torch

    k, t = codes.shape
    out = torch.full((k, t + max(delays)), fill, device=codes.device, dtype=torch.long)
    for q, d in enumerate(delays):
        out[q, d:d + t] = codes[q]
    return out


def word_times(state, frame_rate: float, prefix_frames: int, end_step: int) -> list[WordTime]:
    """Each word from the step the model took it (its start) to the step it took the next entry
    (a word or a pause) or stopped: the model's own alignment, in output seconds."""
    words: list[WordTime] = []
    steps = list(state.consumption_times) + [end_step]
    spoken = iter(state.transcript)
    nxt = next(spoken, None)
    for i, step in enumerate(state.consumption_times):
        if nxt is not None and nxt[1] == step:
            words.append(WordTime(nxt[0], (step - prefix_frames) / frame_rate,
                                  (steps[i + 1] - prefix_frames) / frame_rate))
            nxt = next(spoken, None)
    return words
