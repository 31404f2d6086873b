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
TOKEN = "s3cret-token-0123456789"

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
    assert access.token_for("127.0.0.1", token="given-0123456789") == "given-0123456789"
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
    # A session of an earlier test in this module may log its end late (the server logs it after the
    # socket closes): that line is not ours; that no session started here is checked just above.
    refusals = [line for line in logs[before:] if not line.startswith("session from")]
    assert len(refusals) == 7 and all(line.startswith("refused 127.0.0.1") for line in refusals), refusals
    assert "no token" in refusals[0] and "wrong token" in refusals[1]
    # every path is guarded alike, however it is spelled (the page's scripts too: the page sets a cookie)
    for path in ("/app.js", "/./index.html", "/index.html/", "//index.html", "/%2e/index.html", "/api/info",
                 "/api/../index.html"):
        assert _http(base + path)[0] == 401, path


def test_right_token_serves_page_and_chat(guarded, speech):
    url, server, _ = guarded
    base = url.replace("ws://", "http://").removesuffix("/api/chat")
    status, page = _http(base + f"/?token={TOKEN}")
    assert status == 200 and b'id="transcript"' in page
    assert _http(base + "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert asyncio.run(_ws(url, {"Authorization": f"Bearer {TOKEN}"})) == (None, [b"\x00"])
    out, transcript = remote.chat_file(url + f"?token={TOKEN}", speech[: 8 * F], tail_seconds=0.0, quiet_seconds=1.0)
    assert np.count_nonzero(out) > 5 * F and transcript


def test_every_file_of_a_static_client_needs_the_token(conv, tmp_path):
    """--static (another web client): each of its files is guarded, not only index.html; the page
    opened with the token sets a cookie (HttpOnly, SameSite=Strict, this port's) that its files
    then load with."""
    from moshikit import serve

    site = tmp_path / "dist"
    (site / "assets").mkdir(parents=True)
    (site / "index.html").write_text("<html>moshi web client</html>")
    (site / "assets" / "app.js").write_text("console.log(1)")
    server = serve.ChatServer(conv, serve.ServeConfig(port=0, static=str(site), token=TOKEN))
    with serve.RunningServer(server) as running:
        base = running.url.replace("ws://", "http://").removesuffix("/api/chat")
        port = int(base.rsplit(":", 1)[1])
        for path in ("/assets/app.js", "/assets/../assets/app.js", "/assets//app.js", "/index.html", "/"):
            assert _http(base + path)[0] == 401, path
        with urllib.request.urlopen(base + f"/?token={TOKEN}", timeout=5) as r:
            assert r.read() == b"<html>moshi web client</html>"
            cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(f"moshikit_token_{port}={TOKEN};") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie and "Path=/" in cookie
        assert _http(base + "/assets/app.js", {"Cookie": f"moshikit_token_{port}={TOKEN}"}) == (200, b"console.log(1)")
        assert _http(base + "/assets/app.js", {"Cookie": f"moshikit_token_{port + 1}={TOKEN}"})[0] == 401
        assert _http(base + "/assets/app.js", {"Cookie": f"moshikit_token_{port}=wrong"})[0] == 401


def test_a_short_token_is_refused(conv):
    from moshikit import serve
    from moshikit.errors import UsageError

    with pytest.raises(UsageError, match="at least 16 characters"):
        serve.ChatServer(conv, serve.ServeConfig(port=0, token="a"))


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


def test_token_rules_on_the_command_line(fake_serve, tmp_path, monkeypatch):
    """A token under 16 characters is refused in one line (however it is given); --token-file
    reads one (a token on the command line is visible to every user through ps)."""
    import io

    from moshikit.cli.app import main
    from moshikit.cli.output import Env

    def run(*argv):
        env = Env(stdout=io.StringIO(), stderr=io.StringIO())
        return main(list(argv), env), env.stdout.getvalue(), " ".join(env.stderr.getvalue().split())

    monkeypatch.setenv("MOSHIKIT_SERVE_TOKEN", "a")
    code, out, err = run("serve", "--host", "0.0.0.0")
    assert code == 2 and "a token needs at least 16 characters (this one has 1)" in err and "Traceback" not in err
    assert "config" not in fake_serve  # refused before the model loads
    monkeypatch.delenv("MOSHIKIT_SERVE_TOKEN")
    assert run("serve", "--token", "short-token")[0] == 2
    secret = tmp_path / "token"
    secret.write_text("file-token-0123456789abcdef\n")
    code, out, err = run("serve", "--host", "0.0.0.0", "--token-file", str(secret))
    assert code == 0, err
    assert fake_serve["config"].token == "file-token-0123456789abcdef" and out.strip().endswith("?token=file-token-0123456789abcdef")
    code, _, err = run("serve", "--token-file", str(tmp_path / "missing"))
    assert code == 2 and "no such file" in err
    code, _, err = run("serve", "--token", "x" * 20, "--token-file", str(secret))
    assert code == 2 and "one at a time" in err
    code, _, err = run("serve", "--allow-origin", "example.org")
    assert code == 2 and "--allow-origin 'example.org': not an origin" in err


# --------------------------------------------------------------------------- origins


async def _ws_full(url: str, headers: dict | None = None) -> tuple[int, int | None, str, list[bytes]]:
    """(HTTP status, close code, close reason, binary messages) of a WebSocket attempt; a session
    that starts (the handshake byte) is closed by the client at once."""
    import aiohttp

    got = []
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, headers=headers or {})
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, None, "", got
        async with ws:
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got.append(msg.data)
                    if msg.data == b"\x00":
                        return 101, None, "", got
                else:
                    return 101, ws.close_code, msg.extra or "", got


@pytest.fixture(scope="module")
def open_server(conv):
    """On loopback, no token: what `moshikit serve` is by default."""
    from moshikit import serve

    logs: list[str] = []
    server = serve.ChatServer(conv, serve.ServeConfig(port=0, allow_origins=("https://friend.example",)),
                              log=logs.append)
    with serve.RunningServer(server) as running:
        yield running.url, server, logs


def test_a_page_from_another_origin_is_refused(open_server, conv):
    url, server, logs = open_server
    port = int(url.split(":")[2].split("/")[0])
    base = url.replace("ws://", "http://").removesuffix("/api/chat")
    before, sessions = len(logs), server.stats["sessions"]
    with Spy(conv) as spy:
        for evil in ("https://evil.example", "null", f"http://localhost:{port + 1}", f"http://127.0.0.1.nip.io:{port}"):
            assert asyncio.run(_ws_full(url, {"Origin": evil}))[0] == 403, evil
        assert spy.steps == 0 and spy.resets == 0
    assert server.stats["sessions"] == sessions
    refusals = logs[before:]
    assert len(refusals) == 4 and all(line.startswith("refused 127.0.0.1 GET /api/chat: a page from")
                                      for line in refusals), refusals
    assert "'https://evil.example' is not this server's" in refusals[0]
    # the server's own pages (every spelling of its address), --allow-origin's and clients without an Origin
    for mine in (f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"https://localhost:{port}",
                 "https://friend.example", None):
        assert asyncio.run(_ws_full(url, {"Origin": mine} if mine else {})) == (101, None, "", [b"\x00"]), mine
        _wait_idle(server)
    # a state-changing request from a foreign page is refused too; reading is not (the browser keeps the answer)
    req = urllib.request.Request(base + "/api/info", method="POST", headers={"Origin": "https://evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 403
    assert _http(base + "/api/info", {"Origin": "https://evil.example"})[0] == 200


def _wait_idle(server, seconds: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while any(s is not None for s in server.slots) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(s is None for s in server.slots)


# --------------------------------------------------------------------------- what clients send, in the log


def test_client_text_is_never_read_as_markup(conv, monkeypatch):
    """`moshikit serve`'s own log (Rich on stderr): a parameter value with markup in it is one
    plain log line and a close 1008 that says what was wrong (not a 500, not a styled line)."""
    import io

    from moshikit import serve as lib
    from moshikit.cli.app import main
    from moshikit.cli.output import Env

    seen = {}
    monkeypatch.setattr(lib, "load_conversation", lambda *a, **k: conv)

    def serve_forever(server, ready, ssl_ctx=None):
        with lib.RunningServer(server) as running:
            ready(running.url)
            token = "?token=0123456789abcdef-token&"
            seen["markup"] = asyncio.run(_ws_full(running.url + token + "text_temperature=[/x]"))
            seen["styled"] = asyncio.run(_ws_full(running.url + token + "audio_topk=[bold red]1[/bold red]"))
            seen["path"] = _http(running.url.replace("ws://", "http://").removesuffix("/api/chat") +
                                 "/[bold%20red]x%1b[31m")

    monkeypatch.setattr(lib, "serve_forever", serve_forever)
    env = Env(stdout=io.StringIO(), stderr=io.StringIO())
    assert main(["serve", "--port", "0", "--token", "0123456789abcdef-token"], env) == 0
    err = env.stderr.getvalue()
    assert "Traceback" not in err and "MarkupError" not in err
    assert seen["markup"][:3] == (101, access.CLOSE_REFUSED, "bad parameter: text_temperature='[/x]' is not a number")
    assert seen["markup"][3][-1] == wire.error_message("bad parameter: text_temperature='[/x]' is not a number")
    assert seen["styled"][:3] == (101, 1008, "bad parameter: audio_topk='[bold red]1[/bold red]' is not a number")
    assert seen["path"][0] == 401  # no token: refused, its path logged as text
    lines = [line for line in err.splitlines() if line.startswith("refused")]
    assert lines[:2] == ["refused 127.0.0.1: bad parameter: text_temperature='[/x]' is not a number",
                         "refused 127.0.0.1: bad parameter: audio_topk='[bold red]1[/bold red]' is not a number"], err
    assert lines[2] == "refused 127.0.0.1 /[bold red]x\\x1b[31m: no token" and len(lines) == 3
