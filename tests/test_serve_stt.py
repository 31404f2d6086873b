"""``serve --stt`` over moshi-server's streaming protocol (``/api/asr-streaming``), against a real
server on a free port, with a client written from the protocol (msgpack over ``websockets``)."""

from __future__ import annotations

import asyncio
import time

import msgpack
import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAME = 1920


class Served:
    """``service`` in moshikit's server (``ServerApp`` under uvicorn, ``RunningServer``) on a free
    port: ``base`` (http), ``ws`` (ws), ``lines`` (its log)."""

    def __init__(self, service, idle_timeout: float = 10.0, token: str | None = None) -> None:
        from moshikit.serve import RunningServer, ServeConfig, ServerApp

        self.lines: list[str] = []
        self.service = service
        self.app = ServerApp([service], ServeConfig(port=0, idle_timeout=idle_timeout, token=token),
                             log=self.lines.append)
        self.running = RunningServer(self.app)
        self.base = self.running.base
        self.ws = self.base.replace("http://", "ws://")

    def stop(self) -> None:
        self.running.stop()


@pytest.fixture(scope="module")
def stt_model(tmp_path_factory, mimi_weights):
    from moshikit import stt
    from moshikit.synthetic.stt import write_stt_repo

    repo = write_stt_repo(tmp_path_factory.mktemp("stt") / "random", kind="random", mimi_path=mimi_weights)
    return stt.load_stt(str(repo))


@pytest.fixture(scope="module")
def served(stt_model):
    from moshikit.serve.stt import SttService

    s = Served(SttService(stt_model, "synthetic", 8, queue=1))
    yield s
    s.stop()


def pack(msg: dict) -> bytes:
    return msgpack.packb(msg, use_single_float=True)


async def transcribe_stream(url: str, audio: np.ndarray, *, pace: float | None = None, flush: float = 2.0) -> list:
    """Kyutai's client, as its script does it: audio in 1920-sample messages (``pace``: real-time
    factor, None: as fast as the socket goes), a marker, then silence until the marker comes back.
    Returns every message the server sent, in order."""
    import websockets

    got: list[dict] = []
    async with websockets.connect(url + "/api/asr-streaming", max_size=None) as ws:
        async def receive():
            async for message in ws:
                m = msgpack.unpackb(message, raw=False)
                got.append(m)
                if m["type"] == "Marker":
                    return

        reader = asyncio.create_task(receive())
        start = time.monotonic()
        for i in range(0, audio.size, FRAME):
            await ws.send(pack({"type": "Audio", "pcm": [float(x) for x in audio[i:i + FRAME]]}))
            if pace:
                await asyncio.sleep(max(0.0, start + (i + FRAME) / 24000 / pace - time.monotonic()))
        await ws.send(pack({"type": "Marker", "id": 7}))
        for _ in range(int(flush * 12.5) + 1):
            if reader.done():
                break
            await ws.send(pack({"type": "Audio", "pcm": [0.0] * FRAME}))
        await asyncio.wait_for(reader, timeout=60)
        # Read on while closing: a client that stops reading holds up its own close handshake.
        drain = asyncio.create_task(_drain(ws))
    await drain
    return got


async def _drain(ws) -> None:
    import websockets

    try:
        async for _ in ws:
            pass
    except websockets.ConnectionClosed:
        pass


def wait_free(served, timeout: float = 30.0) -> None:
    """Until every slot is free again (an earlier test's streams end once the server has seen
    their clients close)."""
    engine = served.service.engine
    deadline = time.time() + timeout
    while engine.free < engine.batch:
        assert time.time() < deadline, "slots of closed streams were never freed"
        time.sleep(0.02)


def words_of(messages: list) -> list[tuple]:
    return [(m["text"], m["start_time"]) for m in messages if m["type"] == "Word"]


def clip(speech, i: int, seconds: float) -> np.ndarray:
    return np.resize(np.roll(speech, 5000 * i), int(24000 * seconds)).astype(np.float32)


def test_a_client_gets_ready_timed_words_steps_and_its_marker(served, speech):
    got = asyncio.run(transcribe_stream(served.ws, clip(speech, 0, 3.0)))
    kinds = [m["type"] for m in got]
    assert kinds[0] == "Ready"
    assert kinds[-1] == "Marker" and got[-1]["id"] == 7
    words = [m for m in got if m["type"] == "Word"]
    ends = [m for m in got if m["type"] == "EndWord"]
    assert words and all(isinstance(w["text"], str) and w["text"] for w in words)
    starts = [w["start_time"] for w in words]
    assert starts == sorted(starts) and all(0 <= t <= 3.0 + 2.0 for t in starts)
    assert all(e["stop_time"] >= 0 for e in ends)
    # Each EndWord closes the word before it: stop times after that word's start.
    last_start = None
    for m in got:
        if m["type"] == "Word":
            last_start = m["start_time"]
        elif m["type"] == "EndWord":
            assert last_start is not None and m["stop_time"] >= last_start
    steps = [m for m in got if m["type"] == "Step"]
    # The synthetic stt-1b layout has 4 pause heads: one Step per frame with 4 probabilities.
    assert len(steps) >= 3.0 * 12.5 and all(len(s["prs"]) == 4 and 0 <= min(s["prs"]) <= max(s["prs"]) <= 1
                                             for s in steps)
    assert [s["step_idx"] for s in steps] == list(range(1, len(steps) + 1))
    deadline = time.time() + 10  # the server logs the stream's end once it has seen the close
    while not any("stream ended" in line for line in served.lines) and time.time() < deadline:
        time.sleep(0.02)
    assert any(line.startswith("stt: 127.0.0.1:") and "stream ended" in line for line in served.lines)


def test_the_marker_waits_for_the_audio_before_it(served, speech):
    """A marker sent with no audio after it comes back only once the model's delay has been
    flushed by more audio (as moshi-server: the scripts send silence after it)."""
    import websockets

    async def run():
        async with websockets.connect(served.ws + "/api/asr-streaming") as ws:
            assert msgpack.unpackb(await ws.recv())["type"] == "Ready"
            await ws.send(pack({"type": "Audio", "pcm": [0.1] * (FRAME * 5)}))
            await ws.send(pack({"type": "Marker", "id": 1}))
            seen = []

            async def until_marker():
                while True:
                    m = msgpack.unpackb(await ws.recv())
                    seen.append(m)
                    if m["type"] == "Marker":
                        return m
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter := asyncio.ensure_future(until_marker())), 1.5)
            steps_before = sum(m["type"] == "Step" for m in seen)
            await ws.send(pack({"type": "Audio", "pcm": [0.0] * (FRAME * 8)}))  # the 0.5 s delay, flushed
            m = await asyncio.wait_for(waiter, 30)
            return m, steps_before, sum(m["type"] == "Step" for m in seen)

    m, before, after = asyncio.run(run())
    assert m == {"type": "Marker", "id": 1}
    assert before == 5  # the five frames before it were stepped...
    assert after >= 5 + 7  # ...and the marker came back after the delay's 7 frames


def test_eight_concurrent_streams_each_get_the_words_they_get_alone(served, speech):
    wait_free(served)
    audio = [clip(speech, i, 1.0 + 0.25 * i) for i in range(8)]
    alone = [words_of(asyncio.run(transcribe_stream(served.ws, a))) for a in audio]

    async def together():
        paces = [None, 4.0, None, 2.0, None, 3.0, None, 5.0]  # some as fast as they can, some paced
        return await asyncio.gather(*(transcribe_stream(served.ws, a, pace=p) for a, p in zip(audio, paces)))

    got = [words_of(m) for m in asyncio.run(together())]
    assert sum(len(w) for w in alone) >= 8 and len(set(map(tuple, alone))) > 4
    assert got == alone


def test_a_full_server_closes_with_1013_and_moshi_servers_error(served):
    import websockets

    wait_free(served)
    before = len(served.lines)

    async def run():
        held = [await websockets.connect(served.ws + "/api/asr-streaming") for _ in range(8)]
        try:
            for ws in held:
                assert msgpack.unpackb(await ws.recv())["type"] == "Ready"
            async with websockets.connect(served.ws + "/api/asr-streaming") as ninth:
                msg = msgpack.unpackb(await ninth.recv())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ninth.recv()
                return msg, closed.value.rcvd.code
        finally:
            for ws in held:
                await ws.close()

    msg, code = asyncio.run(run())
    assert msg == {"type": "Error", "message": "no free channels"} and code == 1013
    assert sum("refused: every stream slot is taken" in line for line in served.lines[before:]) == 1
    wait_free(served)  # the eight held streams give their slots back


@pytest.mark.parametrize("payload, code", [
    (b"\xc1 not msgpack", 1003),
    (msgpack.packb({"type": "Audio", "pcm": "loud"}), 1008),
    (msgpack.packb({"type": "Launch"}), 1008),
    (msgpack.packb([1, 2, 3]), 1008),
])
def test_a_bad_message_gets_an_error_and_a_clean_close_with_one_log_line(served, payload, code):
    import websockets

    wait_free(served)
    before = len(served.lines)

    async def run():
        async with websockets.connect(served.ws + "/api/asr-streaming") as ws:
            first = msgpack.unpackb(await ws.recv())
            assert first["type"] == "Ready", (first, served.lines[-5:])
            await ws.send(payload)
            msgs = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    msgs.append(msgpack.unpackb(await ws.recv()))
            return msgs, closed.value.rcvd.code

    msgs, got = asyncio.run(run())
    assert got == code
    assert [m["type"] for m in msgs if m["type"] != "Step"] == ["Error"]
    deadline = time.time() + 5
    while not any("stream ended" in line for line in served.lines[before:]) and time.time() < deadline:
        time.sleep(0.02)
    new = served.lines[before:]
    assert sum("bad message" in line for line in new) == 1, new
    assert not any("Traceback" in line for line in new)



def test_a_client_far_ahead_of_the_model_is_read_no_faster_than_the_model(served, speech, monkeypatch):
    """Past ``max_buffered`` seconds of waiting audio the server stops reading the stream (TCP
    back-pressure) instead of holding more or refusing: Kyutai's script sends its closing 40 s of
    silence at full speed, whatever the model's pace."""
    from moshikit.serve import stt as stt_service

    peak = []

    class Watched(stt_service.Feed):
        def push(self, pcm):
            ok = super().push(pcm)
            peak.append(self.buffered_samples)
            return ok

    monkeypatch.setattr(stt_service, "Feed", Watched)
    monkeypatch.setattr(served.service, "max_buffered", 1.0)
    wait_free(served)
    audio = clip(speech, 3, 12.0)

    async def run():
        import websockets

        got = []
        async with websockets.connect(served.ws + "/api/asr-streaming") as ws:
            for i in range(0, audio.size, 12000):  # half-second messages, as fast as they go
                await ws.send(pack({"type": "Audio", "pcm": [float(x) for x in audio[i:i + 12000]]}))
            await ws.send(pack({"type": "Marker", "id": 3}))
            await ws.send(pack({"type": "Audio", "pcm": [0.0] * 24000}))
            async for message in ws:
                got.append(msgpack.unpackb(message))
                if got[-1]["type"] == "Marker":
                    break
        return got

    got = asyncio.run(run())
    assert got[-1] == {"type": "Marker", "id": 3} and not [m for m in got if m["type"] == "Error"]
    # Reading paused at 1 s waiting: at most that plus one message (the last is 1 s) ever waited,
    # where 12 s would have without the pause.
    assert max(peak) <= 24000 * 1.0 + 24000
    assert sum(m["type"] == "Step" for m in got) >= 12 * 12.5


def test_a_model_without_pause_heads_sends_no_step(tmp_path, mimi_weights, speech):
    """As moshi-server: ``Step`` carries the extra heads' predictions, so a model without them
    (stt-2.6b) sends none; words and the marker come as usual."""
    from moshikit import stt
    from moshikit.serve.stt import SttService
    from moshikit.synthetic.stt import write_stt_repo

    repo = write_stt_repo(tmp_path / "noheads", kind="random", mimi_path=mimi_weights, extra_heads=0, prefix=1.0)
    model = stt.load_stt(str(repo))
    assert model.lm.info.extra_heads == 0 and model.prefix_frames == 13
    s = Served(SttService(model, "noheads", 2))
    try:
        got = asyncio.run(transcribe_stream(s.ws, clip(speech, 1, 2.0)))
    finally:
        s.stop()
    kinds = {m["type"] for m in got}
    assert "Step" not in kinds and {"Ready", "Word", "Marker"} <= kinds
    # The 1 s silence prefix is the server's: times count from the client's first sample.
    assert all(0 <= m["start_time"] <= 2.0 + 2.0 for m in got if m["type"] == "Word")
