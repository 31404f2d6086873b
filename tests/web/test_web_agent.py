"""The page's agent mode in a real browser (Debian's chromium, headless, playwright): `serve --agent`
with synthetic STT and TTS and the scripted LLM server, a fake microphone looping 1.2 s of speech and
4 s of silence. The page learns from /api/info that /api/chat is the agent, shows the user's words and
the agent's apart, line by line, the LLM's name and the turn's latency, and plays the agent's voice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moshikit.agent.llm import ChatClient
from moshikit.agent.turns import TurnOptions
from moshikit.testing.llm_server import ScriptedLLM

from test_web_page import PHONE, chromium, wait_state

SR = 24000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mic_wav(speech, tmp_path_factory) -> Path:
    import soundfile as sf
    import soxr

    pcm = np.concatenate([speech[:int(1.2 * SR)], np.zeros(4 * SR, np.float32)])
    path = tmp_path_factory.mktemp("mic") / "turn48k.wav"
    sf.write(path, soxr.resample(pcm, SR, 48000), 48000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(mic_wav):
    yield from chromium(mic_wav)


@pytest.mark.slow  # ~40 s on 2 busy cores
def test_the_page_talks_with_the_agent(browser, mimi_weights, tts_model):
    from moshikit import serve, stt
    from moshikit.serve.agent import AgentServer
    from moshikit.synthetic.stt import write_stt_repo
    from moshikit.tts.engine import Settings

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        repo = write_stt_repo(Path(tmp) / "random", kind="random", mimi_path=mimi_weights)
        stt_model = stt.load_stt(str(repo), backend="torch", device="cpu")
    with ScriptedLLM("Hi there.", tokens_per_second=50) as llm:
        agent = AgentServer(stt_model, tts_model, [tts_model.resolve_voice(None)],
                            Settings(seed=1, temp=tts_model.default_temp, max_steps=20),
                            ChatClient(llm.url, "scripted", timeout=10), TurnOptions(silence=0.8),
                            serve.ServeConfig(port=0, idle_timeout=10))
        with serve.RunningServer(serve.ServerApp([agent], agent.cfg)) as running:
            ctx = browser.new_context(permissions=["microphone"], viewport=PHONE)
            page = ctx.new_page()
            page.goto(running.base + "/?autoconnect=1")
            wait_state(page, "live")
            assert page.title() == "moshikit agent" and page.inner_text("h1") == "Agent"
            assert "LLM scripted" in page.inner_text("#agent-info")
            page.wait_for_function("window.moshi.stats.turns >= 1 && window.moshi.stats.peakOut > 1e-3",
                                   timeout=90_000)
            lines = page.eval_on_selector_all("#transcript p", "ps => ps.map(p => [p.dataset.who, p.textContent])")
            page.wait_for_function(r"/^\d+\.\d\d s$/.test(document.getElementById('latency').textContent)",
                                   timeout=5_000)  # the turn's latency, end of speech -> first audio
            page.click("#connect")
            wait_state(page, "closed")
            ctx.close()
        requests = llm.requests
    # The user's words, then the agent's (the scripted reply, as the LLM streamed it), each on its line.
    who = [w for w, _ in lines]
    assert who[:2] == ["you", "agent"] and lines[1][1] == "Agent: Hi there."
    said = " ".join(lines[0][1].removeprefix("You: ").split())
    asked = " ".join(requests[0]["messages"][-1]["content"].split())
    assert asked and said.startswith(asked)  # what the page showed is what the LLM received
