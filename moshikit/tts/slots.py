"""Kyutai TTS over a batch of slots that texts join and leave at any step (``serve``'s batching).

``engine.generate_batch`` speaks a fixed batch until its longest text ends. A server instead
has requests arriving at any time, with their words arriving over time too: here each batch
row is a *slot* with a state machine, a voice and a step count of its own. A slot that is
given a new text is restarted alone (moshi's ``reset_streaming(mask)`` on the LM and Mimi), its
voice put into the cross-attention source of its row; a slot whose next words have not arrived
yet sits the step out (the LM's and Mimi's ``exec_mask``) instead of reading "end of text". On
the cpu backend the model's own decoder (``open_decoder``: the onnx codec's graph) decodes in
place of moshi's Mimi, with the same restarts and exec mask.
Everything else is ``engine.generate_batch`` per row: the same script entries, the same
look-ahead rule (a slot runs once it holds ``second_stream_ahead + 1`` words or all of its
text), the same zeroed first audio steps, the same skipped frames and stopping rule, so a
text spoken greedily in a slot gives the codes it gives alone in the same batch.

Only models conditioned on voice embeddings with a distilled CFG (``tts-1.6b-en_fr``, the
synthetic checkpoint) can share a batch this way, on the torch or the cpu backend (whose
``lm_gen`` stands in for ``LMGen``); ``SlotBatch.supports`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import ReservingLM
from .engine import condition_attributes, decode_frame, entries_of
from .text import Chunk
from .voices import Voice


@dataclass
class SlotEvent:
    """What a step produced for one slot: ``audio`` (1920 float32 samples), a finished ``word``
    (text, start and stop in seconds of its audio) or ``done`` (``ended`` False when the step
    limit cut the text short)."""

    slot: int
    kind: str  # "audio" | "word" | "done"
    pcm: np.ndarray | None = None
    text: str = ""
    start: float = 0.0
    stop: float = 0.0
    ended: bool = True


@dataclass
class _Slot:
    state: object  # moshi.models.tts.State
    steps: int = 0
    complete: bool = False  # all of its text is in
    first: bool = True  # the next chunk opens the turn
    seen: int = 0  # consumption times already turned into word events
    spoken: int = 0  # transcript entries already seen
    word: tuple[str, int] | None = None  # the word being spoken: (text, its start step)


class SlotBatch:
    """``batch`` slots over one loaded ``TtsModel``; call only from one thread (the model's worker)."""

    @staticmethod
    def supports(model) -> bool:
        tts = getattr(model, "tts", None)
        return (getattr(model, "backend", None) in ("torch", "cpu") and tts is not None
                and bool(model.multi_speaker) and bool(tts.valid_cfg_conditionings))

    def __init__(self, model, batch: int, voice: Voice, *, temp: float, cfg: float = 2.0) -> None:
        import torch
        from moshi.models.lm import LMGen
        from moshi.modules.transformer import StreamingMultiheadAttention

        if not self.supports(model):
            raise ValueError(f"{model.name}: slots need a voice-embedding model with distilled CFG")
        self.model, self.batch, self.cfg = model, batch, cfg
        tts = self.tts = model.tts
        self.ids = tts.machine.token_ids
        self.ahead = tts.machine.second_stream_ahead + 1
        self.frame_rate = float(tts.mimi.frame_rate)
        self.limit = tts.max_gen_length
        self.device = tts.lm.device
        self.slots: list[_Slot | None] = [None] * batch
        self.bonus = torch.zeros(batch, dtype=torch.float32, device=self.device)
        self.steps = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.active: list[bool] = [False] * batch
        self._cross: dict[str, object] = {}
        default = self.cross_source(voice)
        self.sources = default.repeat(batch, 1, 1)
        attributes, _ = condition_attributes(model, [voice], cfg)
        conditions = tts.lm.condition_provider.prepare_and_provide(attributes * batch)
        if not tts.multistream:
            tts.lm.dep_q = tts.n_q
        self.lm_gen = (model.lm_gen or LMGen)(tts.lm, temp=temp, temp_text=temp, cfg_coef=1.0, condition_tensors=conditions,
                            on_text_logits_hook=self._on_text_logits, on_text_hook=self._on_text,
                            on_audio_hook=self._on_audio, support_out_of_sync=True, cfg_is_no_text=True)
        self.cross_modules = [m for m in tts.lm.modules()
                              if isinstance(m, StreamingMultiheadAttention) and m.cross_attention]
        self.inputs = torch.full((batch, tts.lm.n_q - tts.lm.dep_q, 1), self.ids.zero, dtype=torch.long,
                                 device=self.device)
        self.no_depformer = torch.full((batch, tts.lm.dep_q, 1), self.ids.zero, dtype=torch.long,
                                       device=self.device)
        self.audio_delays = torch.tensor(tts.lm.delays[tts.lm.audio_offset:tts.lm.audio_offset + tts.lm.dep_q],
                                         device=self.device)
        self.max_delay = max(tts.lm.delays)
        self._context = None
        self.decoder = None

    # ---------------------------------------------------------------- lifetime

    def __enter__(self) -> "SlotBatch":
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(self.lm_gen.streaming(self.batch))
        if isinstance(self.lm_gen, ReservingLM):  # the CPU engine: no step stops to grow its cache
            self.lm_gen.reserve(self.tts.lm.context)
        stack.enter_context(self.tts.mimi.streaming(self.batch))
        # The CPU engine's own decoder (the onnx codec's graph, as ``engine.generate_batch``), fresh
        # streams as Mimi's here; else Mimi decodes.
        opened = self.model.open_decoder
        self.decoder = opened(self.batch) if opened is not None else None
        self._context = stack
        self._refresh_cross()
        return self

    def __exit__(self, *exc) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None

    def cross_source(self, voice: Voice):
        """The cross-attention source of ``voice`` (kept per voice file)."""
        key = str(voice.path)
        if key not in self._cross:
            tts = self.tts
            import torch

            attributes, _ = condition_attributes(self.model, [voice], self.cfg)
            with torch.no_grad():
                cross = tts.lm.fuser.get_cross(tts.lm.condition_provider.prepare_and_provide(attributes))
            self._cross[key] = cross.to(device=self.device, dtype=tts.lm.dtype)
            if len(self._cross) > 64:
                self._cross.pop(next(iter(self._cross)))
        return self._cross[key]

    def _refresh_cross(self) -> None:
        import torch

        if self.model.lm_gen is not None:  # the CPU engine: its own keys and values of the sources
            self.lm_gen.update_cross(self.sources)
            return
        with torch.no_grad():
            for module in self.cross_modules:
                module.update_streaming_cross_attention_src(self.sources)

    # ---------------------------------------------------------------- slots

    def free(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is None]

    def used(self) -> int:
        return sum(s is not None for s in self.slots)

    def start(self, slot: int, voice: Voice, padding_bonus: float = 0.0) -> None:
        """Give ``slot`` a new text spoken with ``voice`` (its words come with ``push``)."""
        import torch

        source = self.cross_source(voice)
        if source.shape[1:] != self.sources.shape[1:]:
            from ..errors import UsageError

            raise UsageError(f"{voice.name}: this voice embedding does not fit the batch's shape")
        self.slots[slot] = _Slot(self.tts.machine.new_state([]))
        self.bonus[slot] = padding_bonus
        self.steps[slot] = 0
        self.sources[slot] = source[0]
        mask = torch.zeros(self.batch, dtype=torch.bool)
        mask[slot] = True
        mask = mask.to(self.device)
        self.lm_gen.reset_streaming(reset_mask=mask)
        self.tts.mimi.reset_streaming(reset_mask=mask)
        if self.decoder is not None:
            self.decoder.reset(mask.cpu().numpy())
        self._refresh_cross()

    def push(self, slot: int, text: str) -> None:
        """More text for ``slot`` (a word, or sentences); a ``UsageError`` for text it cannot speak."""
        s = self.slots[slot]
        self.model.check_text(text)
        s.state.entries.extend(entries_of(self.model, Chunk(text, 0, s.first)))
        s.first = False

    def end_text(self, slot: int) -> None:
        self.slots[slot].complete = True

    def release(self, slot: int) -> None:
        """Drop ``slot``'s text (its client left); the slot is free again."""
        self.slots[slot] = None

    def ready(self, slot: int) -> bool:
        s = self.slots[slot]
        if s is None:
            return False
        if s.complete:
            return bool(s.state.entries) or s.steps > 0
        words = 0
        for e in s.state.entries:  # stops at the look-ahead: a long text queued up front costs nothing
            words += bool(e.tokens)
            if words >= self.ahead:
                return True
        return False

    def empty(self, slot: int) -> bool:
        """All text in and none of it speakable (nothing to say)."""
        s = self.slots[slot]
        return s is not None and s.complete and s.steps == 0 and not s.state.entries

    # ---------------------------------------------------------------- hooks (inside LMGen.step)

    def _on_text_logits(self, logits) -> None:
        logits[..., self.ids.pad] += self.bonus.to(logits.dtype).view(-1, *([1] * (logits.dim() - 2)))

    def _on_audio(self, tokens) -> None:
        early = self.steps[:, None] < self.audio_delays[None, :] + self.tts.delay_steps
        tokens.masked_fill_(early, self.ids.zero)

    def _on_text(self, tokens) -> None:
        import torch

        out = tokens.tolist()
        for b, token in enumerate(out):
            if self.active[b]:
                s = self.slots[b]
                out[b], _ = self.tts.machine.process(s.steps, s.state, token)
        tokens[:] = torch.tensor(out, dtype=torch.long, device=tokens.device)

    # ---------------------------------------------------------------- one step

    def step(self) -> list[SlotEvent]:
        """One step of every ready slot; [] when none is ready."""
        import torch

        self.active = [self.ready(b) for b in range(self.batch)]
        if not any(self.active):
            return []
        delay = self.tts.delay_steps
        slots = self.slots
        decode = [a and slots[b].steps + 1 - self.max_delay > delay for b, a in enumerate(self.active)]
        text_only = all(slots[b].steps < delay for b, a in enumerate(self.active) if a)
        exec_mask = torch.tensor(self.active, dtype=torch.bool).to(self.device)
        self.lm_gen.set_exec_mask(exec_mask)
        self.tts.mimi.set_exec_mask(torch.tensor(decode, dtype=torch.bool).to(self.device))
        with torch.no_grad():
            frame = self.lm_gen.step(self.inputs, depformer_replace_tokens=self.no_depformer if text_only else None)
            pcm = None
            if any(decode):
                codes = frame[:, 1:, :].clamp(min=0)
                pcm = decode_frame(self.model, self.decoder, codes, np.array(decode))
        self.steps += exec_mask.long()
        events: list[SlotEvent] = []
        for b, on in enumerate(self.active):
            if not on:
                continue
            s = slots[b]
            s.steps += 1
            self._words(b, s, events)
            if decode[b] and pcm is not None:
                events.append(SlotEvent(b, "audio", pcm=pcm[b].copy()))
            end = s.state.end_step
            finished = end is not None and s.steps >= end + delay + self.tts.final_padding
            if finished or s.steps >= self.limit:
                if s.word is not None:
                    text, start = s.word
                    events.append(SlotEvent(b, "word", text=text, start=start / self.frame_rate,
                                            stop=(end if end is not None else s.steps) / self.frame_rate))
                events.append(SlotEvent(b, "done", ended=finished))
                slots[b] = None
        return events

    def _words(self, b: int, s: _Slot, events: list[SlotEvent]) -> None:
        """Turn newly consumed entries into finished words (a word ends where the next entry is taken)."""
        state = s.state
        taken = state.consumption_times
        while s.seen < len(taken):
            at = taken[s.seen]
            s.seen += 1
            if s.word is not None:
                text, start = s.word
                events.append(SlotEvent(b, "word", text=text, start=start / self.frame_rate, stop=at / self.frame_rate))
                s.word = None
            if s.spoken < len(state.transcript) and state.transcript[s.spoken][1] == at:
                s.word = state.transcript[s.spoken]
                s.spoken += 1
