"""``serve --agent``: the agent on /api/chat in Moshi's wire protocol, with synthetic STT and TTS and
the scripted LLM server. A bare wire-protocol client sends a synthetic utterance as Ogg Opus (at
twice real time, then silence, as a microphone keeps sending) and gets back the handshake, the
agent's speech as Ogg Opus and the scripted LLM's text; with ``?events=1`` also the user's words
and the turn. The server is one session at a time (a second client is refused as chat refuses it)
and the Gate's token applies.

Synthetic STT has random pause heads, so turns end by voice activity (``TurnOptions(silence=...)``);
its words are garbage: the test checks that what the client was told it said reached the LLM.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from test_agent import stt_model  # noqa: F401 - the fixture
from test_serve import close_code

from moshikit import remote, serve, wire
from moshikit.agent.llm import ChatClient
from moshikit.agent.turns import TurnOptions
from moshikit.errors import RemoteError
from moshikit.testing.llm_server import ScriptedLLM

SR = 24000
F = wire.FRAME
TOKEN = "a-token-of-24-characters"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def start(stt_model, tts_model, llm, **cfg):
    from moshikit.serve.agent import AgentServer
    from moshikit.tts.engine import Settings

    agent = AgentServer(stt_model, tts_model, [tts_model.resolve_voice(None)],
                        Settings(seed=1, temp=tts_model.default_temp, max_steps=20),
                        ChatClient(llm.url, "scripted", timeout=10), TurnOptions(silence=0.8),
                        serve.ServeConfig(port=0, **cfg), system="Be brief.")
    logs: list[str] = []
    app = serve.ServerApp([agent], agent.cfg, log=logs.append)
    return serve.RunningServer(app), agent, logs


async def talk(url: str, pcm: np.ndarray, *, until_text: str, timeout: float = 40.0):
    """Sends ``pcm`` then silence as Ogg Opus (80 ms frames every 40 ms) until ``until_text`` came back
    and the agent's audio followed it; returns (handshake, audio, texts, events)."""
    import aiohttp
    import sphn

    writer, reader = sphn.OpusStreamWriter(SR), sphn.OpusStreamReader(SR)
    audio, texts, events = [], [], []
    async with aiohttp.ClientSession() as session:
        # A server that stopped reading (its input queue full: back-pressure) answers a close late.
        async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=1.0)) as ws:
            hello = await asyncio.wait_for(ws.receive_bytes(), 10)

            async def send():
                i = 0
                while True:
                    block = pcm[i:i + F] if i < pcm.size else np.zeros(F, np.float32)
                    block = np.pad(block, (0, F - block.size))
                    await ws.send_bytes(b"\x01" + writer.append_pcm(block))
                    i += F
                    await asyncio.sleep(0.04)

            sender = asyncio.ensure_future(send())
            deadline = time.monotonic() + timeout
            loud_after_text = 0
            try:
                while time.monotonic() < deadline:
                    m = await asyncio.wait_for(ws.receive(), 10)
                    if m.type != aiohttp.WSMsgType.BINARY:
                        raise AssertionError(f"the server closed the session: {m.type} {m.data!r}")
                    msg = m.data
                    if msg[0] == 1:
                        chunk = reader.append_bytes(msg[1:])
                        audio.append(chunk)
                        if "".join(texts) == until_text and chunk.size and np.abs(chunk).max() > 0.001:
                            loud_after_text += chunk.size
                    elif msg[0] == 2:
                        texts.append(msg[1:].decode())
                    elif msg[0] == 4:
                        events.append(json.loads(msg[1:]))
                    if loud_after_text >= 2 * F and any("turn" in e for e in events):
                        break
            finally:
                sender.cancel()
    return hello, np.concatenate(audio) if audio else np.zeros(0, np.float32), texts, events


def test_the_agent_answers_in_moshi_s_protocol(stt_model, tts_model, speech):
    utt = speech[:int(1.2 * SR)]
    pcm = np.concatenate([np.zeros(int(0.32 * SR), np.float32), utt])
    with ScriptedLLM("Hi there, nice to hear you.", tokens_per_second=50) as llm:
        running, agent, logs = start(stt_model, tts_model, llm)
        try:
            info = json.loads(_get(running.base + "/api/info"))
            (model,) = info["services"]
            assert model["kind"] == "chat" and model["mode"] == "agent" and model["llm"] == "scripted"
            assert model["route"] == "/api/chat" and model["protocol"] == "moshi"
            assert [m["id"] for m in json.loads(_get(running.base + "/v1/models"))["data"]] == ["agent"]
            hello, audio, texts, events = asyncio.run(talk(running.url + "?events=1", pcm,
                                                           until_text="Hi there, nice to hear you."))
            _wait_idle(agent)
        finally:
            running.stop()
        requests = llm.requests
    assert hello == b"\x00"
    # The LLM's text came as Moshi's text pieces, as it streamed (one per token).
    assert texts == ["Hi", " there,", " nice", " to", " hear", " you."]
    # The user's words, as the client was told them, are what the LLM received, after the system prompt.
    heard = "".join(e["user"] for e in events if "user" in e)
    (turn,) = [e["turn"] for e in events if "turn" in e]
    assert turn["user"] and " ".join(heard.split()).startswith(" ".join(turn["user"].split()))
    assert requests[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": turn["user"]}]
    assert turn["status"] == "done" and turn["agent"] == "Hi there, nice to hear you." and turn["by"] == "silence"
    assert turn["latency"]["end_of_speech_to_end_of_turn"] == pytest.approx(0.8)
    assert turn["latency"]["end_of_speech_to_first_audio"] > 0
    # The agent's speech came back as Ogg Opus: silence while the user spoke, then the voice
    # (the synthetic TTS speaks well above Opus's noise floor).
    # The turn cannot end before the client has sent 0.32 + 1.2 + 0.8 s of audio, which it sends at
    # twice real time (1.16 s of wall time); the server sends a frame every 80 ms from the start, so
    # at least its first 14 frames are silence whatever the machine's speed (0.8 s checked).
    assert audio.size > SR and np.abs(audio[:int(0.8 * SR)]).max() < 0.001
    assert np.abs(audio).max() > 0.01
    assert agent.ctx.stats["sessions"] == 1 and agent.ctx.stats["agent_turns"] == 1
    assert any("agent session from 127.0.0.1 ended" in line for line in logs)


def test_one_session_at_a_time_and_the_token(stt_model, tts_model):
    with ScriptedLLM("Yes.") as llm:
        running, agent, logs = start(stt_model, tts_model, llm, token=TOKEN)
        try:
            # No token: refused in the protocol (an error message, then 1008), before any session starts.
            with pytest.raises(RemoteError, match="unauthorized"):
                remote.connect(running.url, timeout=5)
            assert agent.ctx.stats["sessions"] == 0 and agent.ctx.stats["refused_token"] >= 1
            first = remote.connect(running.url + f"?token={TOKEN}", timeout=10)
            try:
                with pytest.raises(RemoteError, match="refused the session: busy"):
                    remote.connect(running.url + f"?token={TOKEN}", timeout=5)
                assert asyncio.run(close_code(running.url + f"?token={TOKEN}")) == 1013
                assert agent.ctx.stats["refused"] == 2
            finally:
                first.close()
            _wait_idle(agent)  # free again once the first client left and its worker stopped
            remote.connect(running.url + f"?token={TOKEN}", timeout=10).close()
            _wait_idle(agent)
        finally:
            running.stop()
    assert agent.ctx.stats["sessions"] == 2


def test_an_idle_client_is_closed_and_frees_the_agent(stt_model, tts_model):
    with ScriptedLLM("Yes.") as llm:
        running, agent, logs = start(stt_model, tts_model, llm, idle_timeout=0.5)
        try:
            assert asyncio.run(close_code(running.url)) == 1000
            _wait_idle(agent)
        finally:
            running.stop()
    assert any("no audio for 0.5 s" in line for line in logs)


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _wait_idle(agent, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while agent.session is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.session is None


@pytest.mark.parametrize("args, said", [
    (["--agent", "--chat", "synthetic", "--llm-model", "m"], "--agent and --chat both answer on /api/chat"),
    (["--agent"], "give --llm-model NAME"),
    (["--agent", "--llm-model", "m", "--ray"], "--agent serves from this machine"),
    (["--agent", "--llm-model", "m", "--batch", "2"], "the agent serves one session at a time"),
])
def test_serve_agent_refuses_what_cannot_be_in_one_line(capsys, args, said):
    from moshikit.cli.app import main

    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
