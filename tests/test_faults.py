"""The reliability suite: the faults users meet, for every command that writes or reads files.

Each test names a row of the "Reliability: what happens when things go wrong" table in
docs/faults.md. Every fault must end well: one line saying what and where, a non-zero exit,
nothing half written under a final name, finished outputs kept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from deps import ONNX_IS_CORE
from fsfaults import full_disk, full_disk_for_libraries, partials, read_only_dir

from moshikit import filejobs
from moshikit.cli.app import main
from moshikit.errors import OutputError
from moshikit.tokens import read_tokens

FULL = ["tmpfs", "injected"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def transcript(text: str):
    from moshikit.transcript import Segment, Transcript

    return Transcript(source="x.wav", duration=1.0, words=[], segments=[Segment(0.0, 1.0, text)])


def assert_no_traceback(err: str) -> None:
    assert "Traceback" not in err and "LibsndfileError" not in err, err


@pytest.fixture(autouse=True)
def one_loaded_codec(torch_codec, monkeypatch):
    """Every in-process command gets the session's loaded torch Mimi (loading it again for each
    command is most of a test's time; what is tested is what happens around the codec)."""
    from moshikit import codec as ops

    def load(backend=None, device=None, *, num_codebooks=8, **kw):
        if backend in ("torch", None) and num_codebooks == torch_codec.info.num_codebooks:
            return torch_codec
        return real(backend, device, num_codebooks=num_codebooks, **kw)

    real = ops.load_codec
    monkeypatch.setattr(ops, "load_codec", load)


@pytest.fixture()
def clips(tmp_path, speech, write_wav):
    """Six half-second inputs, each different."""
    return [write_wav(tmp_path / "in" / f"c{i}.wav", speech[i * 12000 : i * 12000 + 12000]) for i in range(6)]


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory, speech, write_wav, torch_codec):
    """The six clips' token files, encoded once for the module."""
    from moshikit import codec as ops

    root = tmp_path_factory.mktemp("tokens")
    for i in range(6):
        write_wav(root / "in" / f"c{i}.wav", speech[i * 12000 : i * 12000 + 12000])
    jobs, _ = filejobs.plan([str(root / "in")], str(root / "tok"), ".mimi")
    assert all(r.status == "done" for r in ops.encode_files(jobs, torch_codec))
    return root / "tok"


@pytest.fixture()
def tokens(tmp_path, token_dir):
    import shutil

    shutil.copytree(token_dir, tmp_path / "tok")
    return sorted((tmp_path / "tok").glob("*.mimi"))


# ---------------------------------------------------------------- a full disk


@pytest.mark.parametrize("kind", FULL)
def test_decode_into_a_full_disk(kind, tmp_path, tokens, mimi_weights, capsys, monkeypatch):
    """decode, disk full: one line naming the file, exit 1, finished files complete, no partial file."""
    out = tmp_path / "small"
    with full_disk(kind, out, 64, monkeypatch):  # room for two 0.5 s wavs (24 kB each), not three
        code, _, err = run(capsys, "decode", tmp_path / "tok", "-o", out, "--mimi-weight", mimi_weights,
                           "-b", "torch")
        assert code == 1
        assert_no_traceback(err)
        lines = error_lines(err)
        assert len(lines) == 1 and "no space left on device" in lines[0], err
        failed = lines[0].split("cannot write ")[1].split(":")[0]
        assert failed.startswith(str(out)) and failed.endswith(".wav")
        # the rest are not started: each would fail the same way
        assert f"stopped with {len(tokens) - len(list(out.glob('*.wav'))) - 1} not started" in err
        assert partials(out) == []
        written = sorted(out.glob("*.wav"))
        assert 1 <= len(written) < len(tokens) and Path(failed) not in written
        for w in written:  # every file under a final name is whole
            assert sf.info(w).frames == 12000
            assert np.abs(sf.read(w)[0]).max() > 0


@pytest.mark.parametrize("kind", FULL)
def test_encode_into_a_full_disk(kind, tmp_path, clips, mimi_weights, capsys, monkeypatch):
    """encode, disk full: one line, exit 1, every token file present reads back valid."""
    out = tmp_path / "small"
    # A .npy of 0.5 s and its .json are ~1 kB together: four kB hold a few when bytes are counted
    # (injected); a tmpfs gives each file a 4 kB page, so 20 kB hold two pairs. Never all six.
    with full_disk(kind, out, {"tmpfs": 20, "injected": 4}[kind], monkeypatch):
        code, _, err = run(capsys, "encode", tmp_path / "in", "-o", out, "--mimi-weight", mimi_weights,
                           "-b", "torch", "-f", "npy")
        assert code == 1
        assert_no_traceback(err)
        lines = error_lines(err)
        assert len(lines) == 1 and "no space left on device" in lines[0] and str(out) in lines[0], err
        assert partials(out) == []
        written = sorted(out.glob("*.npy"))
        assert 1 <= len(written) < 6  # some fitted before the disk filled, not all six
        for npy in written:
            assert read_tokens(npy).codes.shape == (1, 8, 7)


@pytest.mark.parametrize("kind", FULL)
def test_transcript_into_a_full_disk(kind, tmp_path, monkeypatch):
    """transcribe's writer, disk full: OutputError naming the file, nothing left."""
    from moshikit.stt import write_transcript

    t = transcript("hello " * 2000)
    out = tmp_path / "small"
    with full_disk(kind, out, 8, monkeypatch):
        with pytest.raises(OutputError, match=r"cannot write .*x\.txt: no space left on device") as e:
            write_transcript(t, [out / "x.txt"], ["txt"])
        assert e.value.stops_batch
        assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", FULL)
def test_chat_recording_into_a_full_disk(kind, tmp_path, monkeypatch):
    """chat --record, disk full mid-conversation: one error, the partial recording removed."""
    from moshikit.chat import Recorder

    out = tmp_path / "small"
    with full_disk(kind, out, 64, monkeypatch):
        rec = Recorder(out, stamp="t")
        with pytest.raises(OutputError, match=r"chat-t\.wav: no space left on device"):
            for _ in range(50):  # 50 x 80 ms of stereo 16-bit: 384 kB
                rec.user(np.full(1920, 0.1, np.float32))
                rec.moshi(np.full(1920, 0.1, np.float32))
        rec.close()  # after a failed write: nothing more to do, no second error
        assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", FULL)
def test_ray_manifest_into_a_full_disk(kind, tmp_path, monkeypatch):
    """The Ray job manifest, disk full: OutputError naming it, no partial file."""
    from moshikit.distributed import write_result_manifest

    rows = [{"source": f"/data/{i:06d}.wav" * 4, "output": f"/out/{i}.mimi", "status": "done"} for i in range(4000)]
    with full_disk_for_libraries(kind, tmp_path / "small", 16, monkeypatch):
        with pytest.raises(OutputError, match=r"moshikit-encode\.parquet: no space left on device"):
            write_result_manifest(str(tmp_path / "small" / "moshikit-encode.parquet"), rows)
        assert list((tmp_path / "small").iterdir()) == []


@pytest.mark.parametrize("kind", FULL)
def test_onnx_graph_cache_on_a_full_disk(kind, tmp_path, mimi_weights, monkeypatch):
    """The onnx graph cache cannot be written: the codec runs moshi's torch Mimi instead, says
    why, and leaves nothing half written in the cache."""
    if not ONNX_IS_CORE:
        pytest.importorskip("onnxruntime")
    from moshikit.codec import load_codec

    cache = tmp_path / "cache"
    with full_disk_for_libraries(kind, cache, 64, monkeypatch):
        monkeypatch.setenv("MOSHIKIT_CACHE", str(cache))
        with pytest.warns(UserWarning, match=r"running moshi's PyTorch Mimi instead \(OutputError: cannot write "
                                             r".*encoder_k8\.onnx: no space left on device"):
            codec = load_codec("onnx", "cpu", mimi_weight=mimi_weights)
        assert codec.backend.encode(np.zeros((1, 1920), np.float32)).shape == (1, 8, 1)
        assert partials(cache) == [] and list(cache.rglob("*.onnx")) == []


@pytest.mark.parametrize("kind", FULL)
def test_download_into_a_full_cache(kind, tmp_path, monkeypatch):
    """download, the Hugging Face cache's disk full: one line, the part received kept for a resume."""
    from hubserver import HubServer, patch_hub
    from test_download import CUDA_16, moshi_repo

    from moshikit import download as dl
    from moshikit.errors import ModelError

    server = HubServer().start()
    try:
        with full_disk_for_libraries(kind, tmp_path / "hub", 256, monkeypatch):
            patch_hub(monkeypatch, server, tmp_path / "hub")
            server.add("kyutai/moshika-pytorch-q8", moshi_repo(size=600_000))
            plan = dl.plan("moshika", platform=CUDA_16)
            with pytest.raises(ModelError, match=r"not enough disk space in .*hub: 601\.6 kB to download"):
                dl.download(plan)  # checked before anything is fetched
            assert not list((tmp_path / "hub").rglob("snapshots/*/*"))
            # the disk fills while the file streams in (another program took the space)
            monkeypatch.setattr("moshikit.download.fetch.check_space", lambda *a, **k: None)
            with pytest.raises(ModelError, match=r"disk full while writing model\.q8\.safetensors") as e:
                dl.download(plan)
            assert "resumes" in e.value.hint
            # no file under a final name in the snapshot is a partial one
            for f in (tmp_path / "hub").rglob("snapshots/*/*"):
                assert f.name != "model.q8.safetensors" and f.stat().st_size == len(moshi_repo()[f.name])
    finally:
        from huggingface_hub.utils import reset_sessions

        server.stop()
        reset_sessions()


# ---------------------------------------------------------------- read-only, wrong kinds


def test_decode_into_a_read_only_folder(tmp_path, tokens, mimi_weights, capsys):
    with read_only_dir(tmp_path / "ro") as ro:
        code, _, err = run(capsys, "decode", tmp_path / "tok", "-o", ro, "--mimi-weight", mimi_weights, "-b", "torch")
        assert code == 1
        assert_no_traceback(err)
        lines = error_lines(err)
        assert len(lines) == 1, err
        assert "read-only file system" in lines[0] or "permission denied" in lines[0]
        assert list(ro.iterdir()) == []


def test_encode_into_a_read_only_folder(tmp_path, clips, mimi_weights, capsys):
    with read_only_dir(tmp_path / "ro") as ro:
        code, _, err = run(capsys, "encode", clips[0], "-o", ro / "sub", "--mimi-weight", mimi_weights, "-b", "torch")
        assert code == 1
        assert_no_traceback(err)
        lines = error_lines(err)
        assert len(lines) == 1 and str(ro / "sub") in lines[0], err
        assert "read-only file system" in lines[0] or "permission denied" in lines[0]


def test_output_is_a_directory(tmp_path, clips, mimi_weights, capsys):
    """encode -o x.mimi where x.mimi is a directory: that file fails with one line."""
    (tmp_path / "x.mimi").mkdir()
    code, _, err = run(capsys, "encode", clips[0], "-o", tmp_path / "x.mimi", "--mimi-weight", mimi_weights,
                       "-b", "torch")
    assert code == 1
    assert_no_traceback(err)
    assert error_lines(err) == [f"error: cannot write {tmp_path / 'x.mimi'}: is a directory"]
    assert list((tmp_path / "x.mimi").iterdir()) == []


def test_output_folder_is_a_file(tmp_path, tokens, mimi_weights, capsys):
    """decode -o out/ where out is a file: one line per file naming the file in the way, exit 1."""
    (tmp_path / "out").write_text("not a folder")
    code, _, err = run(capsys, "decode", tokens[0], tokens[1], "-o", tmp_path / "out", "--mimi-weight",
                       mimi_weights, "-b", "torch")
    assert code == 1
    assert_no_traceback(err)
    lines = error_lines(err)
    assert len(lines) == 2 and all(f"{tmp_path / 'out'} is a file, not a folder" in line for line in lines), err
    assert (tmp_path / "out").read_text() == "not a folder"


def test_transcript_output_is_a_directory(tmp_path):
    from moshikit.stt import write_transcript

    (tmp_path / "x.txt").mkdir()
    with pytest.raises(OutputError, match=r"x\.txt: is a directory") as e:
        write_transcript(transcript("hi"), [tmp_path / "x.txt"], ["txt"])
    assert not e.value.stops_batch


# ---------------------------------------------------------------- inputs that change under a batch


def test_inputs_deleted_or_truncated_while_encoding(tmp_path, clips, mimi_weights):
    """encode: an input deleted, one truncated and one overwritten with junk after the batch
    started: each fails alone (or encodes what is there), the others finish."""
    from moshikit import codec as ops

    jobs, failed = filejobs.plan([str(tmp_path / "in")], str(tmp_path / "out"), ".mimi")
    assert not failed and len(jobs) == 6
    codec = ops.load_codec("torch", "cpu", mimi_weight=mimi_weights)
    changed = []

    def tick(seconds: float) -> None:
        if not changed:  # the batch is running: change three inputs still to come
            clips[3].unlink()
            data = clips[4].read_bytes()
            clips[4].write_bytes(data[: len(data) // 2])
            clips[5].write_bytes(b"RIFF\x00\x00")
            changed.append(True)

    results = {Path(r.source).name: r for r in ops.encode_files(jobs, codec, ops.EncodeOptions(batch_size=1),
                                                                on_audio=tick)}
    assert results["c3.wav"].status == "failed" and "no such file" in results["c3.wav"].error
    assert results["c5.wav"].status == "failed" and "not a readable audio file" in results["c5.wav"].error
    assert results["c4.wav"].status == "done"  # the half that is there
    assert read_tokens(tmp_path / "out/c4.mimi").header.source["frames"] < 12000
    assert [results[f"c{i}.wav"].status for i in range(3)] == ["done"] * 3
    assert partials(tmp_path / "out") == []


def test_token_files_deleted_or_truncated_while_decoding(tmp_path, tokens, mimi_weights):
    from moshikit import codec as ops

    jobs, _ = filejobs.plan([str(tmp_path / "tok")], str(tmp_path / "wav"), ".wav", extensions=filejobs.TOKEN_EXTENSIONS)
    codec = ops.load_codec("torch", "cpu", mimi_weight=mimi_weights)
    changed = []

    def tick(seconds: float) -> None:
        if not changed:
            tokens[2].unlink()
            tokens[3].write_bytes(tokens[3].read_bytes()[:-9])
            changed.append(True)

    results = {Path(r.source).name: r for r in ops.decode_files(jobs, lambda k: codec, on_audio=tick)}
    assert "no such file" in results["c2.mimi"].error
    assert "truncated token file" in results["c3.mimi"].error
    assert [results[f"c{i}.mimi"].status for i in (0, 1, 4, 5)] == ["done"] * 4
    assert sorted(p.name for p in (tmp_path / "wav").iterdir()) == ["c0.wav", "c1.wav", "c4.wav", "c5.wav"]


# ---------------------------------------------------------------- Ctrl-C and SIGTERM, then again


def _cli(*argv) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "moshikit", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _interrupt_after_first_output(proc: subprocess.Popen, out: Path, pattern: str, sig: int) -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while not list(out.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _batch_inputs(tmp_path, speech, write_wav, capsys, command, n):
    for i in range(n):
        write_wav(tmp_path / "in" / f"f{i:02d}.wav", speech[i * 2400 : i * 2400 + 12000])
    common = ["--mimi-weight", mimi_path(), "-b", "torch", "--batch-size", "1"]
    if command == "encode":
        return tmp_path / "in", "*.mimi", common
    code, _, err = run(capsys, "encode", tmp_path / "in", "-o", tmp_path / "tok", *common)
    assert code == 0, err
    return tmp_path / "tok", "*.wav", common[:-2]


def mimi_path() -> str:
    from moshikit.synthetic import core as synthetic

    return str(synthetic.synthetic_dir() / "seed0" / synthetic.MIMI_NAME)


def _check_resumed(tmp_path, capsys, command, src, out, pattern, common, n, rerun) -> None:
    assert partials(out) == []
    first = sorted(p.name for p in out.glob(pattern))
    assert 1 <= len(first) < n, "the signal came too late to interrupt the batch"
    code, stdout, err = rerun()
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["skipped"] == len(first) and summary["done"] == n - len(first)
    assert partials(out) == []
    code, _, err = run(capsys, command, src, "-o", tmp_path / "ref", *common)  # one uninterrupted run
    assert code == 0, err
    refs = sorted((tmp_path / "ref").glob(pattern))
    assert len(refs) == n and sorted(p.name for p in out.glob(pattern)) == [r.name for r in refs]
    for ref in refs:
        assert (out / ref.name).read_bytes() == ref.read_bytes(), ref.name


@pytest.mark.parametrize("command,sig", [("encode", signal.SIGINT), ("decode", signal.SIGTERM),
                                         ("encode", signal.SIGTERM), ("decode", signal.SIGINT)])
def test_signal_mid_batch_then_again(command, sig, tmp_path, speech, write_wav, mimi_weights, capsys,
                                     one_torch_thread, monkeypatch):
    """Ctrl-C / SIGTERM mid-batch (delivered by the OS once the first output appears), in-process:
    exit 130 / 143, no partial file; the same command again finishes the rest, and every output
    is byte-identical to an uninterrupted run's."""
    import threading

    from moshikit import codec as ops
    from moshikit.cli import app

    n = 10
    src, pattern, common = _batch_inputs(tmp_path, speech, write_wav, capsys, command, n)
    out = tmp_path / "out"
    stop = threading.Event()

    def paced(files):  # the rest of the batch outlasts the signal's trip, however fast this machine is
        def run_files(*args, **kwargs):
            for result in files(*args, **kwargs):
                yield result
                time.sleep(0.3)
        return run_files

    name = f"{command}_files"
    monkeypatch.setattr(ops, name, paced(getattr(ops, name)))
    # A signal that still arrived after the run would meet the default handler and end pytest itself:
    # after each run, a recording handler stands in for it until the test ends.
    late: list[int] = []
    before, real = signal.getsignal(sig), app._terminate_like_ctrl_c
    if sig == signal.SIGTERM:  # as in a fresh process: an earlier test's library (Ray's driver) may have left its own
        signal.signal(sig, signal.SIG_DFL)

    def guarded():
        restore = real()

        def restore_then_guard() -> None:
            restore()
            signal.signal(sig, lambda signum, frame: late.append(signum))
        return restore_then_guard

    monkeypatch.setattr(app, "_terminate_like_ctrl_c", guarded)

    def signal_after_first_output() -> None:
        while not stop.is_set() and not list(out.glob(pattern)):
            time.sleep(0.005)
        if not stop.is_set():
            os.kill(os.getpid(), sig)

    t = threading.Thread(target=signal_after_first_output, daemon=True)
    t.start()
    try:
        code, _, err = run(capsys, command, src, "-o", out, *common)
        time.sleep(0.2)  # a signal sent as the run ended would land here
    finally:
        stop.set()
        t.join()
        signal.signal(sig, before)
        monkeypatch.setattr(app, "_terminate_like_ctrl_c", real)  # the resumed runs as a user's
    assert not late, "the signal arrived after the run had ended"
    assert code == 128 + sig, err
    assert_no_traceback(err)
    assert "run the same command again to resume" in err
    _check_resumed(tmp_path, capsys, command, src, out, pattern, common, n,
                   lambda: run(capsys, command, src, "-o", out, *common, "--json"))


@pytest.mark.slow
@pytest.mark.parametrize("command,sig", [("encode", signal.SIGINT), ("decode", signal.SIGTERM)])
def test_signal_mid_batch_then_again_in_a_subprocess(command, sig, tmp_path, speech, write_wav, mimi_weights,
                                                     capsys, one_torch_thread):
    """The same as a user sees it: the CLI in a subprocess, signalled once its first output appears."""
    n = 12
    src, pattern, common = _batch_inputs(tmp_path, speech, write_wav, capsys, command, n)
    out = tmp_path / "out"
    rc, err = _interrupt_after_first_output(_cli(command, src, "-o", out, *common), out, pattern, sig)
    assert rc == 128 + sig, err
    assert_no_traceback(err)
    assert "run the same command again to resume" in err

    def rerun():
        proc = _cli(command, src, "-o", out, *common, "--json")
        stdout, err = proc.communicate(timeout=300)
        return proc.returncode, stdout, err

    _check_resumed(tmp_path, capsys, command, src, out, pattern, common, n, rerun)


# ---------------------------------------------------------------- model folders and the HF cache


@pytest.fixture(scope="module")
def moshi_dir(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)


@pytest.fixture(scope="module")
def stt_dir(mimi_weights):
    from moshikit.synthetic import stt as synthetic_stt

    return synthetic_stt.ensure_synthetic_stt(mimi_path=mimi_weights)


def _copy_of(src: Path, dst: Path, *, without: str | None = None, config: dict | Path | None = None) -> Path:
    """A model folder of links to ``src``'s files, less ``without``, with another config.json."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != without and not (config is not None and f.name == "config.json"):
            (dst / f.name).symlink_to(f)
    if isinstance(config, Path):
        (dst / "config.json").symlink_to(config)
    elif config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_model_folder_missing_its_tokenizer(tmp_path, clips, moshi_dir, stt_dir, capsys):
    """chat and transcribe on a model folder without its text tokenizer: one line naming it."""
    chat_dir = _copy_of(moshi_dir, tmp_path / "moshi", without="tokenizer_spm_32k_3.model")
    code, _, err = run(capsys, "chat", "-m", chat_dir, "-i", clips[0], "-o", tmp_path / "reply.wav")
    assert code == 1 and error_lines(err) == [f"error: {chat_dir}: missing text tokenizer tokenizer_spm_32k_3.model"]
    assert not (tmp_path / "reply.wav").exists()
    stt = _copy_of(stt_dir, tmp_path / "stt", without="tokenizer_en_fr_audio_8000.model")
    code, _, err = run(capsys, "transcribe", "-m", stt, clips[0], "-o", tmp_path / "t.txt")
    assert code == 1 and error_lines(err) == [f"error: {stt}: missing text tokenizer tokenizer_en_fr_audio_8000.model"]
    assert not (tmp_path / "t.txt").exists()


def test_config_json_of_the_wrong_kind(tmp_path, clips, moshi_dir, stt_dir, capsys):
    """A config.json of another model kind, or of no Kyutai model: one line, before any weights load."""
    cases = [
        ("chat", _copy_of(moshi_dir, tmp_path / "a", config=stt_dir / "config.json"),
         "is a speech-to-text checkpoint, not a Moshi dialogue model"),
        ("chat", _copy_of(moshi_dir, tmp_path / "b", config={"model_type": "bert", "hidden_size": 768}),
         "its config.json is not a Moshi model's (model_type 'bert')"),
        ("chat", _copy_of(moshi_dir, tmp_path / "c", config={"model_type": "moshi", "dim": 7}),
         "its config.json does not describe a Moshi model (AssertionError"),
        ("transcribe", _copy_of(stt_dir, tmp_path / "d", config=moshi_dir / "config.json"),
         "is not a speech-to-text checkpoint (model_type 'moshi'"),
        ("transcribe", _copy_of(stt_dir, tmp_path / "e", config={"model_type": "bert"}),
         "is not a speech-to-text checkpoint (model_type 'bert'"),
    ]
    for command, folder, message in cases:
        argv = ["-i", clips[0], "-o", tmp_path / "reply.wav"] if command == "chat" else [clips[0], "-o",
                                                                                        tmp_path / "t.txt"]
        code, _, err = run(capsys, command, "-m", folder, *argv)
        assert_no_traceback(err)
        lines = error_lines(err)
        assert code == 1 and len(lines) == 1 and message in lines[0] and str(folder) in lines[0], (command, err)
    assert not (tmp_path / "reply.wav").exists() and not (tmp_path / "t.txt").exists()


def test_dangling_symlink_in_the_hf_cache(tmp_path, clips, capsys, monkeypatch):
    """A snapshot link whose blob is gone (a cleaned cache, a copy without blobs): offline,
    encode and models verify say it is not in the cache (one line); online, download fetches
    the blob and the link works again."""
    from hubserver import HubServer, go_offline, patch_hub
    from huggingface_hub.utils import reset_sessions
    from test_download import tiny_mimi

    from moshikit import catalog
    from moshikit import download as dl

    server = HubServer().start()
    try:
        cache = tmp_path / "hub"
        patch_hub(monkeypatch, server, cache)
        commit = server.add("kyutai/moshiko-pytorch-bf16", {catalog.MIMI_FILE: tiny_mimi()})
        repo = cache / "models--kyutai--moshiko-pytorch-bf16"
        link = repo / "snapshots" / commit / catalog.MIMI_FILE
        link.parent.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        link.symlink_to("../../blobs/" + "0" * 64)
        go_offline(monkeypatch)
        code, _, err = run(capsys, "encode", clips[0], "-o", tmp_path / "tok")
        assert code == 1 and len(error_lines(err)) == 1 and "is not in the Hugging Face cache" in err, err
        code, _, err = run(capsys, "models", "verify", "mimi")
        assert code == 1 and len(error_lines(err)) == 1, err
        assert_no_traceback(err)
        patch_hub(monkeypatch, server, cache)
        dl.download(dl.plan("mimi"))
        assert link.resolve().is_file() and link.read_bytes() == tiny_mimi()
    finally:
        server.stop()
        reset_sessions()


def test_serve_certificate_into_a_read_only_folder(tmp_path):
    """serve --ssl's self-signed certificate where the cache is read-only: one line, nothing left."""
    import shutil as sh

    if sh.which("openssl") is None:
        pytest.skip("openssl is not installed")
    from moshikit.serve import self_signed_certificate

    with read_only_dir(tmp_path / "ro") as ro:
        with pytest.raises(OutputError, match=r"cannot write .*key\.pem: (read-only file system|permission denied)"):
            self_signed_certificate(ro / "tls")
    cert, key = self_signed_certificate(tmp_path / "tls")
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["cert.pem", "key.pem"]
    assert key.stat().st_mode & 0o777 == 0o600 and cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
