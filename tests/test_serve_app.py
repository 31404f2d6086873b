"""The application every served model shares (``serve.app``, ``serve.http``, ``serve.running``),
tested with a stand-in service (no model): the routes every server has, the token in each of
the ways clients send it, the origin check on HTTP and WebSocket routes alike, bounded bodies in
OpenAI's error shape, the services' start and stop, and a failing route that leaves one plain
log line and no traceback."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from moshikit import serve
from moshikit.errors import UsageError

TOKEN = "a-token-of-24-characters"


class Echo:
    """A service with an HTTP route (a bounded body, echoed) and a WebSocket route (one message, echoed)."""

    kind = "stt"

    def __init__(self) -> None:
        self.events: list[str] = []

    def models(self):
        return [{"id": "echo-1"}]

    def routes(self):
        from starlette.routing import Route, WebSocketRoute

        return [Route("/v1/echo", self.echo, methods=["POST"]), Route("/v1/boom", self.boom),
                WebSocketRoute("/api/echo", self.ws)]

    async def start(self, ctx):
        self.events.append("start")

    async def stop(self):
        self.events.append("stop")

    async def echo(self, request):
        from starlette.responses import Response

        from moshikit.serve.http import HTTPProblem, read_body

        try:
            return Response(await read_body(request, 100))
        except HTTPProblem as problem:
            return problem.as_response()

    async def boom(self, request):
        raise RuntimeError("boom\nTraceback (most recent call last): a client's text")

    async def ws(self, websocket):
        await websocket.accept()
        await websocket.send_bytes(await websocket.receive_bytes())
        await websocket.close()


@pytest.fixture
def running():
    logs: list[str] = []
    service = Echo()
    cfg = serve.ServeConfig(port=0, token=TOKEN)
    with serve.RunningServer(serve.ServerApp([service], cfg, log=logs.append)) as r:
        yield r, service, logs
    assert service.events == ["start", "stop"]


def _http(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _ws(url, headers=None):
    """(messages received, close code) of a WebSocket that sends b"hi"."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    got = []
    with connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
        try:
            ws.send(b"hi")
        except ConnectionClosed:  # a refused socket may be closed already: what it said is still read
            pass
        try:
            while True:
                got.append(ws.recv(timeout=10))
        except ConnectionClosed:
            pass
        return got, ws.close_code


def test_every_server_lists_its_models_and_routes(running):
    r, _, _ = running
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, _, body = _http(r.base + "/api/info", headers=auth)
    info = json.loads(body)
    assert status == 200 and info["server"] == "moshikit serve" and info["services"] == [{"id": "echo-1", "kind": "stt"}]
    models = json.loads(_http(r.base + "/v1/models", headers=auth)[2])
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["echo-1"]
    assert all(m["object"] == "model" for m in models["data"])
    front = _http(r.base + "/", headers=auth)[2].decode()
    assert "stt (echo-1)" in front  # no chat model: no chat page, a line saying what is served


@pytest.mark.parametrize("how", ["bearer", "query", "kyutai-api-key", "auth_id"])
def test_the_token_in_each_way_clients_send_it(running, how):
    r, _, logs = running
    headers = {"bearer": {"Authorization": f"Bearer {TOKEN}"}, "kyutai-api-key": {"kyutai-api-key": TOKEN}}.get(how, {})
    query = {"query": f"?token={TOKEN}", "auth_id": f"?auth_id={TOKEN}"}.get(how, "")
    assert _http(r.base + "/v1/echo" + query, b"ok", headers)[::2] == (200, b"ok")
    ws = r.base.replace("http://", "ws://") + "/api/echo" + query
    assert _ws(ws, headers) == ([b"hi"], 1000)
    assert not any("refused" in line for line in logs)


def test_no_token_or_a_wrong_one_is_refused_on_every_route(running):
    r, _, logs = running
    assert _http(r.base + "/v1/echo", b"ok")[0] == 401
    assert _http(r.base + "/api/info", headers={"kyutai-api-key": TOKEN[:-1] + "x"})[0] == 401
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:  # as moshi-server: 401 before the upgrade (Kyutai's clients)
        _ws(r.base.replace("http://", "ws://") + "/api/echo")
    assert refused.value.response.status_code == 401 and b"unauthorized" in refused.value.response.body
    assert [line.split(":")[1].strip() for line in logs if line.startswith("refused")] == \
        ["no token", "wrong token", "no token"]


def test_pages_of_other_sites_are_refused_on_http_and_websocket_routes(running):
    from websockets.exceptions import InvalidStatus

    r, _, logs = running
    evil = {"Origin": "https://evil.example", "Authorization": f"Bearer {TOKEN}"}
    assert _http(r.base + "/v1/echo", b"ok", evil)[0] == 403
    with pytest.raises(InvalidStatus) as refused:
        _ws(r.base.replace("http://", "ws://") + "/api/echo", evil)
    assert refused.value.response.status_code == 403
    own = dict(evil, Origin=r.base.replace("127.0.0.1", "localhost"))
    assert _http(r.base + "/v1/echo", b"ok", own)[::2] == (200, b"ok")
    assert sum("is not this server's" in line for line in logs) == 2


def test_a_body_past_the_limit_gets_openai_s_error_object(running):
    r, _, _ = running
    status, _, body = _http(r.base + "/v1/echo", bytes(101), {"Authorization": f"Bearer {TOKEN}"})
    err = json.loads(body)["error"]
    assert status == 413 and err["code"] == "too_large" and err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}


def test_a_failing_route_leaves_one_plain_line_and_no_traceback(running):
    r, _, logs = running
    status, _, body = _http(r.base + "/v1/boom", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 500 and b"Traceback" not in body and b"boom" not in body
    deadline = time.monotonic() + 5  # uvicorn logs the failure after it has answered
    while not any("RuntimeError" in line for line in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in logs if "RuntimeError" in line]
    assert len(lines) == 1 and "boom" in lines[0] and "\n" not in lines[0] and "Traceback" not in lines[0]


def test_a_server_needs_one_model_of_each_kind():
    with pytest.raises(UsageError, match="nothing to serve"):
        serve.ServerApp([])
    with pytest.raises(UsageError, match="one model of each kind"):
        serve.ServerApp([Echo(), Echo()])
