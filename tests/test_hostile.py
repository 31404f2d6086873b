"""Hostile and odd files: token headers that lie, FIFOs and devices as inputs, outputs that are
directories or empty files, and model folders whose config.json names files outside them.

Every case ends in one line per bad file (no traceback, nothing allocated or written beyond
what the file holds), the rest of a batch done, and exit status 1. Nothing here may hang, even
when what is tested breaks: a FIFO made here gets a writer that opens and closes it whenever a
reader waits (the reader sees an empty file instead of waiting forever), each test runs under an
alarm, and endless devices (/dev/zero) are given only to a subprocess with a memory limit and
a timeout (in process, /dev/null stands for a device: it ends at once).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_faults import error_lines, one_loaded_codec, run  # noqa: F401  (an autouse fixture: it applies here too)

from moshikit import filejobs
from moshikit.errors import ModelError, OutputError, TokenFileError
from moshikit.tokens import TokenHeader, decode_mimi_bytes, encode_mimi_bytes, read_tokens, write_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_hang")


_FIFO_WRITERS: list[subprocess.Popen] = []
_UNBLOCK = """
import os, sys, time
while True:  # open for writing (only succeeds while a reader waits) and close: the reader sees EOF
    try:
        os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass
    time.sleep(0.3)
"""


def mkfifo(path: Path) -> Path:
    """A FIFO at ``path`` that never blocks a reader for long: while the test runs, another
    process opens it for writing whenever a reader waits, and closes it at once (a process, not
    a thread: a library may wait in ``open`` holding the GIL)."""
    os.mkfifo(path)
    _FIFO_WRITERS.append(subprocess.Popen([sys.executable, "-c", _UNBLOCK, str(path)]))
    return path


@pytest.fixture()
def no_hang():
    """Fail, instead of hanging the suite, when a test blocks for 60 s; stop the FIFO writers."""
    def hung(signum, frame):
        raise TimeoutError("blocked for 60 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
    while _FIFO_WRITERS:
        writer = _FIFO_WRITERS.pop()
        writer.kill()
        writer.wait()


def run_limited(*argv, cwd: Path) -> subprocess.CompletedProcess:
    """``moshikit ARGV`` in a subprocess that cannot take more than 4 GB or 120 s (for inputs
    such as /dev/zero that a regression would read until memory runs out)."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
            "from moshikit.cli.app import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def good_tokens(tmp_path_factory, speech, write_wav, torch_codec) -> Path:
    """One real half-second token file (7 frames of 8 codebooks), encoded once for the module."""
    from moshikit import codec as ops

    root = tmp_path_factory.mktemp("hostile")
    write_wav(root / "a.wav", speech[:12000])
    jobs, _ = filejobs.plan([str(root / "a.wav")], str(root / "tok"), ".mimi")
    assert [r.status for r in ops.encode_files(jobs, torch_codec)] == ["done"]
    return root / "tok" / "a.mimi"


def lying(good: Path, dest: Path, **fields) -> Path:
    """``good``'s codes under a header with ``fields`` changed, with a valid checksum."""
    t = read_tokens(good)
    head = TokenHeader(**{**t.header.to_json(), **fields})
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(encode_mimi_bytes(t.codes, head))
    return dest


# ---------------------------------------------------------------- token headers that lie


def test_a_small_mimi_claiming_ten_minutes_is_one_line(tmp_path, good_tokens, mimi_weights, capsys):
    """A few hundred bytes with a valid checksum whose header claims 10 minutes: refused before
    anything is written (main decoded it to a 10-minute wav of silence after half a second)."""
    bad = lying(good_tokens, tmp_path / "in" / "ten_minutes.mimi", num_samples=24000 * 600)
    assert bad.stat().st_size < 600
    code, _, err = run(capsys, "decode", bad, "-o", tmp_path / "out", "--mimi-weight", mimi_weights)
    assert code == 1
    line = one_line(err)
    assert str(bad) in line and "14400000 samples claimed, but 7 frames hold 13440" in line, line
    assert not (tmp_path / "out" / "ten_minutes.wav").exists()


def test_a_huge_claimed_length_is_refused_before_any_allocation(tmp_path, good_tokens, mimi_weights, capsys):
    """2**40 samples (main: an out-of-memory traceback while padding with zeros)."""
    bad = lying(good_tokens, tmp_path / "in" / "huge.mimi", num_samples=2**40)
    good = tmp_path / "in" / "good.mimi"
    shutil.copy(good_tokens, good)
    code, out, err = run(capsys, "decode", tmp_path / "in", "-o", tmp_path / "out", "--mimi-weight", mimi_weights,
                         "--json")
    assert code == 1
    assert str(bad) in one_line(err)
    summary = json.loads(out)
    assert (summary["done"], summary["failed"]) == (1, 1)  # the rest of the batch is done
    assert sf.info(tmp_path / "out" / "good.wav").frames == 12000
    assert not (tmp_path / "out" / "huge.wav").exists()


@pytest.mark.parametrize("fields, words", [
    ({"num_samples": 7 * 1920 + 1}, "7 frames hold 13440"),  # one sample more than 7 frames give
    ({"num_samples": 6 * 1920}, "7 frames hold 13440"),  # a whole frame fewer: the codes say otherwise
    ({"frame_rate": 25.0}, "frame rate 25.0 Hz is not sample rate 24000 Hz / frame size 1920"),
    ({"frames": 0, "num_samples": 1920}, "0 frames hold 0"),
])
def test_header_fields_must_agree(good_tokens, fields, words):
    t = read_tokens(good_tokens)
    head = TokenHeader(**{**t.header.to_json(), **fields})
    codes = t.codes[:, :, : head.frames]
    with pytest.raises(TokenFileError, match="header is not a valid token header") as e:
        decode_mimi_bytes(encode_mimi_bytes(codes, head), "x.mimi")
    assert words in str(e.value) and str(e.value).startswith("x.mimi: ")


def test_codes_beyond_the_claimed_cardinality(good_tokens):
    """11 bits hold up to 2047: a header claiming 1100 entries over codes up to ~2000 is corrupt."""
    t = read_tokens(good_tokens)
    assert int(t.codes.max()) >= 1100
    head = TokenHeader(**{**t.header.to_json(), "cardinality": 1100})
    with pytest.raises(TokenFileError, match=r"x\.mimi: corrupt token file \(codes outside 0\.\.1099\)"):
        decode_mimi_bytes(encode_mimi_bytes(t.codes, head), "x.mimi")


def test_a_valid_header_still_reads(good_tokens):
    """The checks do not refuse what encode writes (num_samples inside the last frame)."""
    t = read_tokens(good_tokens)
    assert t.header.frames == 7 and 6 * 1920 < t.header.num_samples == 12000 <= 7 * 1920


def test_npy_sidecar_that_lies_names_the_sidecar(tmp_path, good_tokens, mimi_weights, capsys):
    t = read_tokens(good_tokens)
    npy = write_tokens(tmp_path / "in" / "a.npy", t.codes, t.header, "npy")
    side = npy.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "num_samples": 24000 * 600}))
    code, _, err = run(capsys, "decode", npy, "-o", tmp_path / "out", "--mimi-weight", mimi_weights)
    assert code == 1
    line = one_line(err)
    assert f"error: {side}: header is not a valid token header (14400000 samples claimed" in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("shape, words", [((0, 5), "holds no codes (0 codebooks: Mimi has 1 to 32)"),
                                          ((40, 5), "40 codebooks: Mimi has 1 to 32")])
def test_npy_codebook_errors_name_the_file(tmp_path, mimi_weights, capsys, shape, words):
    """main said only "0 codebooks: Mimi has 1 to 32", without the file."""
    npy = tmp_path / "bare.npy"
    np.save(npy, np.zeros(shape, np.int16))
    code, _, err = run(capsys, "decode", npy, "-o", tmp_path / "out", "--mimi-weight", mimi_weights)
    assert code == 1
    line = one_line(err)
    assert line.startswith(f"error: {npy}: ") and words in line, line


def test_npy_sidecar_that_is_a_fifo(tmp_path, good_tokens):
    t = read_tokens(good_tokens)
    npy = write_tokens(tmp_path / "a.npy", t.codes, t.header, "npy")
    npy.with_suffix(".json").unlink()
    mkfifo(npy.with_suffix(".json"))
    with pytest.raises(TokenFileError, match=r"a\.json: is a FIFO \(named pipe\), not a regular file"):
        read_tokens(npy)


# ---------------------------------------------------------------- FIFOs and devices as inputs


def test_decode_a_fifo_alone(tmp_path, mimi_weights, capsys):
    fifo = tmp_path / "pipe.mimi"
    mkfifo(fifo)
    code, _, err = run(capsys, "decode", fifo, "-o", tmp_path / "out", "--mimi-weight", mimi_weights)
    assert code == 1
    assert one_line(err) == f"error: {fifo}: is a FIFO (named pipe), not a regular file"


def test_decode_a_folder_with_a_fifo_beside_good_files(tmp_path, good_tokens, mimi_weights, capsys):
    (tmp_path / "in").mkdir()
    shutil.copy(good_tokens, tmp_path / "in" / "a.mimi")
    shutil.copy(good_tokens, tmp_path / "in" / "c.mimi")
    mkfifo(tmp_path / "in" / "b.mimi")
    code, out, err = run(capsys, "decode", tmp_path / "in", "-o", tmp_path / "out", "--mimi-weight", mimi_weights,
                         "--json")
    assert code == 1
    assert one_line(err) == f"error: {tmp_path / 'in' / 'b.mimi'}: is a FIFO (named pipe), not a regular file"
    summary = json.loads(out)
    assert (summary["done"], summary["failed"]) == (2, 1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav", "c.wav"]


def test_dev_zero_is_refused_unread(tmp_path, mimi_weights):
    """decode /dev/zero, and encode a folder holding a link to it: one line each, nothing read
    (main read /dev/zero until memory ran out)."""
    r = run_limited("decode", "/dev/zero", "-o", tmp_path / "out", "--mimi-weight", mimi_weights, cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r.stderr) == "error: /dev/zero: is a character device, not a regular file"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "z.wav").symlink_to("/dev/zero")
    r = run_limited("encode", tmp_path / "in", "-o", tmp_path / "tok", "--mimi-weight", mimi_weights, cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r.stderr) == f"error: {tmp_path / 'in' / 'z.wav'}: is a character device, not a regular file"
    assert not (tmp_path / "tok").exists()


def test_encode_a_folder_with_a_fifo_and_a_device_link(tmp_path, speech, write_wav, mimi_weights, capsys):
    write_wav(tmp_path / "in" / "a.wav", speech[:12000])
    mkfifo(tmp_path / "in" / "b.wav")
    (tmp_path / "in" / "n.wav").symlink_to("/dev/null")
    code, out, err = run(capsys, "encode", tmp_path / "in", "-o", tmp_path / "tok", "--mimi-weight", mimi_weights,
                         "--json")
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [f"error: {tmp_path / 'in' / 'b.wav'}: is a FIFO (named pipe), not a regular file",
                                f"error: {tmp_path / 'in' / 'n.wav'}: is a character device, not a regular file"]
    assert json.loads(out)["done"] == 1 and (tmp_path / "tok" / "a.mimi").is_file()


def test_every_batch_command_plans_around_fifos(tmp_path):
    """encode, decode, transcribe, translate and speak all plan their inputs with ``filejobs.plan``."""
    from moshikit import codec as ops

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ok.txt").write_text("hello")
    mkfifo(tmp_path / "in" / "p.txt")
    jobs, failed = filejobs.plan([str(tmp_path / "in"), "/dev/null"], str(tmp_path / "out"), ".wav", extensions=(".txt",))
    assert [Path(j.source).name for j in jobs] == ["ok.txt"]
    assert [f.error for f in failed] == [f"{tmp_path / 'in' / 'p.txt'}: is a FIFO (named pipe), not a regular file",
                                         "/dev/null: is a character device, not a regular file"]


def test_readers_refuse_fifos_unopened(tmp_path):
    """What reads a named input outside a plan (chat -i, speak -f, voices, a dialogue)."""
    from moshikit.audio import open_audio
    from moshikit.errors import AudioError, UsageError
    from moshikit.tts.text import read_blocks, read_dialogue

    fifo = tmp_path / "p"
    mkfifo(fifo)
    with pytest.raises(AudioError, match="is a FIFO"):
        open_audio(fifo)
    with pytest.raises(UsageError, match="is a FIFO"):
        list(read_blocks(fifo))
    with pytest.raises(UsageError, match="is a FIFO"):
        read_dialogue(fifo)
    with pytest.raises(TokenFileError, match="is a FIFO"):
        read_tokens(fifo)
    with pytest.raises(AudioError, match="character device"):
        open_audio("/dev/null")
    with pytest.raises(TokenFileError, match="character device"):
        read_tokens("/dev/null")


# ---------------------------------------------------------------- outputs in the way


def test_decode_output_that_is_a_directory_or_empty(tmp_path, good_tokens, mimi_weights, capsys):
    """A directory where an output goes: one line, exit 1 (main: "skipped (already there)", exit 0).
    An empty file there: decoded again. A valid one: skipped."""
    for name in ("dir", "empty", "valid"):
        shutil.copy(good_tokens, tmp_path / f"{name}.mimi")
    (tmp_path / "dir.wav").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "valid.wav", np.zeros(100, np.float32), 24000)
    code, out, err = run(capsys, "decode", *(tmp_path / f"{n}.mimi" for n in ("dir", "empty", "valid")),
                         "--mimi-weight", mimi_weights, "--json")
    assert code == 1
    assert one_line(err) == f"error: cannot write {tmp_path / 'dir.wav'}: is a directory"
    status = {Path(f["source"]).stem: f["status"] for f in json.loads(out)["files"]}
    assert status == {"dir": "failed", "empty": "done", "valid": "skipped"}
    assert sf.info(tmp_path / "empty.wav").frames == 12000
    assert sf.info(tmp_path / "valid.wav").frames == 100
    # An unreadable leftover (not audio) is redone too.
    (tmp_path / "empty.wav").write_bytes(b"not audio at all")
    code, out, err = run(capsys, "decode", tmp_path / "empty.mimi", "--mimi-weight", mimi_weights, "--json")
    assert code == 0 and json.loads(out)["done"] == 1 and sf.info(tmp_path / "empty.wav").frames == 12000


def test_encode_output_that_is_an_empty_file_is_redone(tmp_path, speech, write_wav, mimi_weights, capsys):
    write_wav(tmp_path / "a.wav", speech[:12000])
    (tmp_path / "a.mimi").write_bytes(b"")
    code, out, _ = run(capsys, "encode", tmp_path / "a.wav", "--mimi-weight", mimi_weights, "--json")
    assert code == 0 and json.loads(out)["done"] == 1 and read_tokens(tmp_path / "a.mimi").header.frames == 7


def test_the_shared_skip_rule(tmp_path):
    """transcribe, translate and speak keep outputs by the same rule (``filejobs.skip_result``)."""
    from moshikit.filejobs import Job, skip_result

    job = Job("in.wav", tmp_path / "t.txt")
    outs = [tmp_path / "t.txt", tmp_path / "t.srt"]
    assert skip_result(job, outs) is None  # nothing there
    outs[0].write_text("hi")
    outs[1].write_text("")
    assert skip_result(job, outs) is None  # an empty one: redone
    outs[1].write_text("1\n")
    assert skip_result(job, outs).status == "skipped"
    assert skip_result(job, outs, overwrite=True) is None
    outs[1].unlink()
    outs[1].mkdir()
    r = skip_result(job, outs)
    assert r.status == "failed" and r.error == f"cannot write {outs[1]}: is a directory"
    mkfifo(tmp_path / "f.txt")
    r = skip_result(Job("in.wav", tmp_path / "f.txt"))
    assert r.status == "failed" and r.error == f"cannot write {tmp_path / 'f.txt'}: is not a regular file"


def test_transcript_output_is_a_directory(tmp_path, speech, write_wav, capsys):
    """transcribe through the same rule, end to end on the synthetic STT model."""
    write_wav(tmp_path / "a.wav", speech[:12000])
    (tmp_path / "a.txt").mkdir()
    code, out, err = run(capsys, "transcribe", tmp_path / "a.wav", "-m", "synthetic", "--json")
    assert code == 1
    assert one_line(err) == f"error: cannot write {tmp_path / 'a.txt'}: is a directory"


# ---------------------------------------------------------------- config.json names outside the folder


@pytest.fixture(scope="module")
def moshi_dir(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)


def _copy_with(src: Path, dst: Path, **names) -> Path:
    """A model folder of links to ``src``'s files, its config.json with ``names`` changed."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (dst / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **names}))
    return dst


ESCAPES = ["../../../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors"]


@pytest.mark.parametrize("name", ESCAPES)
@pytest.mark.parametrize("key", ["moshi_name", "mimi_name", "tokenizer_name"])
def test_lm_config_naming_files_outside_the_folder(tmp_path, moshi_dir, key, name):
    from moshikit.backends.lm_repo import resolve_repo

    folder = _copy_with(moshi_dir, tmp_path / "m", **{key: name})
    with pytest.raises(ModelError, match=f"config.json's {key} .* names a file outside the model folder"):
        resolve_repo(folder)


def test_chat_on_a_folder_naming_etc_passwd(tmp_path, moshi_dir, speech, write_wav, capsys):
    """main: a traceback from loading /etc/passwd as safetensors weights."""
    write_wav(tmp_path / "a.wav", speech[:12000])
    folder = _copy_with(moshi_dir, tmp_path / "m", moshi_name="../../../../etc/passwd")
    code, _, err = run(capsys, "chat", "-m", folder, "-i", tmp_path / "a.wav", "-o", tmp_path / "r.wav")
    assert code == 1
    line = one_line(err)
    assert "config.json's moshi_name ('../../../../etc/passwd') names a file outside the model folder" in line
    assert not (tmp_path / "r.wav").exists()


def test_mimi_name_outside_the_folder_for_the_codec(tmp_path, moshi_dir):
    """encode/decode -m FOLDER find Mimi through config.json's mimi_name: never outside the folder
    (main took the Mimi file beside the folder)."""
    from moshikit.hub import resolve_mimi

    outside = tmp_path / "outside.safetensors"
    shutil.copy(moshi_dir / json.loads((moshi_dir / "config.json").read_text())["mimi_name"], outside)
    folder = _copy_with(moshi_dir, tmp_path / "m", mimi_name="../outside.safetensors")
    with pytest.raises(ModelError, match=r"config.json's mimi_name \('\.\./outside\.safetensors'\) names a file "
                                         "outside the model folder"):
        resolve_mimi(model=str(folder))


def test_tts_config_naming_files_outside_the_folder(tmp_path, mimi_weights):
    from moshikit.synthetic import tts as synthetic_tts
    from moshikit.tts.model import resolve_tts_checkpoint

    src = synthetic_tts.ensure_synthetic_tts()
    for key in ("moshi_name", "mimi_name", "tokenizer_name"):
        folder = _copy_with(src, tmp_path / key, **{key: "/etc/passwd"})
        with pytest.raises(ModelError, match=f"config.json's {key} .* names a file outside the model folder"):
            resolve_tts_checkpoint(str(folder))


def test_a_config_name_that_is_not_a_string(tmp_path, moshi_dir):
    from moshikit.backends.lm_repo import resolve_repo

    folder = _copy_with(moshi_dir, tmp_path / "m", mimi_name=5)
    with pytest.raises(ModelError, match="config.json's mimi_name must be a file name, not '5'"):
        resolve_repo(folder)
