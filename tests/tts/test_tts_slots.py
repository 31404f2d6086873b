"""Kyutai TTS over slots that texts join and leave at any step (serve's batching), on the tiny
synthetic model, greedy so that runs can be compared."""

from __future__ import annotations

import numpy as np
import pytest

from moshikit.tts import Settings, chunks, generate, resolve_voice
from moshikit.tts.slots import SlotBatch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "Hi you."


def speak_in_slots(model, voice, batch: int, plan: list[tuple[int, int, str]]):
    """plan: (step at which it joins, slot, text sent word by word); audio and words per slot."""
    audio: dict[int, list] = {}
    words: dict[int, list] = {}
    done: dict[int, bool] = {}
    with SlotBatch(model, batch, voice, temp=0.0) as slots:
        step, waiting = 0, sorted(plan)
        while waiting or slots.used():
            while waiting and waiting[0][0] == step:
                _, slot, text = waiting.pop(0)
                slots.start(slot, voice)
                for w in text.split():
                    slots.push(slot, w)
                slots.end_text(slot)
                audio[slot], words[slot] = [], []
            for e in slots.step():
                if e.kind == "audio":
                    audio[e.slot].append(e.pcm)
                elif e.kind == "word":
                    words[e.slot].append((e.text, e.start, e.stop))
                else:
                    done[e.slot] = e.ended
            step += 1
            assert step < 3000
    return {k: np.concatenate(v) for k, v in audio.items()}, words, done


@pytest.fixture(params=["torch", "cpu"])
def model(request, tts_model):
    """The model on moshi's LMGen (torch) and on moshikit's CPU engine (cpu, fp32)."""
    from moshikit.tts import load_tts

    return tts_model if request.param == "torch" else load_tts("synthetic", backend="cpu", dtype="fp32")


def test_one_slot_speaks_what_generate_speaks(model):
    tts_model = model
    voice = resolve_voice(tts_model, None)
    pcm: list = []
    speech = generate(tts_model, chunks([TEXT]), [voice], Settings(temp=0.0), on_pcm=pcm.append)
    audio, words, done = speak_in_slots(tts_model, voice, 1, [(0, 0, TEXT)])
    # batch 1 both ways, the same kernels in the same order: the same samples
    np.testing.assert_array_equal(audio[0], np.concatenate(pcm))
    assert [(w, round(a, 2), round(b, 2)) for w, a, b in words[0]] == \
        [(w.text, round(w.start, 2), round(w.end, 2)) for w in speech.words]
    assert done == {0: True}


def test_a_text_sharing_the_batch_speaks_what_it_speaks_alone(model):
    tts_model = model
    voice = resolve_voice(tts_model, None)
    alone, alone_words, _ = speak_in_slots(tts_model, voice, 2, [(0, 1, TEXT)])
    shared, shared_words, done = speak_in_slots(tts_model, voice, 2, [(0, 0, "Other words here."),
                                                                      (5, 1, TEXT)])
    # the same batch shape, so the same kernels: a row's numbers do not depend on the other row's
    np.testing.assert_array_equal(shared[1], alone[1])
    assert shared_words[1] == alone_words[1] and [w for w, _, _ in shared_words[1]] == TEXT.split()
    assert done == {0: True, 1: True} and shared[0].size > 0


def test_a_slot_waits_for_its_words_and_is_refilled(model):
    tts_model = model
    voice = resolve_voice(tts_model, None)
    with SlotBatch(tts_model, 2, voice, temp=0.0) as slots:
        slots.start(0, voice)
        slots.push(0, "Hi")
        assert not slots.ready(0) and slots.step() == []  # fewer words than the look-ahead: it waits
        slots.start(1, voice)
        slots.end_text(1)
        assert slots.empty(1)  # all text in, nothing to say
        slots.release(1)
        assert slots.free() == [1]
        slots.push(0, "you.")
        assert not slots.ready(0)  # two words, still short of the look-ahead (three)
        slots.end_text(0)
        assert slots.ready(0)  # all of its text is in
        events = []
        while slots.used():
            events += slots.step()
        assert events[-1].kind == "done" and slots.free() == [0, 1]
        slots.start(0, voice)  # a freed slot takes a new text
        for w in TEXT.split():
            slots.push(0, w)
        slots.end_text(0)
        again = []
        while slots.used():
            again += slots.step()
    first = np.concatenate([e.pcm for e in events if e.kind == "audio"])
    second = np.concatenate([e.pcm for e in again if e.kind == "audio"])
    np.testing.assert_array_equal(first, second)  # a restarted slot keeps nothing of its last text


def test_on_the_cpu_engine_the_slots_hold_their_state_for_the_whole_context_from_the_start():
    """serve's TTS batch lives as long as the server: on the CPU engine its KV cache is reserved
    for the model's context when it opens, not grown while slots speak (a stall for every slot).
    A short text alone would never grow it past its first 64 slots."""
    from moshikit.tts import load_tts

    model = load_tts("synthetic", backend="cpu", dtype="fp32")
    voice = resolve_voice(model, None)
    with SlotBatch(model, 2, voice, temp=0.0) as slots:
        step = slots.lm_gen.engine.step
        assert {kv.shape[3] for kv in step.kv} == {model.tts.lm.context}
