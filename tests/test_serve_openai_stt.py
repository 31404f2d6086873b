"""``POST /v1/audio/transcriptions`` of ``serve --stt``, with the official ``openai`` package as the
client, against a real server on a free port."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from test_serve_stt import Served

pytestmark = pytest.mark.usefixtures("one_torch_thread")
openai = pytest.importorskip("openai")


#: The server's batch. ``reference`` transcribes at the same batch: a lone request then runs the
#: same kernels as there. At batch 1 the matmuls may run other kernels (gemv, not gemm: on an AVX2
#: CPU their float32 sums differ by ~1e-6), and a random model's near-tied tokens can flip.
SLOTS = 2


@pytest.fixture(scope="module")
def stt_model(tmp_path_factory, mimi_weights):
    from moshikit import stt
    from moshikit.synthetic.stt import write_stt_repo

    repo = write_stt_repo(tmp_path_factory.mktemp("stt") / "random", kind="random", mimi_path=mimi_weights)
    return stt.load_stt(str(repo))


@pytest.fixture(scope="module")
def served(stt_model, reference):
    """The server (made after ``reference``: a model serves one engine at a time)."""
    from moshikit.serve.stt import SttService

    s = Served(SttService(stt_model, "synthetic", SLOTS, queue=0, max_seconds=20.0, max_upload=3_000_000))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def wav(speech, tmp_path_factory, write_wav):
    """4 s of the synthetic speech, as a 16 kHz wav (the route resamples it)."""
    import soxr

    pcm = np.resize(speech, 24000 * 4).astype(np.float32)
    return write_wav(tmp_path_factory.mktemp("in") / "talk.wav", soxr.resample(pcm, 24000, 16000), 16000)


@pytest.fixture(scope="module")
def reference(stt_model, wav):
    """What ``transcribe`` makes of the same file (its words, segments and srt), in a batch of
    ``SLOTS`` as the server's."""
    from moshikit import stt
    from moshikit.audio import read_24k
    from moshikit.transcript import render

    s = stt.Stream(stt_model, "ref", [read_24k(wav)[0]])
    for _ in stt.run_streams(stt_model, [s], SLOTS, chunk=25):
        pass
    t = s.finish()
    assert len(t.words) >= 3
    return t, render(t, "srt")


def test_verbose_json_has_transcribes_words_and_segments(client, wav, reference):
    t, _ = reference
    with open(wav, "rb") as f:
        r = client.audio.transcriptions.create(model="synthetic", file=f, response_format="verbose_json",
                                               timestamp_granularities=["word", "segment"], language="en")
    assert r.duration == pytest.approx(4.0, abs=1e-3) and r.language == "english"
    # Same words as transcribe (a slot of a batch of SLOTS both ways: the same kernels);
    # times to the millisecond both are rounded to.
    assert [w.word for w in r.words] == [w.text for w in t.words]
    assert [w.start for w in r.words] == pytest.approx([w.start for w in t.words], abs=2e-3)
    assert [s.text for s in r.segments] == [s.text for s in t.segments]
    assert r.text == t.text and all(0 <= s.start <= s.end <= 4.0 for s in r.segments)


def test_text_json_and_srt(client, wav, reference):
    t, srt = reference
    with open(wav, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    with open(wav, "rb") as f:
        got_srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    with open(wav, "rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert text.strip() == t.text == plain.text
    assert got_srt.strip() == srt.strip()


def test_stream_sends_text_deltas_then_done(client, wav, reference):
    t, _ = reference
    with open(wav, "rb") as f:
        events = list(client.audio.transcriptions.create(model="synthetic", file=f, stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}
    assert len(kinds) > 3  # the text came in pieces, one per word
    assert events[-1].text == t.text == "".join(e.delta for e in events[:-1])


def _post(served, body: bytes, content_type: str):
    req = urllib.request.Request(served.base + "/v1/audio/transcriptions", data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _multipart(fields: dict, file: bytes | None, name: str = "a.wav") -> tuple[bytes, str]:
    b = "moshikitboundary"
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    if file is not None:
        out.write(f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                  f'Content-Type: application/octet-stream\r\n\r\n'.encode() + file + b"\r\n")
    out.write(f"--{b}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={b}"


@pytest.mark.parametrize("fields, file, status, param", [
    ({"model": "x"}, None, 400, "file"),
    ({"model": "x"}, b"RIFF....WAVEfmt not audio", 400, "file"),
    ({"model": "x", "response_format": "mp4"}, b"x", 400, "response_format"),
    ({"model": "x", "timestamp_granularities[]": "char"}, b"x", 400, "timestamp_granularities"),
])
def test_bad_requests_get_openais_error_object_and_one_log_line(served, fields, file, status, param):
    before = len(served.lines)
    got, _, body = _post(served, *_multipart(fields, file))
    err = json.loads(body)["error"]
    assert got == status and err["param"] == param and err["type"] == "invalid_request_error"
    assert "Traceback" not in body.decode() and "/tmp/" not in err["message"]
    new = served.lines[before:]
    assert sum("transcription refused" in line for line in new) == 1, new


def test_too_large_and_too_long_uploads_are_refused(served, write_wav, tmp_path):
    status, _, body = _post(served, *_multipart({"model": "x"}, b"\0" * 3_100_000))
    assert status == 413 and json.loads(body)["error"]["code"]
    long = write_wav(tmp_path / "long.wav", np.zeros(24000 * 21, np.float32))  # over max_seconds (20)
    status, _, body = _post(served, *_multipart({"model": "x"}, long.read_bytes()))
    assert status == 400 and "at most 20 s" in json.loads(body)["error"]["message"]


def test_a_full_server_answers_429_with_retry_after(served):
    import soundfile as sf

    from moshikit.serve.stt_engine import Feed

    buf = io.BytesIO()
    sf.write(buf, np.zeros(24000, np.float32), 24000, format="WAV")
    engine = served.service.engine
    held = [Feed(), Feed()]
    assert all(engine.submit(f) for f in held)  # both slots taken (no queue on this server)
    before = len(served.lines)
    try:
        status, headers, data = _post(served, *_multipart({"model": "x"}, buf.getvalue()))
    finally:
        for f in held:
            f.cancel()
    assert status == 429 and int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
    assert json.loads(data)["error"]["code"] == "busy"
    assert sum("refused (429)" in line for line in served.lines[before:]) == 1


def test_models_and_info_list_the_stt_model_and_its_free_slots(client, served):
    assert [(m.id, m.object) for m in client.models.list()] == [("synthetic", "model")]
    with urllib.request.urlopen(served.base + "/api/info", timeout=10) as r:
        info = json.loads(r.read())
    (svc,) = info["services"]
    assert svc["kind"] == "stt" and svc["slots"] == 2 and 0 <= svc["free"] <= 2
    assert "/api/asr-streaming" in svc["routes"] and "/v1/audio/transcriptions" in svc["routes"]
