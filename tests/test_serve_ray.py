"""`serve --ray`: the same application on Ray Serve. Without a cluster: the replica's name on every
reply, a stream whose replica died closed with one reason, and a clear error where Ray Serve cannot
run. On a private local Ray cluster with 2 CPU replicas of the synthetic Moshi: concurrent chat
streams go to both replicas, a replica killed mid-stream fails its own stream with one message
while the other stream goes on, and Ray starts a new replica."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time

import numpy as np
import pytest

from moshikit import wire
from moshikit.backends.base import SamplingConfig
from moshikit.serve import ray_app
from moshikit.serve.translate import load_translate_service

F = wire.FRAME
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- without a cluster


async def _drive(app, scope, incoming):
    sent = []
    queue = list(incoming)

    async def receive():
        return queue.pop(0) if queue else {"type": "websocket.disconnect", "code": 1000}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_every_reply_names_its_replica():
    async def ok(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
            await send({"type": "http.response.body", "body": b"x"})
        else:
            await send({"type": "websocket.accept"})

    tagged = ray_app.ReplicaTag(ok)
    me = f"{os.uname().nodename}:{os.getpid()}".encode()
    [start, body] = asyncio.run(_drive(tagged, {"type": "http"}, []))
    assert start["headers"] == [(b"a", b"1"), (ray_app.REPLICA_HEADER, me)] and body["body"] == b"x"
    [accept] = asyncio.run(_drive(tagged, {"type": "websocket"}, []))
    assert (ray_app.REPLICA_HEADER, me) in accept["headers"]


def test_a_stream_whose_replica_died_is_closed_with_one_reason():
    async def dies(scope, receive, send):  # accepted, then the replica is gone: no close from it
        await send({"type": "websocket.accept"})
        raise RuntimeError("the replica's actor died")

    async def closes(scope, receive, send):
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    sent = []

    async def run():
        async def send(m):
            sent.append(m)

        try:
            await ray_app.ReplicaLost(dies)({"type": "websocket"}, None, send)
        except RuntimeError:
            pass

    asyncio.run(run())
    assert sent == [{"type": "websocket.accept"},
                    {"type": "websocket.close", "code": 1011, "reason": ray_app.LOST_REASON}]
    # a stream that closed itself, or never was accepted, is left as it was
    assert asyncio.run(_drive(ray_app.ReplicaLost(closes), {"type": "websocket"}, [])) == [
        {"type": "websocket.accept"}, {"type": "websocket.close", "code": 1000}]


def test_protobuf_that_ray_serve_cannot_read_is_one_clear_error(monkeypatch):
    from moshikit.errors import BackendUnavailable

    monkeypatch.setattr(ray_app, "serve_protobuf_ok", lambda: False)
    with pytest.raises(BackendUnavailable, match="protobuf 7") as err:
        ray_app.check_ray_serve()
    assert 'pip install "protobuf<7"' in err.value.hint


def test_replicas_reserve_a_gpu_where_there_is_one_else_cpus():
    from moshikit.errors import UsageError

    assert ray_app.replica_resources(None) == (1.0, 0.0)  # auto on a cluster without GPUs
    assert ray_app.replica_resources(None, cluster_gpus=2) == (1.0, 1.0)
    assert ray_app.replica_resources("cuda:0") == (1.0, 1.0)
    assert ray_app.replica_resources("cpu", cpus=4, cluster_gpus=2) == (4, 0.0)
    assert ray_app.replica_resources(None, gpus=0.5, cluster_gpus=1) == (1.0, 0.5)  # two replicas a GPU
    with pytest.raises(UsageError, match="asks for 2 GPUs; the cluster has 1"):
        ray_app.replica_resources("cuda", gpus=2, cluster_gpus=1)
    with pytest.raises(UsageError):
        ray_app.replica_resources("cpu", cpus=0)


def test_serve_ray_refuses_tls_before_any_cluster(capsys):
    from moshikit.cli.app import main

    code = main(["serve", "--ray", "--ssl", "--translate", "synthetic"])
    err = capsys.readouterr().err
    assert code == 2 and "--ray serves plain HTTP" in err and "Traceback" not in err


# ---------------------------------------------------------------- a local Ray cluster


async def _open(session, base: str):
    ws = await session.ws_connect(base.replace("http://", "ws://") + "/api/chat", max_msg_size=0)
    replica = ws._response.headers.get(ray_app.REPLICA_HEADER.decode())  # aiohttp keeps the upgrade reply there
    assert await asyncio.wait_for(ws.receive_bytes(), 60) == b"\x00"
    return ws, replica


async def _talk(ws, pcm: np.ndarray, answered: asyncio.Event, pace: float = 0.04):
    """Send ``pcm`` as Opus pages at about twice real time; count the audio frames that come back
    until the server closes or every frame but the first is answered. -> (frames, close code, reason)."""
    import aiohttp
    import sphn

    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
    got, want = 0, pcm.size // F - 1

    async def send():
        for i in range(0, pcm.size, F):
            await ws.send_bytes(b"\x01" + writer.append_pcm(pcm[i:i + F]))
            await asyncio.sleep(pace)

    sender = asyncio.create_task(send())
    try:
        while got < want:
            msg = await asyncio.wait_for(ws.receive(), 60)
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x01":
                got += reader.append_bytes(msg.data[1:]).size // F
                if got >= 5:
                    answered.set()
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return got, ws.close_code, msg.extra
    finally:
        sender.cancel()
    await ws.close()
    return got, None, None


@pytest.fixture(scope="module")
def ray_port():
    """A private local Ray cluster for this module, and the port its Serve proxy listens on: each test
    deploys its own application there (under the one name, so each replaces the last)."""
    if not ray_app.serve_protobuf_ok():
        pytest.skip(f"Ray Serve cannot deploy here: {ray_app.PROTOBUF_HINT}")
    import ray

    try:
        yield ray_app.free_port("127.0.0.1")
    finally:
        if ray.is_initialized():
            try:
                ray_app.stop_on_ray()
            finally:
                ray.shutdown()


def deploy(port: int, loaders, token: str | None = None, **options) -> str:
    from moshikit.serve import ServeConfig

    cfg = ServeConfig(host="127.0.0.1", port=port, token=token)
    return ray_app.start_on_ray(ray_app.RaySpec(loaders, cfg, **options), address="local")


class Echo:
    """A stand-in service without a model: a WebSocket that echoes text, under Ray in seconds."""

    kind = "echo"

    def models(self):
        return [{"id": "echo", "pid": os.getpid()}]

    def routes(self):
        from starlette.routing import WebSocketRoute

        async def echo(ws):
            await ws.accept()
            async for text in ws.iter_text():
                await ws.send_text(text.upper())

        return [WebSocketRoute("/api/echo", echo)]

    async def start(self, ctx):
        pass

    async def stop(self):
        pass


def echo_service():
    return Echo()


def test_ray_smoke_one_replica_serves_the_application(ray_port):
    import aiohttp
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replica cannot import this module
    token = "ray-smoke-token-0123456789"
    base = deploy(ray_port, [echo_service], token=token, replicas=1, num_cpus=0.5)

    async def run():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api/info") as r:  # the application's token check holds under Ray
                assert r.status == 401
            async with session.get(f"{base}/api/info", headers={"kyutai-api-key": token}) as r:
                info, replica = await r.json(), r.headers[ray_app.REPLICA_HEADER.decode()]
            async with session.ws_connect(base.replace("http://", "ws://") + f"/api/echo?auth_id={token}") as ws:
                assert ws._response.headers[ray_app.REPLICA_HEADER.decode()] == replica
                await ws.send_str("through ray's proxy")
                assert await asyncio.wait_for(ws.receive_str(), 30) == "THROUGH RAY'S PROXY"
        return info, replica

    info, replica = asyncio.run(run())
    [service] = info["services"]
    assert service["kind"] == "echo" and replica.endswith(f":{service['pid']}") and service["pid"] != os.getpid()


@pytest.fixture
def cluster(ray_port, mimi_weights):
    from moshikit.serve import ServeConfig
    from moshikit.synthetic import lm as synthetic_lm

    repo = synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)
    greedy = SamplingConfig(temp=0.0, temp_text=0.0)
    load = functools.partial(ray_app.chat_service, str(repo), ServeConfig(), backend="torch", device="cpu",
                             sampling=greedy)
    translator = functools.partial(load_translate_service, "synthetic", backend="torch", device="cpu", seed=1)
    load()  # writes the codec's graphs and the synthetic Hibiki into the cache once, before two replicas
    translator()  # want them at once
    # one slot per replica (batch 1), and Ray routes no second stream to a replica that has one
    return deploy(ray_port, [load, translator], replicas=2, num_cpus=0.5, max_ongoing=1, health_check_seconds=1.0)


@pytest.mark.slow  # ~90 s: a private Ray cluster, two replicas loading a model each, one killed and replaced
def test_two_replicas_share_streams_and_one_dies_alone(cluster, speech):
    import aiohttp

    base = cluster
    pcm = speech[: 40 * F]

    async def run():
        async with aiohttp.ClientSession() as session:
            (a, ra), (b, rb) = await asyncio.gather(_open(session, base), _open(session, base))
            assert ra and rb and ra != rb  # the two streams went to the two replicas
            answered = [asyncio.Event(), asyncio.Event()]
            ta = asyncio.create_task(_talk(a, pcm, answered[0]))
            tb = asyncio.create_task(_talk(b, pcm, answered[1]))
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in answered)), 60)
            os.kill(int(ra.rsplit(":", 1)[1]), signal.SIGKILL)  # a's replica dies mid-stream
            (got_a, code_a, reason_a), (got_b, code_b, _) = await asyncio.gather(ta, tb)
            # a's stream ends with one message: the close, its code and reason; b's goes on to its end
            assert code_a == 1011 and reason_a == ray_app.LOST_REASON and 5 <= got_a < 39
            assert code_b is None and got_b == 39
            # Ray replaces the dead replica: two new streams go to b's replica and to a new one
            deadline = time.monotonic() + 90
            while True:
                (c, rc), (d, rd) = await asyncio.gather(_open(session, base), _open(session, base))
                await c.close()
                await d.close()
                if {rc, rd} != {rb} and ra not in (rc, rd) and rc != rd:
                    break
                assert time.monotonic() < deadline, f"no new replica: {rc}, {rd}"
                await asyncio.sleep(1)
            assert rb in (rc, rd)
            # the HTTP routes are the same too: the served models, and a translation by the openai package
            async with session.get(f"{base}/api/info") as r:
                info = await r.json()
                assert r.headers[ray_app.REPLICA_HEADER.decode()] in (rc, rd)
            assert sorted(s["kind"] for s in info["services"]) == ["chat", "translate"]

    asyncio.run(run())
    import io

    import openai
    import soundfile as sf

    wav = io.BytesIO()
    sf.write(wav, speech[:24000], 24000, format="WAV")
    api = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    with pytest.warns(DeprecationWarning):  # openai marks its translations API so
        got = api.audio.translations.create(model="synthetic", file=("a.wav", wav.getvalue()),
                                            response_format="verbose_json")
    assert got.language == "english" and got.duration == 1.0 and got.text

    # a deployment whose replicas cannot load their model is one error saying why
    from moshikit.errors import MoshikitError
    from moshikit.serve import ServeConfig

    bad = functools.partial(ray_app.chat_service, "/nonexistent/moshi", ServeConfig())
    with pytest.raises(MoshikitError, match="could not start the server: .*/nonexistent/moshi: no such file") as err:
        deploy(int(base.rsplit(":", 1)[1]), [bad], replicas=1, num_cpus=0.5, start_tries=1)
    assert "\n" not in str(err.value)
