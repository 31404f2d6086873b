"""Words from delayed text tokens, segments, and each format read back by a real parser."""

import io
import json

import numpy as np
import pytest

from moshikit.transcript import (Energy, Transcript, Word, WordBuilder, formats_of, from_json, render,
                                 segment)

PIECES = {4: "▁hel", 5: "lo", 6: "▁world.", 7: "▁again"}


def builder(offset=0.5, energy=None):
    return WordBuilder(lambda ids: "".join(PIECES[i] for i in ids).replace("▁", " "), PIECES.__getitem__,
                       offset, energy)


def feed(b, tokens):
    for step, tok in enumerate(tokens):
        b.feed(step, tok)
    b.finish(len(tokens))
    return b.words


def test_words_start_at_their_first_piece_and_are_delay_corrected():
    # steps: 0-9 padding, 10 end-of-padding, 11 "▁hel", 12 "lo", 13-19 pad, 20 "▁world." ...
    toks = [3] * 10 + [0, 4, 5] + [3] * 7 + [6] + [3] * 30
    words = feed(builder(offset=0.5), toks)
    assert [w.text for w in words] == ["hello", "world."]
    hello, world = words
    assert hello.start == pytest.approx(11 / 12.5 - 0.5)
    assert hello.end == pytest.approx(20 / 12.5 - 0.5)  # the next word's first piece (Kyutai's rule)
    assert world.start == pytest.approx(20 / 12.5 - 0.5)
    assert world.end == pytest.approx(world.start + 12 / 12.5)  # the last word is capped near 1 s


def test_a_new_piece_with_a_space_splits_words_without_an_end_of_padding():
    words = feed(builder(offset=0.0), [3, 4, 5, 7, 3, 3])
    assert [w.text for w in words] == ["hello", "again"]
    assert words[0].end == words[1].start == pytest.approx(3 / 12.5)


def test_energy_narrows_a_word_to_its_sound_but_never_widens_it():
    e = Energy()
    pcm = np.zeros(24000 * 3, np.float32)
    pcm[int(0.60 * 24000): int(0.90 * 24000)] = 0.3 * np.sin(np.arange(int(0.3 * 24000)) * 0.1)
    e.add(pcm)
    toks = [3] * 6 + [4, 5] + [3] * 12 + [7] + [3] * 10
    words = feed(builder(offset=0.0, energy=e), toks)
    hello, again = words
    # Model interval: 0.48 .. 1.6 s; the sound is 0.60 .. 0.90 s.
    assert hello.start == pytest.approx(0.58, abs=0.011)
    assert hello.end == pytest.approx(0.95, abs=0.011)
    # "again" (1.6 .. 2.48 s) has no sound: the model's times stand.
    assert (again.start, again.end) == pytest.approx((20 / 12.5, 31 / 12.5))


def test_segments_break_at_pauses_sentence_ends_and_length():
    w = [Word("one", 0.0, 0.3), Word("two.", 0.4, 0.7), Word("three", 0.8, 1.0), Word("four", 2.5, 2.8)]
    segs = segment(w)
    assert [s.text for s in segs] == ["one two.", "three", "four"]
    long = [Word(f"w{i}", i * 0.5, i * 0.5 + 0.4) for i in range(20)]
    assert all(s.end - s.start <= 7.0 for s in segment(long))
    assert len(segment(long)) == 2


def sample() -> Transcript:
    words = [Word("Hello", 0.5, 0.9), Word("there.", 1.0, 1.4), Word("Second", 3.0, 3.5),
             Word("line", 3.6, 4.0), Word("here", 4.1, 4001.234)]
    return Transcript("a.wav", 4002.0, words, segment(words), [1.5], {"name": "x"})


def test_srt_round_trips_through_the_srt_parser():
    import srt
    t = sample()
    subs = list(srt.parse(render(t, "srt")))
    assert [s.content.replace("\n", " ") for s in subs] == [s.text for s in t.segments]
    assert [(s.start.total_seconds(), s.end.total_seconds()) for s in subs] == [
        (pytest.approx(s.start, abs=1e-3), pytest.approx(s.end, abs=1e-3)) for s in t.segments]
    assert subs[-1].end.total_seconds() == pytest.approx(4001.234)  # hours render


def test_vtt_round_trips_through_webvtt():
    import webvtt
    t = sample()
    captions = webvtt.from_buffer(io.StringIO(render(t, "vtt"))).captions
    assert [c.text.replace("\n", " ") for c in captions] == [s.text for s in t.segments]
    assert [c.start_in_seconds + c.start_time.milliseconds / 1000 for c in captions][0] == pytest.approx(0.5)
    assert captions[-1].end == "01:06:41.234"


def test_json_and_tsv_carry_words_segments_and_turns():
    t = sample()
    data = json.loads(render(t, "json"))
    assert data["end_of_turn"] == [1.5]
    assert data["words"][1] == {"word": "there.", "start": 1.0, "end": 1.4}
    back = from_json(data)
    assert [w.text for w in back.words] == [w.text for w in t.words] and back.text == t.text
    rows = [r.split("\t") for r in render(t, "tsv").splitlines()]
    assert rows[0] == ["start", "end", "text"] and rows[1] == ["500", "1400", "Hello there."]
    assert render(t, "txt").splitlines() == [s.text for s in t.segments]


def test_formats_of():
    assert formats_of("srt, VTT,srt") == ["srt", "vtt"]
    assert formats_of("all") == ["txt", "srt", "vtt", "json", "tsv"]
    with pytest.raises(ValueError, match="unknown transcript format 'xml'"):
        formats_of("txt,xml")
