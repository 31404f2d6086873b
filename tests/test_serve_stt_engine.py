"""The batched STT engine behind ``serve --stt``: streams arriving at their own paces share one
batch, each gets the tokens it gets alone, and a stream with no audio yet is not stepped."""

import threading
import time

import numpy as np
import pytest

from moshikit import stt
from moshikit.serve.stt_engine import Feed, ServerWords, SttEngine
from moshikit.synthetic.stt import write_stt_repo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mimi_weights):
    return write_stt_repo(tmp_path_factory.mktemp("stt") / "random", kind="random", mimi_path=mimi_weights)


@pytest.fixture(scope="module", params=["cpu", "torch"])
def model(request, repo):
    return stt.load_stt(str(repo), backend=request.param, device="cpu")


def clips(speech, seconds=(3, 1, 2, 2.5)):
    return [np.resize(np.roll(speech, 7000 * i), int(24000 * s)).astype(np.float32) for i, s in enumerate(seconds)]


def run(engine, audio, paces):
    """Push each clip at its own pace (frames per tick), then close; the tokens each got."""
    out = [[] for _ in audio]
    done = threading.Semaphore(0)
    feeds = []
    for i in range(len(audio)):
        f = Feed(sink=lambda f, toks: out[f.key].extend(t.token for t in toks), on_end=lambda f: done.release())
        f.key = i
        assert engine.submit(f)
        feeds.append(f)
    pos = [0] * len(audio)
    while any(p < a.size for p, a in zip(pos, audio)):
        for i, (a, pace) in enumerate(zip(audio, paces)):
            n = int(1920 * pace)
            if pos[i] < a.size:
                feeds[i].push(a[pos[i]:pos[i] + n])
                pos[i] += n
        time.sleep(0.005)
    for f in feeds:
        f.close(flush_frames=7)
    for _ in feeds:
        assert done.acquire(timeout=60)
    assert all(f.error is None and f.steps == f.frames_in for f in feeds)
    return out


def test_streams_at_their_own_paces_get_the_tokens_they_get_alone(model, speech):
    audio = clips(speech)
    engine = SttEngine(model, 4)
    engine.start()
    try:
        alone = [run(engine, [a], [1])[0] for a in audio]
        together = run(engine, audio, [0.3, 1.7, 1, 0.6])
    finally:
        engine.stop()
    # The random model's text depends on its audio: each clip says something else.
    assert len({tuple(t) for t in alone}) == len(alone) and max(len(set(t)) for t in alone) > 3
    # Same kernels at the same batch size, the other rows masked: identical, token for token.
    assert together == alone


def test_the_cpu_engine_holds_each_slots_state_for_the_whole_context_from_the_start(model, speech):
    """Grown as streams run, the cpu engine's KV cache stopped every stream for seconds (32 streams
    of stt-1b): the served engine reserves the model's context before its first step. A 1 s clip
    alone would never grow it past its first 64 slots."""
    if model.lm.info.backend != "cpu":
        pytest.skip("only the cpu engine's state grows")
    engine = SttEngine(model, 3)
    engine.start()
    try:
        run(engine, clips(speech, (1,)), [1])
    finally:
        engine.stop()
    step = model.lm.engine
    assert step.batch == 3
    assert {kv.shape[3] for kv in step.kv} == {model.lm.info.context}


def test_a_masked_stream_stays_as_it_was_and_padding_it_would_not(model, speech):
    """``step_heads_masked``: a row left out of a step is exactly where it was. The control: had
    it been stepped with made-up input (zero codes) while it waited, its text would change."""
    lm = model.lm
    k = lm.info.input_codebooks
    a, b = clips(speech)[:2]
    codes = [model.codec.open_encoder().encode(x[None, : x.size // 1920 * 1920])[0, :k] for x in (a, b)]
    n = min(c.shape[1] for c in codes)

    def tokens(wait: str) -> list[int]:
        lm.reset(2)
        got = []
        for i in range(n):
            for extra in range(2 if i % 3 == 0 else 1):  # stream 0 waits every third step
                c = np.stack([codes[0][:, i] if extra == 0 else np.zeros(k, np.int64), codes[1][:, i]])
                active = np.array([extra == 0 or wait == "padded", True])
                ids, _ = lm.step_heads_masked(c, active)
                if extra == 0:
                    got.append(int(ids[0, 0]))
        return got

    lm.reset(2)
    clean = [int(lm.step_heads_masked(np.stack([codes[0][:, i], codes[1][:, i]]), np.ones(2, bool))[0][0, 0])
             for i in range(n)]
    assert len(set(clean)) > 3
    assert tokens("masked") == clean
    assert tokens("padded") != clean


def test_full_engine_refuses_and_queues(model):
    engine = SttEngine(model, 2, queue=1)
    engine.start()
    try:
        feeds = [Feed() for _ in range(4)]
        assert engine.submit(feeds[0]) and engine.submit(feeds[1])
        assert not engine.submit(feeds[2])  # full, no waiting asked
        assert engine.submit(feeds[2], may_wait=True)  # one may wait
        assert not engine.submit(feeds[3], may_wait=True)  # the queue holds one
        assert engine.free == 0
        feeds[0].cancel()
        deadline = time.time() + 10
        assert engine.used == 2  # a cancelled stream's slot counts as free at once
        def waiting_one_seated():  # the engine's thread takes it from the queue, then seats it
            return any(s is not None and s.feed is feeds[2] for s in engine._slots)

        while not (feeds[0].ended and waiting_one_seated()) and time.time() < deadline:
            time.sleep(0.01)
        assert feeds[0].ended and waiting_one_seated() and not engine._pending
    finally:
        engine.stop()


def test_a_bounded_feed_refuses_audio_past_its_bound():
    f = Feed(max_buffered=1.0)
    assert f.push(np.zeros(24000, np.float32))
    assert not f.push(np.zeros(10, np.float32))
    assert f.buffered_samples == 24000 and f.frames_in == 12


class _Sp:
    """Ids 4.. are pieces a, b, c...; id 20 is "▁q" (a piece that begins a word)."""

    def decode(self, ids):
        return "".join(self.id_to_piece(i) for i in ids).replace("▁", " ")

    def id_to_piece(self, i):
        return "▁q" if i == 20 else chr(ord("a") + i - 4)


def test_words_follow_moshi_servers_rules():
    w = ServerWords(_Sp(), offset=0.5)  # 0.5 s delay: the first 7 steps (t < 0.5 s) say nothing
    events = []
    for step, tok in enumerate([5] * 7 + [3, 4, 5, 0, 3, 6, 3, 3, 0, 7, 0]):
        events += [(step, e) for e in w.feed(step, tok)]
    assert [e for _, e in events] == [
        {"type": "Word", "text": "ab", "start_time": 0.0},  # closed by token 0 at step 10...
        {"type": "EndWord", "stop_time": pytest.approx(10 / 12.5 - 0.5)},  # ...which also ends it
        {"type": "Word", "text": "c", "start_time": pytest.approx(0.3)},  # closed by token 3, starts at the last stop
        {"type": "EndWord", "stop_time": pytest.approx(15 / 12.5 - 0.5)},
        {"type": "Word", "text": "d", "start_time": pytest.approx(0.7)},
        {"type": "EndWord", "stop_time": pytest.approx(17 / 12.5 - 0.5)},
    ]


def test_a_piece_that_begins_a_word_closes_the_one_before():
    w = ServerWords(_Sp(), offset=0.0)
    events = [e for step, tok in enumerate([4, 5, 20, 6, 0]) for e in w.feed(step, tok)]
    assert events == [
        {"type": "Word", "text": "ab", "start_time": 0.0},
        {"type": "EndWord", "stop_time": pytest.approx(2 / 12.5)},
        {"type": "Word", "text": "qc", "start_time": pytest.approx(2 / 12.5)},
        {"type": "EndWord", "stop_time": pytest.approx(4 / 12.5)},
    ]


def test_protocol_messages_are_checked():
    import msgpack

    from moshikit.serve import asr_protocol as proto

    m = proto.unpack(msgpack.packb({"type": "Audio", "pcm": [0.5, -0.25]}, use_single_float=True))
    assert m["type"] == "Audio" and m["pcm"].dtype == np.float32 and m["pcm"].tolist() == [0.5, -0.25]
    assert proto.unpack(msgpack.packb({"type": "Marker", "id": 2 ** 40})) == {"type": "Marker", "id": 2 ** 40}
    assert proto.unpack(msgpack.packb({"type": "Init"})) == {"type": "Init"}
    bad = [({"type": "Audio", "pcm": [float("nan")]}, 1008), ({"type": "Marker", "id": "x"}, 1008),
           ({"type": "Marker", "id": True}, 1008), ({"type": "OggOpus", "data": b"x"}, 1008),
           ({"type": "Audio", "pcm": [0.0] * (proto.MAX_AUDIO_SAMPLES + 1)}, 1009), ({"pcm": []}, 1008)]
    for msg, code in bad:
        with pytest.raises(proto.ProtocolError) as err:
            proto.unpack(msgpack.packb(msg, use_single_float=True))
        assert err.value.code == code, msg
    with pytest.raises(proto.ProtocolError) as err:
        proto.unpack(b"\xc1")
    assert err.value.code == 1003
    assert msgpack.unpackb(proto.pack(proto.step(3, [0.25], 10))) == {"type": "Step", "step_idx": 3, "prs": [0.25],
                                                                      "buffered_pcm": 10}
