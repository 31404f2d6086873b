"""Kyutai STT mechanics on tiny synthetic checkpoints: exact delay-corrected timestamps
from a checkpoint scripted to emit known tokens at known frames, batching that does not
change a file's words, failures that stay with their file, flat memory on long input."""

import json
import tracemalloc

import numpy as np
import pytest

from moshikit import filejobs, stt
from moshikit.errors import ModelError
from moshikit.synthetic import lm as synthetic_lm
from moshikit.synthetic.stt import write_stt_repo

# Tiny tokenizer pieces (moshikit.synthetic.lm.write_tokenizer).
GOOD, S, EA, THE = 35, 8, 21, 11
FR = 12.5


def script_at(times: list[tuple[float, int]], offset: float) -> list[tuple[int, int]]:
    """Audio times (when a word is spoken) -> the model steps that speak of them."""
    return [(round((t + offset) * FR), tok) for t, tok in times]


# Audio-time script: a word "good" at 1.18 s, "sea" at 1.98 s, padding between; pause from
# 2.78 s. Both delays below are a whole number of frames plus 0.02 s, so these times are
# on both models' frame grids.
SPOKEN = [(1.1, 0), (1.18, GOOD), (1.26, 2), (1.98, S), (2.06, EA), (2.14, 1)]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory, mimi_weights):
    """Two checkpoints with the published delays of stt-1b (0.5 s, no prefix) and stt-2.6b
    (2.5 s after a 1 s silence prefix), both scripted to speak of the same audio times."""
    repos = {}
    for name, delay, prefix in (("1b", 0.5, 0.0), ("2.6b", 2.5, 1.0)):
        offset = -(-prefix * FR // 1) / FR + delay  # ceil(prefix * 12.5) frames, then the delay
        repos[name] = write_stt_repo(tmp_path_factory.mktemp("stt") / name, kind="scripted", mimi_path=mimi_weights,
                                     delay=delay, prefix=prefix, script=script_at(SPOKEN, offset),
                                     pause_from=round((2.78 + offset) * FR))
    return repos


@pytest.fixture(scope="module")
def models(scripted):
    return {name: stt.load_stt(str(repo), backend="torch", device="cpu") for name, repo in scripted.items()}


@pytest.fixture(scope="module")
def random_model(tmp_path_factory, mimi_weights):
    repo = write_stt_repo(tmp_path_factory.mktemp("stt") / "random", kind="random", mimi_path=mimi_weights)
    return stt.load_stt(str(repo), backend="torch", device="cpu")


def transcribe(model, pcm, refine=False):
    return stt.transcribe_live(model, [pcm], refine=refine, chunk=25)


@pytest.mark.parametrize("name", ["1b", "2.6b"])
def test_word_times_are_when_words_were_spoken(models, name):
    model = models[name]
    assert model.delay == {"1b": 0.5, "2.6b": 2.5}[name]
    t = transcribe(model, np.zeros(24000 * 4, np.float32))
    assert [(w.text, w.start, w.end) for w in t.words] == [
        ("good", pytest.approx(1.18), pytest.approx(1.98)),
        ("sea", pytest.approx(1.98), pytest.approx(2.06 + 12 / FR)),
    ]
    assert t.end_of_turn == [pytest.approx(2.78)]
    assert t.duration == 4.0
    assert [s.text for s in t.segments] == ["good sea"]


def test_input_is_padded_so_the_last_words_come_out(models):
    # The audio ends 0.3 s after "sea" starts: its token comes 2.5 s later, after the
    # audio; the delay flush must still produce it, and the word is cut at the end.
    t = transcribe(models["2.6b"], np.zeros(int(24000 * 2.3), np.float32))
    assert [w.text for w in t.words] == ["good", "sea"]
    assert t.words[-1].end == pytest.approx(2.3, abs=1e-4)


def test_word_ends_follow_the_sound(models):
    pcm = np.zeros(24000 * 4, np.float32)
    rng = np.random.default_rng(0)
    pcm[int(1.25 * 24000): int(1.6 * 24000)] = 0.2 * rng.standard_normal(int(0.35 * 24000))
    t = transcribe(models["1b"], pcm, refine=True)
    good = t.words[0]
    # The model says 1.18 .. 1.98 s; the sound of "good" is 1.25 .. 1.6 s.
    assert good.start == pytest.approx(1.23, abs=0.011)
    assert good.end == pytest.approx(1.65, abs=0.011)


def test_timestamps_are_monotonic_with_random_weights(random_model, speech):
    t = transcribe(random_model, speech[: 24000 * 6], refine=True)
    assert t.words, "the random model says something"
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= t.duration for w in t.words)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(t.words, t.words[1:]))


def test_a_batch_gives_each_file_its_words_alone(random_model, speech, tmp_path, write_wav):
    lengths = [2.3, 5.0, 1.1, 3.7, 0.4]
    files = [write_wav(tmp_path / f"in/f{i}.wav", speech[int(24000 * i): int(24000 * (i + s))])
             for i, s in enumerate(lengths)]
    (tmp_path / "in/bad.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    inputs = [str(f) for f in files[:2]] + [str(tmp_path / "in/bad.wav")] + [str(f) for f in files[2:]]

    def run(batch):
        jobs, failed = filejobs.plan(inputs, str(tmp_path / f"out{batch}"), ".json")
        opts = stt.TranscribeOptions(formats=["json"], batch_size=batch)
        results = list(stt.transcribe_files(jobs, random_model, opts))
        assert sorted(r.status for r in results) == ["done"] * 5 + ["failed"]
        assert "bad.wav" in next(r.error for r in results if r.status == "failed")
        return {f.name: json.loads((tmp_path / f"out{batch}" / f.with_suffix(".json").name).read_text())
                for f in files}

    one, three = run(1), run(3)
    for name in one:
        assert one[name]["words"] == three[name]["words"], name
        assert one[name]["duration"] == three[name]["duration"]
    assert sum(len(v["words"]) for v in one.values()) > 5


def test_long_input_keeps_flat_memory(random_model, speech, tmp_path, write_wav):
    def peak(seconds: float) -> int:
        reps = int(seconds * 24000 // speech.size) + 1
        path = write_wav(tmp_path / f"long{seconds}.wav", np.tile(speech, reps)[: int(seconds * 24000)])
        jobs, _ = filejobs.plan([str(path)], str(tmp_path / "out"), ".txt")
        tracemalloc.start()
        try:
            [r] = list(stt.transcribe_files(jobs, random_model, stt.TranscribeOptions(formats=["txt"])))
            assert r.status == "done"
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(6), peak(30)
    # Five times the audio (the whole file would be 2.3 MB more as float32): the peak
    # grows only by the words and a 10 ms energy track.
    assert long - short < 200_000, (short, long)


def test_a_chat_checkpoint_is_refused(tmp_path, mimi_weights):
    repo = synthetic_lm.write_moshi_repo(tmp_path / "moshiko", seed=0, mimi_path=mimi_weights)
    with pytest.raises(ModelError, match="not a speech-to-text checkpoint"):
        stt.load_stt(str(repo), backend="torch", device="cpu")


def test_mlx_gives_the_torch_words(tmp_path, mimi_weights, speech):
    pytest.importorskip("moshi_mlx")
    pt = write_stt_repo(tmp_path / "pt", kind="random", mimi_path=mimi_weights)
    mx = write_stt_repo(tmp_path / "mx", kind="random", mimi_path=mimi_weights, layout="mlx")
    pcm = speech[: 24000 * 3]
    # The same codec on both sides: this compares the two LMs (a random LM turns any
    # near-tie code flip between codecs into other words).
    a = transcribe(stt.load_stt(str(pt), backend="torch", device="cpu", codec_backend="torch"), pcm)
    b = transcribe(stt.load_stt(str(mx), backend="mlx", codec_backend="torch"), pcm)
    assert b.model["lm_backend"] == "mlx"
    assert [w.to_json() for w in a.words] == [w.to_json() for w in b.words] and a.words
