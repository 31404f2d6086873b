"""Generating speech on MLX: moshi_mlx's ``LmGen`` and TTS state machine driven step by step over
text that arrives chunk by chunk, decoded to audio frame by frame.

Each step is what moshi_mlx's ``TTSModel.generate`` does (same ``LmGen``, samplers, hooks,
condition tensors and stopping rule), so the same checkpoint, script and seed give the same
codes as Kyutai's ``scripts/tts_mlx.py`` way of driving it. On top, as ``tts.engine`` does for
torch: the script is fed lazily (before every step the queue holds the look-ahead the model
reads, ``second_stream_ahead`` + 1 words, or the rest of the text), ``padding_bonus`` is added
to the pad logit (moshi_mlx 0.3.0 has that line commented out), an audio-prefix voice is encoded
with moshikit's MLX Mimi, ``LmGen``'s token buffer is a ring (flat memory for any length), and
audio leaves frame by frame. Sampling is moshi_mlx's (``Sampler(temp)``: nucleus, top-p 0.95),
not torch's top-k, and MLX's random generator differs from torch's: only greedy (``temp=0``)
output can be compared across backends.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import UsageError
from ..tts.engine import Settings, Speech, word_times
from ..tts.text import Chunk, check_chunk

#: LmGen's token buffer holds this many steps, then keeps only what the next steps read.
BUFFER_STEPS = 512
#: moshi_mlx's TTSModel: at most this many voices in the cross-attention.
MAX_SPEAKERS = 5


def condition_inputs(model, voices: list, cfg: float):
    """(ConditionTensor or None, cross-attention source or None) for ``voices`` at CFG ``cfg``,
    built as moshi_mlx's ``make_condition_attributes`` + ``generate`` build them."""
    import mlx.core as mx
    from moshi_mlx.modules.conditioner import ConditionTensor, TensorCondition

    provider = model.lm.condition_provider
    if provider is None:
        return None, None
    values = model.cfg_values
    if values and cfg not in values:
        shown = ", ".join(f"{v:g}" for v in values)
        raise UsageError(f"--cfg {cfg:g}: this model was trained for {shown}")
    cross = None
    if model.multi_speaker and voices:
        if len(voices) > MAX_SPEAKERS:
            raise UsageError(f"{len(voices)} voices: this model takes at most {MAX_SPEAKERS}")
        embs = [mx.load(str(v.path))["speaker_wavs"] for v in voices]
        frames, dim = embs[0].shape[2], embs[0].shape[1]
        tensor = mx.zeros((1, MAX_SPEAKERS, frames, dim))
        mask = mx.zeros((1, MAX_SPEAKERS, frames), dtype=mx.uint8)
        for i, emb in enumerate(embs):
            tensor[:, i, :, :] = emb.swapaxes(1, 2)
            mask[:, i, :] = True
        condition = TensorCondition(tensor.reshape(1, -1, dim), mask.reshape(1, -1))
        cross = provider.conditioners["speaker_wavs"].condition(condition)
    text = {"control": "ok", "cfg": format(cfg, ".1f") if values else None}
    ct = None
    for key, value in text.items():
        if key in provider.conditioners and value is not None:
            t = provider.condition_tensor(key, value).tensor.squeeze(0)
            ct = t if ct is None else ct + t
    return (None if ct is None else ConditionTensor(mx.stack([ct], axis=0))), cross


def audio_prefix(model, path) -> np.ndarray:
    """A voice sample as the model's prefix, int [1 + K, F]: a zero text row over its Mimi codes
    (the last two frames dropped), as moshi's ``TTSModel.get_prefix``."""
    import sphn

    wav, _ = sphn.read(str(path), sample_rate=model.sample_rate)
    codes = model.codec.encode(wav[:1])[0, :, :-2]
    zero = model.machine.token_ids.zero
    return np.concatenate([np.full((1, codes.shape[1]), zero, np.int64), codes.astype(np.int64)])


def delayed(codes: np.ndarray, delays: list[int], fill: int) -> np.ndarray:
    """``codes`` [K, T] with codebook k shifted right by ``delays[k]`` steps (the rest ``fill``)."""
    k, t = codes.shape
    out = np.full((k, t + max(delays)), fill, np.int64)
    for q, d in enumerate(delays):
        out[q, d:d + t] = codes[q]
    return out


class PadBonus:
    """moshi_mlx's text sampler with ``bonus`` added to the pad logit first (Kyutai's padding bonus)."""

    def __init__(self, base, pad: int, size: int, bonus: float) -> None:
        import mlx.core as mx

        self.base = base
        bias = np.zeros(size, np.float32)
        bias[pad] = bonus
        self.bias = mx.array(bias)

    def __call__(self, logits):
        return self.base(logits + self.bias.astype(logits.dtype))


def roll(gen) -> None:
    """Keep the last columns of ``LmGen``'s full token buffer (what the next steps read)."""
    import mlx.core as mx

    keep = gen.max_delay + 2
    fresh = mx.full((gen.batch_size, gen.num_codebooks, gen.max_steps - keep), gen.ungenerated_token,
                    dtype=mx.int32)
    gen.gen_sequence = mx.concatenate([gen.gen_sequence[:, :, -keep:], fresh], axis=2)
    gen.step_idx = keep


class TextFreeGuidance:
    """moshi_mlx's ``Lm`` as ``LmGen`` sees it, with moshi's classifier-free guidance for models that have
    no distilled CFG (the audio-prefix ones): ``LMGen(cfg_coef, cfg_is_no_text=True,
    cfg_is_masked_until=...)``. The null half of the batch gets no text (the zero token once past
    the initial one) and, until ``masked_until`` + a codebook's delay, no audio; text is sampled from
    the conditioned half alone, audio from ``null + cfg * (cond - null)`` in the depth transformer
    (moshi_mlx's own ``cfg_coef`` path only repeats identical inputs, which guides nothing)."""

    def __init__(self, lm, masked_until: int | None) -> None:
        self.lm, self.cfg, self.masked_until = lm, lm.cfg, masked_until
        self.step = 0

    def _sample(self, text_ids, audio_ids, text_sampler, audio_sampler, ct=None, cross_attention_src=None,
                cfg_coef: float = 1.0, on_text_hook=None, on_audio_hook=None):
        import mlx.core as mx

        lm, step = self.lm, self.step
        self.step += 1
        zero = mx.full(text_ids.shape, -1, dtype=text_ids.dtype)
        xs = lm.text_emb(text_ids)
        null = lm.text_emb(text_ids if step == 0 else zero)
        for ids, emb, delay in zip(audio_ids, lm.audio_embs, lm.delays):
            masked = self.masked_until is not None and delay < step <= delay + self.masked_until
            xs = xs + emb(ids).transpose(1, 0, 2)
            null = null + emb(mx.full(ids.shape, -1, dtype=ids.dtype) if masked else ids).transpose(1, 0, 2)
        xs = mx.concatenate([xs, null], axis=0)
        if ct is not None:
            xs = xs + mx.expand_dims(ct.tensor, axis=1)
        out = lm.out_norm(lm.transformer(xs, cache=lm.transformer_cache, cross_attention_src=cross_attention_src))
        text_token, _ = text_sampler(lm.text_linear(out[:1]))
        if on_text_hook is not None:
            on_text_hook(text_token)
        audio = lm.depformer.sample(out, audio_sampler, text_token, lm.depformer_cache, cfg_coef=cfg_coef)
        if on_audio_hook is not None:
            on_audio_hook(audio)
        return text_token, audio, out


def entries_of(model, chunk: Chunk) -> list:
    """A chunk as moshi_mlx's script entries; the speaker token opens each turn."""
    from moshi_mlx.models.tts import script_to_entries

    script = [""] * (chunk.turn % 2) + [chunk.text]
    return script_to_entries(model.tokenizer, model.machine.token_ids, model.frame_rate, script,
                             multi_speaker=model.multi_speaker and chunk.first, padding_between=1)


def generate(model, chunks: Iterable[Chunk], voices: list, settings: Settings | None = None, *,
             on_pcm: Callable[[np.ndarray], None] | None = None,
             on_word: Callable[[str, float], None] | None = None) -> Speech:
    """Speak ``chunks`` (one continuous stream) with ``voices`` on MLX; frames of 1920 float32
    samples go to ``on_pcm`` as soon as they are decoded."""
    import mlx.core as mx
    from moshi_mlx.models import LmGen
    from moshi_mlx.utils.sampling import Sampler

    s = settings or Settings()
    lm, machine = model.lm, model.machine
    ids = machine.token_ids
    dev = mx.gpu if model.device == "gpu" else mx.cpu
    prefix = None
    with mx.stream(dev):
        ct, cross = condition_inputs(model, voices, s.cfg)
        if not model.multi_speaker and voices:
            prefix = audio_prefix(model, voices[0].path)
    if s.seed is not None:
        mx.random.seed(s.seed)

    state = machine.new_state([])
    ahead = machine.second_stream_ahead + 1
    result = Speech()
    source: Iterator[Chunk] = iter(chunks)
    exhausted = False
    first_text: float | None = None
    offset = 0

    def fill() -> None:
        nonlocal exhausted, first_text
        while not exhausted and sum(1 for e in state.entries if e.tokens) < ahead:
            chunk = next(source, None)
            if chunk is None:
                exhausted = True
                return
            check_chunk(chunk.text, model.tokenizer)
            if first_text is None:
                first_text = time.perf_counter()
            result.characters += len(chunk.text)
            state.entries.extend(entries_of(model, chunk))

    delays = list(lm.delays[:lm.dep_q])
    text_prefix, audio_rows, prefix_frames = deque(), deque(), 0
    if prefix is not None:
        prefix_frames = prefix.shape[-1]
        text_prefix = deque(prefix[0].tolist())
        late = delayed(prefix[1:1 + lm.dep_q], [d + model.delay_steps for d in delays], ids.ungenerated)
        audio_rows = deque(mx.array(late.T[:, :, None].astype(np.int32)))
    silent_until = max(delays) + model.delay_steps

    def on_text(tokens) -> None:
        if text_prefix:
            out = text_prefix.popleft()
        else:
            before = len(state.transcript)
            out, _ = machine.process(offset, state, int(tokens.tolist()[0][0]))
            if on_word is not None and len(state.transcript) > before:
                on_word(state.transcript[-1][0], state.transcript[-1][1] / model.frame_rate)
        tokens[:] = mx.array([[out]], dtype=mx.int64)

    def on_audio(tokens) -> None:
        if offset < silent_until:
            for q, d in enumerate(delays):
                if offset < d + model.delay_steps:
                    tokens[:, q] = ids.zero
        if audio_rows:
            codes = audio_rows.popleft()
            tokens[0] = mx.where(codes != ids.ungenerated, codes, tokens[0])

    text_sampler = Sampler(temp=s.temp)
    if s.padding_bonus:
        text_sampler = PadBonus(text_sampler, ids.pad, lm.cfg.text_out_vocab_size, s.padding_bonus)
    limit = s.max_steps or model.max_gen_length
    guided = not model.cfg_values and s.cfg != 1.0  # CFG at inference, as moshi does (not distilled)
    if guided and lm.condition_provider is not None:
        raise UsageError(f"--cfg {s.cfg:g}: the mlx backend guides only audio-prefix models; use --cfg 1 or -b torch")
    driven = TextFreeGuidance(lm, prefix_frames + model.delay_steps if prefix is not None else None) \
        if guided else lm
    fill()
    if not state.entries:
        raise UsageError("nothing to say: the text is empty")
    started = time.perf_counter()
    with mx.stream(dev):
        for c in lm.transformer_cache + lm.depformer_cache:
            c.reset()
        model.codec.reset_stream(1)
        gen = LmGen(driven, max_steps=BUFFER_STEPS, text_sampler=text_sampler, audio_sampler=Sampler(temp=s.temp),
                    batch_size=1, cfg_coef=s.cfg if guided else 1.0, on_text_hook=on_text, on_audio_hook=on_audio)
        inputs = mx.full((1, lm.n_q - lm.dep_q), ids.zero, dtype=mx.int32)
        while True:
            fill()
            if state.end_step is not None and offset >= state.end_step + model.delay_steps + model.final_padding:
                break
            if offset >= limit:
                result.ended = False
                break
            if gen.step_idx >= gen.max_steps:
                roll(gen)
            gen.step(inputs, ct=ct, cross_attention_src=cross)
            offset += 1
            frame_at = offset - 1 - gen.max_delay  # the output frame this step completed
            if frame_at < model.delay_steps:  # none yet, or the text's head start (all zero)
                mx.eval(gen.gen_sequence)
                continue
            codes = np.array(gen.last_audio_tokens())[0].astype(np.int64)
            if s.keep_codes:
                result.codes.append(codes)
            if s.decode:
                pcm = np.clip(model.codec.decode_step(codes[None, :, None])[0], -1, 1).astype(np.float32)
                if frame_at - model.delay_steps < prefix_frames:
                    continue
                if result.first_audio is None:
                    result.first_audio = time.perf_counter() - (first_text or started)
                result.samples += pcm.size
                if on_pcm is not None:
                    on_pcm(pcm)
            result.frames += 1
    result.steps = offset
    result.seconds = time.perf_counter() - started
    if not s.decode:
        result.samples = result.frames * 1920
    result.words = word_times(state, model.frame_rate, prefix_frames, state.end_step or offset)
    return result
