import numpy as np
import pytest
import soundfile as sf

from moshikit.audio import AudioWriter, open_audio, read_24k, stream_24k
from moshikit.errors import AudioError


def tone(rate, seconds, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    x = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]).astype(np.float32)
    return x


@pytest.mark.parametrize("ext,fmt", [("wav", "WAV"), ("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3")])
def test_reads_common_formats(tmp_path, ext, fmt):
    p = tmp_path / f"a.{ext}"
    sf.write(p, tone(24000, 1.0)[0], 24000, format=fmt)
    x = read_24k(p)
    assert x.shape[0] == 1
    assert abs(x.shape[1] - 24000) <= 1200  # mp3 encoders pad a little
    assert np.abs(x).max() > 0.1


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_resampled_length_is_exact(tmp_path, rate):
    p = tmp_path / "a.wav"
    sf.write(p, tone(rate, 2.3)[0], rate)
    src = open_audio(p)
    assert src.target_frames == round(int(rate * 2.3) * 24000 / rate)
    x = read_24k(p)
    assert x.shape == (1, src.target_frames)


def test_streaming_resample_equals_whole(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, tone(44100, 5.0)[0], 44100)
    src = open_audio(p)
    small = np.concatenate(list(stream_24k(src, seconds=0.37)), axis=-1)
    whole = np.concatenate(list(stream_24k(src, seconds=100)), axis=-1)
    np.testing.assert_array_equal(small, whole)


def test_stereo_mix_and_split(tmp_path):
    p = tmp_path / "s.wav"
    x = tone(24000, 1.0, channels=2)
    sf.write(p, x.T, 24000, subtype="FLOAT")
    np.testing.assert_allclose(read_24k(p, "mix")[0], x.mean(0), atol=1e-6)
    np.testing.assert_allclose(read_24k(p, "split"), x, atol=1e-6)


def test_bad_inputs(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        open_audio(tmp_path / "missing.wav")
    (tmp_path / "t.wav").write_text("not audio at all")
    with pytest.raises(AudioError, match="not a readable audio file"):
        open_audio(tmp_path / "t.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 24000)
    with pytest.raises(AudioError, match="empty"):
        open_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="is a directory"):
        open_audio(tmp_path)


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "o.wav"
    with pytest.raises(RuntimeError):
        with AudioWriter(out, 24000, 1) as w:
            w.write(np.zeros((1, 100), np.float32))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with AudioWriter(out, 24000, 2, "flac") as w:
        w.write(np.zeros((2, 100), np.float32))
    info = sf.info(out)
    assert (info.frames, info.channels, info.format) == (100, 2, "FLAC")
    assert [p.name for p in tmp_path.iterdir()] == ["o.wav"]


def test_opus_is_ogg_opus_and_sounds_like_its_input(tmp_path):
    x = tone(24000, 2.0)
    out = tmp_path / "a.opus"
    with AudioWriter(out, 24000, 1) as w:
        w.write(x[:, :30000])
        w.write(x[:, 30000:])
    info = sf.info(str(out))
    assert (info.format, info.subtype) == ("OGG", "OPUS")
    y = read_24k(out)[0]
    assert abs(y.size - x.shape[1]) <= 960
    n = min(y.size, x.shape[1]) - 2000
    assert np.corrcoef(x[0, 1000:n], y[1000:n])[0, 1] > 0.95  # lossy, but the same tone


def test_opus_refuses_a_rate_it_cannot_store(tmp_path):
    with pytest.raises(AudioError, match="Opus cannot store 44100 Hz"):
        AudioWriter(tmp_path / "a.opus", 44100, 1)
    assert not list(tmp_path.iterdir())


def test_drain_into_takes_whole_and_partial_blocks_and_pads_with_silence():
    from collections import deque

    from moshikit.audio import drain_into

    q = deque([np.ones(3, np.float32), np.full(4, 2.0, np.float32)])
    out = np.full(5, 9.0, np.float32)
    assert drain_into(q, out) == 5
    np.testing.assert_array_equal(out, [1, 1, 1, 2, 2])
    assert [b.tolist() for b in q] == [[2.0, 2.0]]  # the rest of the second block stays first
    out = np.full(4, 9.0, np.float32)
    assert drain_into(q, out) == 2 and not q
    np.testing.assert_array_equal(out, [2, 2, 0, 0])  # then silence
