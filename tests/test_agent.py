"""moshikit agent: the LLM client against the scripted OpenAI-compatible server (and the real
``openai`` client against that server), history truncation, and the offline pipeline with
synthetic STT and TTS: two turns, a barge-in, LLM failures that the next turn survives.

Synthetic STT has random pause heads (no meaningful end of turn), so the pipeline tests end
turns by voice activity (``TurnOptions(silence=...)``, the fallback for models without pause
heads). The STT's words are garbage; the tests check that what it produced reaches the server.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from moshikit.agent.llm import Cancelled, ChatClient, LLMError
from moshikit.agent.turns import History, TurnOptions
from moshikit.synthetic.llm_server import ScriptedLLM

SR = 24000


# ---------------------------------------------------------------- the client and the server


def test_client_streams_the_scripted_reply_and_the_server_records_the_request():
    with ScriptedLLM("Hello there, how are you?", tokens_per_second=100) as server:
        client = ChatClient(server.url, "scripted")
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        assert list(client.stream(messages)) == ["Hello", " there,", " how", " are", " you?"]
        assert server.requests == [{"model": "scripted", "messages": messages, "stream": True}]
        assert server.settle(finished=1) == (1, 0)


def test_the_openai_client_reads_the_scripted_server():
    openai = pytest.importorskip("openai")
    with ScriptedLLM("One two three.", tokens_per_second=100) as server:
        api = openai.OpenAI(base_url=server.url, api_key="unused")
        stream = api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "q"}],
                                             stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "One two three."


@pytest.mark.parametrize("fault, said", [
    ("500", "answered HTTP 500 Internal Server Error: scripted failure"),
    ("404", "has no model 'scripted' (HTTP 404: The model `scripted` does not exist.)"),
    ("hang", "stopped sending for 0.3 s (after 0 pieces)"),
    ("drop", "the reply broke off after 2 pieces (no [DONE])"),
])
def test_failures_are_one_line(fault, said):
    with ScriptedLLM("a b c d e f", tokens_per_second=100) as server:
        server.fail_next(fault)
        client = ChatClient(server.url, "scripted", timeout=0.3)
        with pytest.raises(LLMError) as err:
            list(client.stream([{"role": "user", "content": "x"}]))
        assert said in str(err.value) and "\n" not in str(err.value)
        assert list(client.stream([{"role": "user", "content": "x"}]))  # the next request works


def test_unreachable_server_and_unknown_model():
    with pytest.raises(LLMError, match=r"cannot reach the LLM server at http://127.0.0.1:9/v1 \(connection refused\)"):
        list(ChatClient("http://127.0.0.1:9/v1", "m").stream([]))
    with ScriptedLLM() as server, pytest.raises(LLMError, match="has no model 'llama9'") as err:
        list(ChatClient(server.url, "llama9").stream([]))
    assert "ollama list" in err.value.hint


def test_cancel_stops_the_stream_and_the_server_sees_it():
    with ScriptedLLM(" ".join(["word"] * 50), tokens_per_second=20) as server:
        reply = ChatClient(server.url, "scripted").stream([{"role": "user", "content": "x"}])
        got = []
        threading.Timer(0.2, reply.cancel).start()
        started = time.perf_counter()
        with pytest.raises(Cancelled):
            for piece in reply:
                got.append(piece)
        assert time.perf_counter() - started < 1.0  # not the 2.5 s the whole reply takes
        assert 1 <= len(got) < 50
        assert server.settle(cancelled=1) == (0, 1)


def test_history_drops_the_oldest_turns_to_fit():
    h = History("sys", max_chars=3 + 25)
    for i in range(5):
        h.add("user", f"question {i}")  # 10 characters
        h.add("assistant", f"answer {i}")  # 8 characters
    msgs = h.messages()
    assert msgs[0] == {"role": "system", "content": "sys"}
    # The newest that fit 25 characters ("answer 3" would make 26), starting on a user turn.
    assert [m["content"] for m in msgs[1:]] == ["question 4", "answer 4"]
    h.add("user", "x" * 100)  # the newest message always goes, whatever its size
    assert [m["content"] for m in h.messages()[1:]] == ["x" * 100]


# ---------------------------------------------------------------- the pipeline




@pytest.fixture(scope="module")
def stt_model(tmp_path_factory, mimi_weights):
    from moshikit import stt
    from moshikit.synthetic.stt import write_stt_repo

    repo = write_stt_repo(tmp_path_factory.mktemp("stt") / "random", kind="random", mimi_path=mimi_weights)
    return stt.load_stt(str(repo), backend="torch", device="cpu")


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SR)), np.float32)


def run_agent(stt_model, tts_model, server, pcm, *, timeout=30.0, max_steps=20, pieces=None, **kw):
    from moshikit.agent.offline import OfflineAgent
    from moshikit.tts.engine import Settings

    agent = OfflineAgent(stt_model, tts_model, [tts_model.resolve_voice(None)],
                         Settings(seed=1, temp=tts_model.default_temp, max_steps=max_steps),
                         ChatClient(server.url, "scripted", timeout=timeout), TurnOptions(silence=0.8),
                         on_text=None if pieces is None else pieces.append, **kw)
    return agent.run(pcm)


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.usefixtures("one_torch_thread")
def test_two_turns_give_a_reply_wav_and_turns_with_latencies(stt_model, tts_model, speech, tmp_path):
    from moshikit.agent.offline import write_outputs

    utt = speech[:int(1.2 * SR)]
    pcm = np.concatenate([silence(0.32), utt, silence(6.0), utt, silence(1.2)])
    pieces: list[str] = []
    with ScriptedLLM(["Hi there.", "Fine, thanks."], tokens_per_second=50) as server:
        result = run_agent(stt_model, tts_model, server, pcm, pieces=pieces, system="Be brief.")
        requests = server.requests
    assert [t.status for t in result.turns] == ["done", "done"]
    t1, t2 = result.turns
    # What the STT produced (captured from its own text stream) reached the server, turn by turn,
    # with the system prompt and the history of the first exchange.
    heard = words("".join(pieces))
    assert t1.user and t2.user and heard.index(words(t1.user)) < heard.index(words(t2.user))
    assert requests[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": t1.user}]
    assert requests[1]["messages"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": t1.user},
                                       {"role": "assistant", "content": "Hi there."},
                                       {"role": "user", "content": t2.user}]
    assert (t1.agent, t2.agent) == ("Hi there.", "Fine, thanks.")
    # Turns end 0.8 s after the voice (frame times: the clip spans frames 4..18, 94..108).
    assert (t1.speech_start, t1.speech_end, t1.end_of_turn) == pytest.approx((0.32, 1.52, 2.32))
    assert t2.speech_end == pytest.approx(0.32 + 1.2 + 6.0 + 1.2, abs=0.08)
    for t in result.turns:
        lat = t.latency()
        assert lat["end_of_speech_to_end_of_turn"] == pytest.approx(0.8)
        assert 0 <= lat["end_of_turn_to_first_token"] < 2.0
        assert 0 < lat["first_token_to_first_audio"] < 5.0
        assert lat["end_of_speech_to_first_audio"] == pytest.approx(
            sum(lat[k] for k in ("end_of_speech_to_end_of_turn", "end_of_turn_to_first_token",
                                 "first_token_to_first_audio")), abs=0.005)
        assert t.end_of_turn < t.first_token < t.audio_start < t.audio_end
    summary = write_outputs(result, str(tmp_path / "reply.wav"), str(tmp_path / "turns.json"), {"input": "x"})
    import json

    assert json.loads((tmp_path / "turns.json").read_text())["turns"] == summary["turns"]
    assert summary["turns"][0]["latency"]["end_of_speech_to_end_of_turn"] == pytest.approx(0.8)
    import soundfile as sf

    wav, rate = sf.read(tmp_path / "reply.wav", dtype="float32", always_2d=True)
    wav = wav.T
    assert rate == SR
    assert wav.shape[0] == 2 and wav.shape[1] >= pcm.size
    # Left: the user, as given (16-bit PCM: within one step). Right: the agent, only in its turns.
    assert np.abs(wav[0, :pcm.size] - pcm).max() <= 1 / 32768 + 1e-6
    agent = wav[1]
    for t in result.turns:
        a, b = int(t.audio_start * SR), int(t.audio_end * SR)
        assert np.abs(agent[a:b]).max() > 0.001
    assert not agent[:int(t1.audio_start * SR)].any()
    assert not agent[int(t1.audio_end * SR) + 1:int(t2.audio_start * SR)].any()


@pytest.mark.usefixtures("one_torch_thread")
def test_barge_in_cuts_the_audio_and_cancels_the_request(stt_model, tts_model, speech):
    utt = speech[:int(1.2 * SR)]
    second = 0.32 + 1.2 + 3.2  # the user speaks again while the reply still streams (5 s of tokens)
    pcm = np.concatenate([silence(0.32), utt, silence(3.2), utt, silence(1.2)])
    long_reply = " ".join(f"word{i}" for i in range(20)) + "."
    with ScriptedLLM([long_reply, "Okay."], tokens_per_second=4) as server:
        result = run_agent(stt_model, tts_model, server, pcm, max_steps=80)
        _, cancelled = server.settle(cancelled=1)
        requests = server.requests
    t1, t2 = result.turns
    assert t1.audio_start is not None and t1.audio_start < second  # the agent was speaking
    assert t1.status == "interrupted" and t1.request_cancelled and cancelled == 1
    # Cut within 200 ms of the user's voice on the timeline (two 80 ms frames of voice).
    assert second <= t1.interrupted_at <= second + 0.2
    # The audio stops at the cut; it may have stopped a frame or two before it where the TTS ran
    # behind the timeline's wall time (a slow or loaded CPU: 34 ms seen on an AMD Zen 3).
    assert t1.interrupted_at - 0.16 <= t1.audio_end <= t1.interrupted_at + 1e-9
    agent = result.agent
    assert np.abs(agent[int(t1.audio_start * SR):int(t1.interrupted_at * SR)]).max() > 0.001
    assert not agent[int(t1.interrupted_at * SR):int(t2.audio_start * SR)].any()
    # What the user heard stays in the history: part of the reply, not all of it.
    assert t1.heard and long_reply.startswith(t1.heard) and len(t1.heard) < len(long_reply)
    assert requests[1]["messages"][-2:] == [{"role": "assistant", "content": t1.heard},
                                            {"role": "user", "content": t2.user}]
    assert t2.status == "done" and t2.agent == "Okay."


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("fault", ["500", "404", "hang"])
def test_an_llm_failure_is_one_line_and_the_next_turn_retries(stt_model, tts_model, speech, fault):
    utt = speech[:int(0.8 * SR)]
    pcm = np.concatenate([silence(0.32), utt, silence(1.5), utt, silence(1.2)])
    errors: list[str] = []
    with ScriptedLLM(["Yes."], tokens_per_second=50) as server:
        server.fail_next(fault)
        result = run_agent(stt_model, tts_model, server, pcm, timeout=0.5, max_steps=20, on_error=errors.append)
        requests = server.requests
    t1, t2 = result.turns
    assert t1.status == "error" and t1.audio_start is None and not t1.agent
    assert len(errors) == 1 and errors[0] == t1.error and "\n" not in errors[0]
    assert {"500": "HTTP 500", "404": "has no model", "hang": "stopped sending for 0.5 s"}[fault] in errors[0]
    assert t2.status == "done" and t2.agent == "Yes." and t2.audio_start is not None
    # The failed turn's words stay in the history; the retry carries them.
    assert [m["content"] for m in requests[1]["messages"]] == [t1.user, t2.user]


# ---------------------------------------------------------------- the command


def run_cli(capsys, *args):
    from moshikit.cli.app import main

    code = main(["agent", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_needs_a_model_and_a_free_output(capsys, tmp_path):
    code, _, err = run_cli(capsys, "-i", "x.wav")
    assert code == 2 and "--llm-model NAME" in err and "Traceback" not in err
    (tmp_path / "o.wav").write_bytes(b"x")
    code, _, err = run_cli(capsys, "-i", "x.wav", "--llm-model", "m", "-o", str(tmp_path / "o.wav"))
    assert code == 2 and "exists" in err


@pytest.mark.usefixtures("one_torch_thread")
def test_the_pause_head_ends_the_turn_and_the_words_reach_the_llm(tmp_path_factory, mimi_weights, tts_model,
                                                                   speech):
    """A scripted stt-1b (moshikit.synthetic.stt): "good sea" at 0.54-1.18 s, its pause head on from
    1.58 s (step 26). The turn ends on the pause head (not the 0.8 s silence fallback, which would be later),
    and exactly those words reach the LLM."""
    from moshikit import stt
    from moshikit.agent.offline import OfflineAgent
    from moshikit.synthetic.stt import write_stt_repo
    from moshikit.tts.engine import Settings

    good, s, ea = 35, 8, 21  # pieces of the tiny tokenizer ("▁good", "▁s", "ea"), as tests/test_stt.py
    # Model steps (audio time = step / 12.5 - 0.5 s): "good" from 0.54 s, "sea" from 1.1 s.
    spoken = [(12, 0), (13, good), (14, 2), (19, s), (20, ea), (21, 1)]
    repo = write_stt_repo(tmp_path_factory.mktemp("stt") / "scripted", kind="scripted", mimi_path=mimi_weights,
                          script=spoken, pause_from=26)
    model = stt.load_stt(str(repo), backend="torch", device="cpu")
    pcm = np.concatenate([silence(0.32), speech[:int(1.2 * SR)], silence(2.0)])
    with ScriptedLLM("Yes.", tokens_per_second=50) as server:
        agent = OfflineAgent(model, tts_model, [tts_model.resolve_voice(None)],
                             Settings(seed=1, temp=tts_model.default_temp, max_steps=20),
                             ChatClient(server.url, "scripted"), TurnOptions())
        assert agent.mode == "pause"
        result = agent.run(pcm)
        requests = server.requests
    (turn,) = result.turns
    assert turn.by == "pause" and turn.user == "good sea"
    # Step 26 (1.58 s of audio + the 0.5 s delay) is stepped with frame 26; the next frame sees it.
    assert turn.end_of_turn == pytest.approx(27 * 0.08)
    assert requests[0]["messages"] == [{"role": "user", "content": "good sea"}]
    assert turn.status == "done" and turn.audio_start is not None


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_turns_fail_one_line_each_when_the_llm_is_unreachable(capsys, tmp_path, mimi_weights, speech, write_wav):
    """The whole command on synthetic models: every turn's request fails (nothing listens on the
    port), each is one line, the files are still written, and the exit status says no turn was answered."""
    import json

    utt = speech[:int(0.8 * SR)]
    wav = write_wav(tmp_path / "q.wav", np.concatenate([silence(0.32), utt, silence(1.5), utt, silence(1.2)]))
    code, out, err = run_cli(capsys, "-i", str(wav), "-o", str(tmp_path / "r.wav"), "-t", str(tmp_path / "t.json"),
                             "--stt", "synthetic", "--tts", "synthetic", "--llm-url", "http://127.0.0.1:9/v1",
                             "--llm-model", "m", "--turn-silence", "0.8", "--json")
    assert code == 1 and "Traceback" not in err
    lines = [x for x in err.splitlines() if "cannot reach the LLM server at http://127.0.0.1:9/v1" in x]
    assert len(lines) == 2
    summary = json.loads(out)
    assert [t["status"] for t in summary["turns"]] == ["error", "error"]
    assert summary["turn_taking"] == "silence" and summary["channels"] == {"left": "user", "right": "agent"}
    assert json.loads((tmp_path / "t.json").read_text())["turns"] == summary["turns"]
    assert (tmp_path / "r.wav").exists()
