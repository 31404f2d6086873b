"""Speech generation on the tiny synthetic TTS model: parity with moshi's own TTSModel.generate,
one continuous stream over sentences, seeds, pauses, speed, word timings, checks, outputs."""

from __future__ import annotations

import numpy as np
import pytest

from moshikit.errors import UsageError
from moshikit.tts import Settings, chunks, generate, resolve_voice, sentences
from moshikit.tts.model import padding_bonus
from moshikit.tts.text import Chunk, check_chunk, words_as_they_come

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a tiny model: threads only cost

TEXT = "Hi there. Yes! Ça va?"


@pytest.fixture(scope="module")
def voice(tts_model):
    return resolve_voice(tts_model, None)


def moshi_reference(tts_model, voice, text, seed, cfg=2.0):
    """moshi's TTSModel.generate driven directly, as Kyutai's scripts/tts_pytorch.py drives it."""
    import torch

    tts = tts_model.tts
    tts.temp, tts.padding_bonus, tts.cfg_coef = 0.6, 0.0, 1.0
    entries = tts.prepare_script([text], padding_between=1)
    attributes = tts.make_condition_attributes([voice.path], cfg_coef=cfg)
    torch.manual_seed(seed)
    result = tts.generate([entries], [attributes])
    frames = result.frames[tts.delay_steps:]
    with tts.mimi.streaming(1), torch.no_grad():
        pcm = np.concatenate([np.clip(tts.mimi.decode(f[:, 1:, :]).numpy()[0, 0], -1, 1) for f in frames])
    return np.stack([f[0, 1:, 0].numpy() for f in frames], axis=-1), pcm, result


def test_equals_moshi_tts_model_generate(tts_model, voice):
    """Cut into sentences and fed lazily, the stream is still exactly moshi's generate on the whole text."""
    ref_codes, ref_pcm, ref = moshi_reference(tts_model, voice, TEXT, seed=7)
    pcm: list = []
    speech = generate(tts_model, chunks([TEXT]), [voice], Settings(seed=7, keep_codes=True), on_pcm=pcm.append)
    assert len(list(sentences([TEXT]))) == 3
    np.testing.assert_array_equal(np.stack(speech.codes, axis=-1), ref_codes)
    np.testing.assert_array_equal(np.concatenate(pcm), ref_pcm)
    assert [w.text for w in speech.words] == [w for w, _ in ref.all_transcripts[0]]
    assert [round(w.start * 12.5) for w in speech.words] == [s for _, s in ref.all_transcripts[0]]
    assert speech.duration == pytest.approx(len(ref_pcm) / 24000) and speech.ended


def test_seed_repeats_and_other_seeds_differ(tts_model, voice):
    runs = [generate(tts_model, chunks(["Hello there."]), [voice], Settings(seed=s, keep_codes=True, decode=False))
            for s in (1, 1, 2)]
    a, b, c = (np.stack(r.codes, axis=-1) for r in runs)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or (a != c).any()


def test_word_timings_and_pauses(tts_model, voice):
    plain = generate(tts_model, chunks(["one two three"]), [voice], Settings(seed=3, decode=False))
    paused = generate(tts_model, chunks(['one two <break time="2.0s"/> three']), [voice],
                      Settings(seed=3, decode=False))
    assert [w.text for w in paused.words] == ["one", "two", "three"]
    for speech in (plain, paused):
        starts = [w.start for w in speech.words]
        assert starts == sorted(starts) and all(w.end >= w.start for w in speech.words)
        assert all(a.end <= b.start + 1e-9 for a, b in zip(speech.words, speech.words[1:]))
    # The pause: "two" ends where the break entry was taken, and "three" waits 2 s (25 steps) more.
    gap = paused.words[2].start - paused.words[1].end
    assert gap >= 2.0 - 1e-6
    assert paused.steps > plain.steps + 12


def test_speed_changes_the_pace(tts_model, voice):
    text = "Hello world, this is a test of speed, said the model."
    steps = {s: generate(tts_model, chunks([text]), [voice], Settings(seed=3, padding_bonus=padding_bonus(s),
                                                                     decode=False)).steps for s in (0.5, 2.0)}
    assert steps[2.0] < steps[0.5]
    with pytest.raises(UsageError, match="--speed 3 is out of range"):
        padding_bonus(3.0)


def test_audio_starts_before_the_input_ends(tts_model, voice):
    """--stream's promise: words pulled one at a time, the first audio comes before the last word is read."""
    frames_seen: list[int] = []
    pcm: list = []

    def source():
        for chunk in words_as_they_come(["Words come in one at a time, slowly now. "]):
            frames_seen.append(len(pcm))
            yield chunk

    speech = generate(tts_model, source(), [voice], Settings(seed=0), on_pcm=pcm.append)
    assert frames_seen[0] == 0 and frames_seen[-1] > 0  # audio was out when the last word arrived
    assert speech.first_audio is not None and speech.first_audio > 0


def test_sentences_and_words_split_only_where_they_should():
    assert list(sentences(["Dr. Smith", " went. Then\n\nmore"])) == ["Dr.", "Smith went.", "Then", "more"]
    got = [c.text for c in words_as_they_come(["a <break ", 'time="1s"/> b', " c"])]
    assert got == ["a", '<break time="1s"/>', "b", "c"]
    firsts = [c.first for c in chunks(["One. Two. Three."])]
    assert firsts == [True, False, False]


def test_checks(tts_model, voice):
    sp = tts_model.tts.tokenizer
    with pytest.raises(UsageError, match="characters this model cannot speak: '日' '本'"):
        check_chunk("Hello 日本", sp)
    with pytest.raises(UsageError, match="not a pause moshikit understands"):
        check_chunk("wait <break time=1s> here", sp)
    with pytest.raises(UsageError, match="longer than 10 s"):
        check_chunk('<break time="60s"/>', sp)
    check_chunk('Fine, <break time="0.5s"/> très bien!', sp)
    with pytest.raises(UsageError, match="nothing to say"):
        generate(tts_model, chunks(["   \n  "]), [voice])
    with pytest.raises(UsageError, match="--cfg 2.2: this model was trained for 1, 1.5, 2"):
        generate(tts_model, [Chunk("hi")], [voice], Settings(cfg=2.2))


def test_python_api(tts_model):
    import moshikit

    tts = moshikit.load_tts("synthetic")
    assert tts.model.name == "synthetic" and tts.model.multi_speaker
    audio, words = tts.speak("Hi there.", seed=5)
    again, _ = tts.speak("Hi there.", seed=5)
    assert audio.dtype == np.float32 and audio.size % 1920 == 0 and np.array_equal(audio, again)
    assert [w.text for w in words] == ["Hi", "there."] and words[-1].end <= audio.size / 24000
    assert "vctk/p225_023.wav" in tts.voices()


def test_chunked_scripts_are_moshis_whole_scripts(tts_model, tmp_path):
    """Monologue sentences and dialogue turns, cut into chunks, give the entries moshi's
    prepare_script gives for the whole script (speaker tokens at each turn only)."""
    from moshikit.tts.engine import entries_of
    from moshikit.tts.text import dialogue_chunks, read_dialogue

    tts = tts_model.tts

    def flat(entries):
        return [(e.tokens, e.text, e.padding) for e in entries]

    text = 'One two. Three, <break time="0.4s"/> four! Five?'
    ours = [e for c in chunks([text]) for e in entries_of(tts_model, c)]
    assert flat(ours) == flat(tts.prepare_script([text], padding_between=1))
    talk = tmp_path / "t.jsonl"
    talk.write_text('{"speaker": "a", "text": "Hi. How are you?"}\n{"speaker": "b", "text": "Fine."}\n'
                    '{"speaker": "b", "text": "You?"}\n{"speaker": "a", "text": "Good."}\n')
    turns = read_dialogue(talk)
    assert [t.text for t in turns] == ["Hi. How are you?", "Fine. You?", "Good."]
    ours = [e for c in dialogue_chunks(turns) for e in entries_of(tts_model, c)]
    assert flat(ours) == flat(tts.prepare_script([t.text for t in turns], padding_between=1))
    main, other = tts.machine.token_ids.main, tts.machine.token_ids.other
    assert [e.tokens[0] for e in ours if e.tokens[0] in (main, other)] == [main, other, main]


def test_long_text_is_read_with_flat_memory(tmp_path):
    """A 1.2 MB text is cut into sentences a block at a time: memory stays near one block."""
    import tracemalloc

    from moshikit.tts.text import read_blocks

    book = tmp_path / "book.txt"
    para = "It was a dark night. The wind blew! Did anyone hear it?\n\n" * 2000
    with open(book, "w", encoding="utf-8") as f:
        for _ in range(10):
            f.write(para)
    tracemalloc.start()
    n = 0
    for c in chunks(read_blocks(book)):
        n += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 3 * 2000 * 10 and book.stat().st_size > 1e6
    assert peak < 0.5e6  # a 64 KB block and its sentences, not the book


BATCH = ["Hi there.", "A longer line to speak, with more words. And a second sentence!", "Yes?"]


def test_batch_equals_moshi_tts_model_generate_on_a_batch(tts_model, voice):
    """Three texts in one batch are moshi's generate on the same batch, row for row, each cut at its own end."""
    import torch

    from moshikit.tts.engine import generate_batch

    tts = tts_model.tts
    tts.temp, tts.padding_bonus, tts.cfg_coef = 0.6, 0.0, 1.0
    entries = [tts.prepare_script([t], padding_between=1) for t in BATCH]
    attributes = [tts.make_condition_attributes([voice.path], cfg_coef=2.0) for _ in BATCH]
    torch.manual_seed(11)
    ref = tts.generate(entries, attributes)
    ref_codes = torch.cat(ref.frames[tts.delay_steps:], dim=-1)[:, 1:].numpy()  # [B, K, T]

    got: dict[int, list] = {b: [] for b in range(len(BATCH))}
    speeches = generate_batch(tts_model, [chunks([t]) for t in BATCH], [[voice]] * len(BATCH),
                              Settings(seed=11, keep_codes=True), on_pcm=lambda b, pcm: got[b].append(pcm))
    lengths = [len(s.codes) for s in speeches]
    assert lengths[1] == ref_codes.shape[-1] and lengths[0] < lengths[1] and lengths[2] < lengths[1]
    for b, speech in enumerate(speeches):
        np.testing.assert_array_equal(np.stack(speech.codes, axis=-1), ref_codes[b, :, :lengths[b]])
        assert [w.text for w in speech.words] == [w for w, _ in ref.all_transcripts[b]]
        assert sum(p.size for p in got[b]) == speech.samples == lengths[b] * 1920 and speech.ended
    # Each row stops at its own end (its last word, then the model's final padding), the longest with moshi.
    assert [n - lengths[1] for n in lengths] == [e - ref.end_steps[1] for e in ref.end_steps]


def test_batch_rows_are_the_texts_spoken_alone_when_greedy(tts_model, voice):
    from moshikit.tts.engine import generate_batch

    alone = [generate(tts_model, chunks([t]), [voice], Settings(temp=0.0, keep_codes=True)) for t in BATCH]
    together = generate_batch(tts_model, [chunks([t]) for t in BATCH], [[voice]] * len(BATCH),
                              Settings(temp=0.0, keep_codes=True))
    for a, t in zip(alone, together):
        assert [w.text for w in a.words] == [w.text for w in t.words]
        np.testing.assert_array_equal(np.stack(a.codes, axis=-1), np.stack(t.codes, axis=-1))
