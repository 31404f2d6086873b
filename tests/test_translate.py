"""moshikit.translate on a tiny synthetic Hibiki: outputs, end-of-input flush, seeds and guidance,
long input cut at pauses onto one timeline with flat memory, the stereo pair."""

import json

import numpy as np
import pytest
import soundfile as sf

from moshikit import translate
from moshikit.errors import ModelError
from moshikit.synthetic import lm as synthetic_lm
from moshikit.synthetic.hibiki import write_hibiki_repo

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FRAME = 1920


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mimi_weights):
    return write_hibiki_repo(tmp_path_factory.mktemp("hibiki") / "repo", mimi_path=mimi_weights)


def load(repo, **kw):
    return translate.load_translator(str(repo), backend="torch", device="cpu", codec_backend="torch", **kw)


@pytest.fixture(scope="module")
def tr(repo):
    return load(repo, seed=1)


def run(tr, pcm, **opts):
    return translate.translate_stream(tr, [pcm], opts=translate.TranslateOptions(keep_tokens=True, **opts))


def test_file_outputs_text_and_stereo(tr, speech, tmp_path, write_wav):
    src = write_wav(tmp_path / "in.wav", speech[: 24000])
    outs = {k: tmp_path / f"out.{k}" for k in ("wav", "json", "srt", "vtt")}
    r = translate.translate_file(tr, str(src), audio_out=outs["wav"], text_outs=[outs["json"], outs["srt"],
                                 outs["vtt"]], stereo_out=tmp_path / "both.wav")
    audio, rate = sf.read(outs["wav"], dtype="float32")
    assert rate == 24000 and audio.ndim == 1 and audio.size == round(r.output_seconds * 24000)
    assert r.output_seconds > r.duration == 1.0  # the tail after the end of input
    assert np.abs(audio).max() > 0.01
    both, _ = sf.read(tmp_path / "both.wav", dtype="float32")
    assert both.shape == (audio.size, 2)
    np.testing.assert_allclose(both[:24000, 0], speech[:24000], atol=1e-4)  # the original, left, from 0
    np.testing.assert_allclose(both[:, 1], audio, atol=1e-4)  # the translation, right, aligned
    doc = json.loads(outs["json"].read_text())
    assert doc["text"] == r.transcript().text and doc["words"]
    starts = [w["start"] for w in doc["words"]]
    assert starts == sorted(starts) and starts[-1] < r.output_seconds
    assert outs["srt"].read_text().startswith("1\n00:00:0")
    assert outs["vtt"].read_text().startswith("WEBVTT")
    assert not list(tmp_path.glob(".*"))  # no partial files left


def test_end_of_input_is_signalled_and_the_tail_flushed(tr, speech):
    pcm = speech[: 10 * FRAME]
    r = run(tr, pcm)
    assert r.tokens[-1] == tr.eos_id
    # One output per input frame, one more for the double first step's lag... then the tail to EOS.
    assert len(r.tokens) > 10
    cut = list(translate.translate_frames(tr, translate.frames_of(pcm), end=False))
    assert len(cut) < len(r.tokens)  # stopped without the end signal: no tail
    eos_early = [t for t in r.tokens[:-1] if t == tr.eos_id]
    assert eos_early  # the synthetic model says EOS at its first steps too: ignored, the run went on


def test_seed_repeats_and_guidance_changes(repo, tr, speech):
    pcm = speech[: 8 * FRAME]
    a, b = run(tr, pcm), run(tr, pcm)
    assert a.tokens == b.tokens and all(np.array_equal(x, y) for x, y in zip(a.codes, b.codes))
    other = load(repo, seed=2)
    assert [c.tolist() for c in run(other, pcm).codes] != [c.tolist() for c in a.codes]
    guided = load(repo, seed=1, cfg=3.0)
    assert guided.describe()["cfg"] == 3.0
    assert [c.tolist() for c in run(guided, pcm).codes] != [c.tolist() for c in a.codes]


def test_cut_at_the_quietest_moment():
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(50 * FRAME) * 0.3).astype(np.float32)
    pcm[31 * FRAME : 36 * FRAME] *= 0.001  # a pause of 5 frames
    cut = translate.quietest_cut(pcm, 20, 45)
    assert 31 * FRAME <= cut <= 36 * FRAME and cut % FRAME == 0
    pieces = list(translate.pieces_of(np.array_split(pcm, 7), max_seconds=45 * 0.08, min_seconds=20 * 0.08))
    assert [p.size for p in pieces][0] == cut and sum(p.size for p in pieces) == pcm.size


def test_long_input_in_pieces_on_one_timeline(tr, speech):
    pcm = np.concatenate([speech[: 20 * FRAME], np.zeros(6 * FRAME, np.float32), speech[: 20 * FRAME]])
    left, right = [], []
    r = translate.translate_stream(tr, [pcm], opts=translate.TranslateOptions(max_piece_seconds=3.2,
                                   min_piece_seconds=1.2), write=lambda o, t: (left.append(o), right.append(t)))
    assert len(r.cuts) == 1 and 20 * 0.08 <= r.cuts[0] <= 26 * 0.08  # cut inside the pause
    left, right = np.concatenate(left), np.concatenate(right)
    assert left.size == right.size == round(r.output_seconds * 24000)
    # The second piece's original starts where the first piece's (longer) translation ended.
    first = int(r.cuts[0] * 24000)
    second_at = np.flatnonzero(np.abs(left[first:]) > 0)[0] + first
    assert second_at > first
    np.testing.assert_allclose(left[second_at : second_at + 5 * FRAME], pcm[first:][
        np.flatnonzero(np.abs(pcm[first:]) > 0)[0]:][: 5 * FRAME], atol=1e-6)
    times = [p["time"] for p in r.pieces]
    assert times == sorted(times) and times[-1] < r.output_seconds


def test_memory_stays_flat(speech):
    """Ten minutes of input, read in 2 s blocks, are cut into pieces while holding at most a
    piece and a block: tracemalloc's peak stays far below the audio's own size."""
    import tracemalloc

    block = np.resize(speech, 2 * 24000).astype(np.float32)

    def peak_over(minutes: int) -> int:
        tracemalloc.start()
        try:
            total = sum(p.size for p in translate.pieces_of((block.copy() for _ in range(minutes * 30)),
                                                                max_seconds=20.0, min_seconds=10.0))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert total == minutes * 60 * 24000
        return peak

    ten, twenty = peak_over(10), peak_over(20)
    # Ten minutes are 57.6 MB of float32 and a 20 s piece 1.9 MB: a few pieces' worth at once
    # (the piece, its copies while cut, a block), and twice the input holds no more.
    assert ten < 57.6e6 / 4, f"peak {ten / 1e6:.1f} MB"
    assert twenty < ten * 1.5, f"10 min: {ten / 1e6:.1f} MB, 20 min: {twenty / 1e6:.1f} MB"


def test_input_is_read_a_piece_at_a_time(tr, speech):
    """Input is read a piece at a time and the output written as it comes: with a stream of
    many pieces, audio is written before the later input is even read."""
    read = []

    def blocks():
        for i in range(4):
            read.append(i)
            yield speech[: 8 * FRAME]

    given = 0
    for piece in translate.pieces_of(blocks(), max_seconds=1.28, min_seconds=0.64):
        given += piece.size
        assert piece.size <= 16 * FRAME
        assert len(read) * 8 * FRAME - given <= 16 * FRAME  # held back: at most a piece plus a block
    read.clear()
    first_write = []
    translate.translate_stream(tr, blocks(), opts=translate.TranslateOptions(max_piece_seconds=1.28,
                               min_piece_seconds=0.64),
                               write=lambda o, t: first_write or first_write.append(len(read)))
    assert first_write[0] < 4


def test_a_chat_checkpoint_is_refused(tmp_path, mimi_weights):
    repo = synthetic_lm.write_moshi_repo(tmp_path / "moshiko", seed=0, mimi_path=mimi_weights)
    with pytest.raises(ModelError, match="not a Hibiki translation checkpoint"):
        load(repo)


def test_the_tail_is_bounded_when_eos_never_comes(tr, speech):
    class NoEos:  # the same tokenizer, with an EOS id the model cannot say
        def __init__(self, sp):
            self.sp = sp

        def eos_id(self):
            return 10**6

        def __getattr__(self, name):
            return getattr(self.sp, name)

    import dataclasses

    never = dataclasses.replace(tr, tokenizer=NoEos(tr.tokenizer))
    steps = list(translate.translate_frames(never, translate.frames_of(speech[: 5 * FRAME]), tail_seconds=0.8))
    # 5 frames (the first read twice, 2 steps of delay), the end-of-input step, then 10 of silence.
    assert len(steps) == 5 + 1 + 10 - 1


@pytest.mark.parametrize("platform", ["apple:32", "cpu:32"])
def test_catalog_names_mean_the_pytorch_variant(monkeypatch, platform):
    """Translation runs on torch: on Apple silicon too, `hibiki` is the PyTorch repo (offline here,
    so the load stops at the download it names)."""
    from moshikit.errors import BackendError

    monkeypatch.setenv("MOSHIKIT_PLATFORM", platform)
    with pytest.raises(ModelError, match="kyutai/hibiki-1b-pytorch-bf16"):
        translate.load_translator("hibiki")
    with pytest.raises(BackendError, match="runs on the torch backend") as err:
        translate.load_translator("hibiki", backend="mlx")
    assert err.value.hint == "use --backend torch (the default)"


def test_a_file_that_breaks_mid_read_is_one_error_and_leaves_nothing(tr, speech, tmp_path, write_wav, monkeypatch):
    from moshikit import audio
    from moshikit.errors import AudioError

    src = write_wav(tmp_path / "in.wav", speech[: 24000 * 3])
    real = audio.stream_24k

    def breaks(*args, **kwargs):
        for i, block in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise RuntimeError("Error: unexpected end of data\nmore")
            yield block

    monkeypatch.setattr(audio, "stream_24k", breaks)
    with pytest.raises(AudioError, match=r"in\.wav: cannot read audio \(Error: unexpected end of data\)$"):
        translate.translate_file(tr, str(src), audio_out=tmp_path / "out.wav", text_outs=[tmp_path / "out.srt"],
                                 stereo_out=tmp_path / "both.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]
