"""The encode and decode commands end to end, in-process: exit codes, messages, files."""

import json

import numpy as np
import pytest
import soundfile as sf

from moshikit.cli.app import main
from moshikit.tokens import read_tokens


@pytest.fixture()
def tree(tmp_path, speech, write_wav):
    write_wav(tmp_path / "in/a.wav", speech[: 24000 * 2])
    write_wav(tmp_path / "in/sub/b.wav", speech[24000 * 3 : 24000 * 6])
    sf.write(tmp_path / "in/sub/c.flac", speech[: 44100], 44100)
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_tree_then_decode(tree, capsys, mimi_weights):
    code, out, err = run(capsys, "encode", str(tree / "in"), "-o", str(tree / "tok"), "--mimi-weight",
                         str(mimi_weights), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["done"], summary["failed"]) == (3, 0)
    assert sorted(p.relative_to(tree / "tok").as_posix() for p in (tree / "tok").rglob("*")) == [
        "a.mimi", "sub", "sub/b.mimi", "sub/c.mimi"]
    t = read_tokens(tree / "tok/sub/c.mimi")
    assert t.header.source == {"name": "c.flac", "sample_rate": 44100, "channels": 1, "frames": 44100}
    assert t.header.num_samples == 24000 and t.header.codec["sha256"]
    # A rerun skips everything.
    code, out, err = run(capsys, "encode", str(tree / "in"), "-o", str(tree / "tok"), "--mimi-weight",
                         str(mimi_weights), "--json")
    assert code == 0 and json.loads(out)["skipped"] == 3
    code, out, err = run(capsys, "decode", str(tree / "tok"), "-o", str(tree / "wav"), "--mimi-weight",
                         str(mimi_weights), "-f", "flac", "--json")
    assert code == 0, err
    assert sf.info(tree / "wav/sub/c.flac").frames == 24000
    assert sf.info(tree / "wav/sub/b.flac").frames == 72000


def test_npy_format_and_codebooks(tree, capsys, mimi_weights):
    code, _, err = run(capsys, "encode", str(tree / "in/a.wav"), "-o", str(tree / "n"), "-f", "npy", "-k", "32",
                       "--mimi-weight", str(mimi_weights))
    assert code == 0, err
    arr = np.load(tree / "n/a.npy")
    assert arr.shape == (32, 25) and arr.dtype == np.int16
    assert json.loads((tree / "n/a.json").read_text())["num_codebooks"] == 32


def test_stdin(tree, capsys, monkeypatch, mimi_weights):
    import io
    import sys

    data = (tree / "in/a.wav").read_bytes()
    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": io.BytesIO(data)})())
    code, _, err = run(capsys, "encode", "-", "-o", str(tree / "s.mimi"), "--mimi-weight", str(mimi_weights))
    assert code == 0, err
    assert read_tokens(tree / "s.mimi").header.frames == 25


def test_bad_inputs_fail_alone_and_leave_nothing(tree, capsys, mimi_weights):
    (tree / "in/notaudio.wav").write_text("hello")
    import soundfile

    soundfile.write(tree / "in/empty.wav", np.zeros(0, np.float32), 24000)
    code, out, err = run(capsys, "encode", str(tree / "in"), str(tree / "missing.wav"), "-o", str(tree / "t"),
                         "--mimi-weight", str(mimi_weights))
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert any("missing.wav: no such file" in ln for ln in lines)
    assert any("notaudio.wav: not a readable audio file" in ln for ln in lines)
    assert any("empty.wav: the audio is empty" in ln for ln in lines)
    assert "Traceback" not in err
    assert sorted(p.name for p in (tree / "t").rglob("*.mimi")) == ["a.mimi", "b.mimi", "c.mimi"]
    assert not list((tree / "t").rglob(".*partial*"))


def test_bad_token_files(tree, capsys, mimi_weights):
    run(capsys, "encode", str(tree / "in/a.wav"), "-o", str(tree / "t"), "--mimi-weight", str(mimi_weights))
    good = (tree / "t/a.mimi").read_bytes()
    (tree / "t/trunc.mimi").write_bytes(good[:-9])
    bad = bytearray(good)
    bad[-20] ^= 1
    (tree / "t/corrupt.mimi").write_bytes(bytes(bad))
    code, out, err = run(capsys, "decode", str(tree / "t"), "-o", str(tree / "w"), "--mimi-weight", str(mimi_weights))
    assert code == 1
    assert "trunc.mimi: truncated token file" in err
    assert "corrupt.mimi: corrupt token file (checksum mismatch)" in err
    assert sorted(p.name for p in (tree / "w").iterdir()) == ["a.wav"]


def test_tokens_from_other_weights(tree, capsys, mimi_weights, tmp_path):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other.safetensors"  # same tensors, other metadata: another sha256
    save_file(load_file(mimi_weights), str(other), metadata={"format": "pt", "copy": "1"})
    run(capsys, "encode", str(tree / "in/a.wav"), "-o", str(tree / "t"), "--mimi-weight", str(mimi_weights))
    code, _, err = run(capsys, "decode", str(tree / "t/a.mimi"), "-o", str(tree / "w"), "--mimi-weight", str(other))
    assert code == 1 and "made with other Mimi weights" in err


@pytest.mark.parametrize("argv,needle,code", [
    (["encode", "x.wav", "--backend", "nope"], "Invalid value for '--backend'", 2),
    (["encode", "{wav}", "--mimi-weight", "{missing}"], "no such weights file", 1),
    (["encode", "{wav}", "--mimi-weight", "{wav}"], "not a Mimi checkpoint", 1),
    (["encode", "{wav}", "--model", "someone/absent-repo"], "not in the Hugging Face cache", 1),
    (["encode", "{wav}", "-k", "33"], "num-codebooks", 2),
])
def test_one_line_errors(tree, capsys, argv, needle, code):
    argv = [a.format(wav=tree / "in/a.wav", missing=tree / "nope.safetensors") for a in argv]
    got, out, err = run(capsys, *argv)
    assert got == code
    assert needle in err
    assert "Traceback" not in err


def test_uninstalled_backend_says_how_to_install(tree, capsys, mimi_weights, monkeypatch):
    from moshikit.backends import registry

    def broken():
        raise ImportError("No module named 'rustymimi'")

    import moshikit.backends.rustymimi_codec as mod

    monkeypatch.setattr(mod, "probe", broken)
    code, _, err = run(capsys, "encode", str(tree / "in/a.wav"), "-b", "rustymimi", "--mimi-weight", str(mimi_weights))
    assert code == 2
    assert "rustymimi codec backend is not available" in err and "pip install rustymimi" in err
    registry.probe.cache_clear()


def test_debug_shows_traceback(tree, capsys):
    from moshikit.errors import ModelError

    bad = ["encode", str(tree / "in/a.wav"), "--mimi-weight", str(tree / "nope")]
    with pytest.raises(ModelError):
        main(["--debug", *bad])
    assert main(bad) == 1  # --debug lasted one run: nothing global to reset
    assert capsys.readouterr().err.count("error:") == 1


def test_main_writes_to_the_env_it_is_given(tree, capsys, mimi_weights):
    """An in-process run with its own streams and variables (as httpie's tests do)."""
    import io

    from moshikit.cli.output import Env
    from moshikit.errors import ModelError

    env = Env(stdout=io.StringIO(), stderr=io.StringIO(), environ={})
    assert main(["--version"], env) == 0
    assert env.stdout.getvalue().startswith("moshikit ")
    bad = ["encode", str(tree / "in/a.wav"), "--mimi-weight", str(tree / "nope")]
    assert main(bad, env) == 1
    assert "error:" in env.stderr.getvalue() and "nope" in env.stderr.getvalue()
    with pytest.raises(ModelError):  # MOSHIKIT_DEBUG as the run's environment says, not the process's
        main(bad, Env(stdout=io.StringIO(), stderr=io.StringIO(), environ={"MOSHIKIT_DEBUG": "1"}))
    env = Env(stdout=io.StringIO(), stderr=io.StringIO(), environ={})
    out = tree / "one.mimi"
    assert main(["encode", str(tree / "in/a.wav"), "-o", str(out), "--mimi-weight", str(mimi_weights),
                 "--json"], env) == 0
    assert json.loads(env.stdout.getvalue())["done"] == 1 and out.is_file()
    captured = capsys.readouterr()
    assert captured.out == "" and "error:" not in captured.err  # nothing went to the process's streams


def test_model_synthetic_and_hf_cache(tree, capsys, mimi_weights):
    """--model synthetic and a repo id resolved from the HF cache, offline."""
    import os

    from moshikit.synthetic.core import place_in_hf_cache

    code, _, err = run(capsys, "encode", str(tree / "in/a.wav"), "-o", str(tree / "s"), "--model", "synthetic")
    assert code == 0, err
    repo = tree / "repo"
    repo.mkdir()
    os.link(mimi_weights, repo / "tokenizer-e351c8d8-checkpoint125.safetensors")
    place_in_hf_cache(repo, "kyutai/moshiko-pytorch-bf16", os.environ["HF_HUB_CACHE"])
    code, _, err = run(capsys, "encode", str(tree / "in/a.wav"), "-o", str(tree / "h"))
    assert code == 0, err
    a, b = read_tokens(tree / "s/a.mimi"), read_tokens(tree / "h/a.mimi")
    np.testing.assert_array_equal(a.codes, b.codes)
    assert b.header.codec["repo"] == "kyutai/moshiko-pytorch-bf16"
    assert b.header.codec["sha256"] == a.header.codec["sha256"]


def test_interrupted_batch_resumes(tree, capsys, mimi_weights, monkeypatch):
    from moshikit.backends.torch_codec import TorchCodec

    real = TorchCodec.encode_step
    calls = {"n": 0}

    def flaky(self, pcm):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, pcm)

    monkeypatch.setattr(TorchCodec, "encode_step", flaky)
    argv = ["encode", str(tree / "in"), "-o", str(tree / "t"), "--mimi-weight", str(mimi_weights), "-b", "torch"]
    code, _, err = run(capsys, *argv)
    assert code == 130 and "run the same command again to resume" in err
    assert [p.name for p in (tree / "t").rglob("*") if p.is_file()] == ["a.mimi"]
    monkeypatch.setattr(TorchCodec, "encode_step", real)
    code, out, err = run(capsys, *argv, "--json")
    summary = json.loads(out)
    assert code == 0 and (summary["skipped"], summary["done"]) == (1, 2)
