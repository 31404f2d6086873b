"""serve's access token (moshikit.access), per-session sampling from the query
(moshikit.chatparams) and the CLI's address, --open and --no-auth. The page itself is driven
in a real browser in tests/web/."""

from __future__ import annotations

import asyncio
import types
import urllib.error
import urllib.request

import numpy as np
import pytest

from moshikit import access, chatparams, remote, webpage, wire
from moshikit.backends.base import SamplingConfig
from moshikit.errors import RemoteError

GREEDY = SamplingConfig(temp=0.0, temp_text=0.0)
F = wire.FRAME
TOKEN = "s3cret-token"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def conv(mimi_weights):
    from moshikit import serve
    from moshikit.synthetic import lm as synthetic_lm

    repo = synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)
    return serve.load_conversation(str(repo), backend="torch", device="cpu", sampling=GREEDY)


class Spy:
    """Counts what reaches the model: resets and steps, and the sampling each step ran with."""

    def __init__(self, conv):
        self.conv, self.steps, self.resets, self.sampling = conv, 0, 0, []
        self._step, self._reset = conv.step, conv.reset

    def __enter__(self):
        def step(pcm):
            self.steps += 1
            self.sampling.append(self.conv.lm.sampling)
            return self._step(pcm)

        def reset():
            self.resets += 1
            return self._reset()

        self.conv.step, self.conv.reset = step, reset
        return self

    def __exit__(self, *exc):
        del self.conv.step, self.conv.reset  # back to the class's methods


@pytest.fixture(scope="module")
def guarded(conv):
    from moshikit import serve

    logs: list[str] = []
    server = serve.ChatServer(conv, serve.ServeConfig(port=0, token=TOKEN), log=logs.append)
    with serve.RunningServer(server) as running:
        yield running.url, server, logs


def _http(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _ws(url: str, headers: dict | None = None) -> tuple[int | None, list[bytes]]:
    import aiohttp

    got = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=headers or {}) as ws:
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got.append(msg.data)
                    if msg.data == b"\x00":
                        return None, got  # the handshake: a session started
                else:
                    return ws.close_code, got


def test_token_decisions():
    assert access.token_for("127.0.0.1") is None and access.token_for("::1") is None
    assert access.token_for("localhost") is None
    made = access.token_for("0.0.0.0")
    assert made and len(made) >= 20 and made != access.token_for("0.0.0.0")
    assert access.token_for("192.168.1.5", no_auth=True) is None
    assert access.token_for("127.0.0.1", token="given") == "given"
    assert access.token_ok("abc", "abc") and not access.token_ok("abc", "abd") and not access.token_ok("abc", "")


def test_wrong_or_missing_token_never_reaches_the_model(guarded, conv):
    url, server, logs = guarded
    base = url.replace("ws://", "http://").removesuffix("/api/chat")
    before, sessions = len(logs), server.stats["sessions"]  # the server is the module's: count our own
    with Spy(conv) as spy:
        assert _http(base + "/")[0] == 401
        status, body = _http(base + "/?token=wrong")
        assert status == 401 and b"?token=" in body
        assert _http(base + "/index.html")[0] == 401
        for bad in (url, url + "?token=wrong", url + "?token=" + TOKEN[:-1]):
            code, got = asyncio.run(_ws(bad))
            assert code == access.CLOSE_REFUSED and got[-1].startswith(b"\x05unauthorized")
        with pytest.raises(RemoteError, match="unauthorized"):
            remote.connect(url + "?token=nope", timeout=5)
        assert spy.steps == 0 and spy.resets == 0
    assert server.stats["sessions"] == sessions
    refusals = logs[before:]
    assert len(refusals) == 7 and all(line.startswith("refused 127.0.0.1") for line in refusals), refusals
    assert "no token" in refusals[0] and "wrong token" in refusals[1]
    # what the page needs without the token: its own scripts (public, the same for everyone)
    assert _http(base + "/app.js")[0] == 200


def test_right_token_serves_page_and_chat(guarded, speech):
    url, server, _ = guarded
    base = url.replace("ws://", "http://").removesuffix("/api/chat")
    status, page = _http(base + f"/?token={TOKEN}")
    assert status == 200 and b'id="transcript"' in page
    assert _http(base + "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert asyncio.run(_ws(url, {"Authorization": f"Bearer {TOKEN}"})) == (None, [b"\x00"])
    out, transcript = remote.chat_file(url + f"?token={TOKEN}", speech[: 8 * F], tail_seconds=0.0, quiet_seconds=1.0)
    assert np.count_nonzero(out) > 5 * F and transcript


# --------------------------------------------------------------------------- sampling from the query


def test_query_parameters_parse():
    base = SamplingConfig(temp=0.8, temp_text=0.7, top_k=250, top_k_text=25, seed=4)
    q = {"text_temperature": "0.3", "text_topk": "10", "audio_temperature": "0", "audio_topk": "100.0",
         "pad_mult": "0", "repetition_penalty": "1.0", "text_seed": "123"}
    got = chatparams.session_sampling(base, q)
    assert got == SamplingConfig(temp=0.0, temp_text=0.3, top_k=100, top_k_text=10, seed=4)
    assert chatparams.session_sampling(base, {"email": "x"}) is None
    for bad in ({"text_temperature": "hot"}, {"audio_topk": "0"}, {"text_temperature": "nan"},
                {"audio_temperature": "-1"}, {"text_topk": "2.5"}):
        with pytest.raises(chatparams.BadParameter):
            chatparams.session_sampling(base, bad)


def test_session_sampling_reaches_the_model(conv, speech):
    """The official client's parameters set that session's sampling; the next session without
    them is back on the server's (greedy here: exactly the offline loop's text)."""
    from moshikit import serve
    from moshikit.conversation import run_offline

    server = serve.ChatServer(conv, serve.ServeConfig(port=0))
    pcm = speech[: 12 * F]
    with serve.RunningServer(server) as running, Spy(conv) as spy:
        hot = running.url + "?text_temperature=5&text_topk=60&audio_temperature=5&audio_topk=2000&pad_mult=0"
        _, hot_text = remote.chat_file(hot, pcm, tail_seconds=0.0, quiet_seconds=1.0)
        used = set(spy.sampling)
        spy.sampling.clear()
        _, plain_text = remote.chat_file(running.url, pcm, tail_seconds=0.0, quiet_seconds=1.0)
        plain_used = set(spy.sampling)
        code, got = asyncio.run(_ws(running.url + "?audio_topk=zero"))
    assert used == {SamplingConfig(temp=5.0, temp_text=5.0, top_k=2000, top_k_text=60, seed=None)}
    assert plain_used == {server.base_sampling} and server.base_sampling.temp == 0.0
    heard = wire.OpusEncoder().encode(pcm)
    import sphn

    ref, transcript = run_offline(conv, sphn.OpusStreamReader(24000).append_bytes(heard), tail_frames=0)
    greedy = [e["text"] for e in transcript]
    assert [e["text"] for e in plain_text] == greedy
    assert [e["text"] for e in hot_text] != greedy  # sampled at temperature 5: another text
    assert code == access.CLOSE_REFUSED and got[-1] == wire.error_message("bad parameter: audio_topk='zero' is not a number")


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def fake_serve(monkeypatch):
    """`moshikit serve` up to its listening socket, without a model: records what it was given."""
    from moshikit import serve as lib

    seen = {}
    lm = types.SimpleNamespace(info=types.SimpleNamespace(backend="torch", device="cpu"), sampling=None)
    monkeypatch.setattr(lib, "load_conversation", lambda *a, **k: types.SimpleNamespace(batch_size=1, lm=lm))

    def serve_forever(server, ready, ssl_ctx=None):
        seen["config"] = server.cfg
        ready(f"ws://{server.cfg.host}:4321/api/chat")

    monkeypatch.setattr(lib, "serve_forever", serve_forever)
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    monkeypatch.setattr(webpage, "lan_address", lambda: "192.168.7.9")
    seen["opened"] = opened
    return seen


def test_cli_on_all_interfaces_requires_a_token_and_opens_the_page(fake_serve, capsys):
    from moshikit.cli.app import main

    assert main(["serve", "--host", "0.0.0.0", "--open"]) == 0
    out, err = capsys.readouterr()
    token = fake_serve["config"].token
    assert token and len(token) >= 20
    assert out.strip() == f"ws://0.0.0.0:4321/api/chat?token={token}"
    assert f"open http://192.168.7.9:4321/?token={token}" in err
    assert fake_serve["opened"] == [f"http://192.168.7.9:4321/?token={token}"]


def test_cli_loopback_and_no_auth(fake_serve, capsys):
    from moshikit.cli.app import main

    assert main(["serve"]) == 0
    out, err = capsys.readouterr()
    assert fake_serve["config"].token is None and out.strip() == "ws://127.0.0.1:4321/api/chat"
    assert "open http://127.0.0.1:4321/" in err and "warning" not in err and fake_serve["opened"] == []
    assert main(["serve", "--host", "0.0.0.0", "--no-auth"]) == 0
    out, err = capsys.readouterr()
    assert fake_serve["config"].token is None and "?token" not in out
    assert "warning: --no-auth on 0.0.0.0: anyone who reaches this port can use the model" in " ".join(err.split())
