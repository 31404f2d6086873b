"""``bench agent``: each turn's latency parts of ``moshikit agent`` over a spoken input, against a
local OpenAI-compatible server that streams a scripted reply at a set token rate, next to its
parts measured alone in the same run.

* The agent (``agent.offline.OfflineAgent``, what ``agent -i`` runs, on the STT and TTS ``agent``
  picks here): per turn, end of speech -> end of turn (the turn rule: the STT's pause prediction,
  or ``--turn-silence``), end of turn -> first LLM token, first token -> first audio, and end of
  speech -> first audio (the sum: what the user waits). Times are on the input's timeline, which
  keeps wall time while the agent answers (see agent/offline.py). p50/p90 over the turns.
* The references, each alone: the scripted server's first token read by a plain HTTP client (the
  LLM's own share of "end of turn -> first token"), and the TTS speaking the same reply with its
  tokens arriving at the same pace through the streaming ``speak`` path, from the first token to
  the first audio (the TTS's own share of "first token -> first audio"). What the agent adds over
  its parts is the difference.

The input: a file of user turns (``input``), or ``turns`` utterances of the bundled speech sample
with enough silence after each for the reply to play out (a turn spoken over the reply would be
a barge-in). One unmeasured turn first warms every part.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np

from .core import PeakMemory, Row, latency_row, load_average

SAMPLE_RATE = 24000
TEXT = ("Sure, here is a short answer: the sea is calm tonight and the wind comes from the west, so the "
        "boats stay in the harbour until the morning tide.")
UTTERANCE = 1.6  # seconds of the speech sample per synthetic user turn
#: The agent's rows: its latency parts (``Turn.latency()``'s keys) and their task names.
PARTS = {"end_of_speech_to_end_of_turn": "end of speech -> end of turn",
         "end_of_turn_to_first_token": "end of turn -> first token",
         "first_token_to_first_audio": "first token -> first audio",
         "end_of_speech_to_first_audio": "end of speech -> first audio"}
AGENT = "moshikit agent"
LLM_REFERENCE = "scripted LLM, plain HTTP client (reference)"
TTS_REFERENCE = "TTS alone: speak --stream at the LLM's pace (reference)"


@dataclass
class AgentPlan:
    stt: str | None = None  # as `agent --stt` (None: the agent's default here)
    tts: str | None = None  # as `agent --tts`
    tts_backend: str | None = None  # as `speak -b` (pocket: Pocket TTS)
    input: str | None = None  # a file of user turns; None: `turns` synthetic utterances
    turns: int = 6
    words: int = 12  # words of each scripted reply
    tokens_per_second: float = 30.0
    first_token_delay: float = 0.0  # seconds the scripted server waits before its first token
    turn_silence: float | None = None  # as `agent --turn-silence`
    device: str | None = None
    reference: bool = True
    max_steps: int | None = None  # a cap on TTS steps (random weights may never end a text)
    notes: list[str] = field(default_factory=list)


def synthetic_input(turns: int, gap: float) -> np.ndarray:
    """``turns`` utterances of the speech sample, 0.32 s of silence before the first and ``gap``
    seconds after each."""
    from ..synthetic.core import speech_sample

    utt = speech_sample()[:int(UTTERANCE * SAMPLE_RATE)]
    quiet = np.zeros(int(round(gap * SAMPLE_RATE)), np.float32)
    return np.concatenate([np.zeros(int(0.32 * SAMPLE_RATE), np.float32)] + [utt, quiet] * turns)


def reply_gap(plan: AgentPlan, silence: float) -> float:
    """Silence after a synthetic turn: the turn rule, the reply's tokens, its speech (~2.5 words a
    second) and a second's margin."""
    return silence + plan.first_token_delay + plan.words / plan.tokens_per_second + plan.words / 2.5 + 1.0


def first_token(url: str, model: str, messages: list[dict]) -> float:
    """Seconds from sending a streamed chat request to its first content piece, read with
    ``http.client`` alone; the connection is closed at that piece."""
    u = urlsplit(url)
    body = json.dumps({"model": model, "messages": messages, "stream": True})
    started = time.perf_counter()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("POST", u.path.rstrip("/") + "/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        while line := response.readline():
            data = line.strip()[5:].strip() if line.startswith(b"data:") else b""
            if data and data != b"[DONE]":
                delta = json.loads(data)["choices"][0].get("delta") or {}
                if delta.get("content"):
                    return time.perf_counter() - started
    finally:
        conn.close()
    from ..errors import MoshikitError

    raise MoshikitError("the scripted LLM server sent no token")


def tts_first_audio(tts, voices: list, settings, text: str, tokens_per_second: float) -> float:
    """Seconds from the first token of ``text`` to the TTS's first audio, its tokens arriving
    ``tokens_per_second`` apart and each word spoken once the space after it came (``speak --stream``)."""
    from ..tts.text import words_as_they_come

    started = time.perf_counter()

    def pieces() -> Iterator[str]:
        for i, token in enumerate(re.findall(r"\s*\S+", text)):  # a word and its space, as the server sends
            if i:
                time.sleep(max(0.0, started + i / tokens_per_second - time.perf_counter()))
            yield token

    got: list[float] = []

    def on_pcm(_pcm) -> None:  # the reply is spoken to its end: a generation stopped from a callback
        got.append(time.perf_counter() - started)  # can leave a backend's own thread running (Pocket TTS)

    failed: list[BaseException] = []

    def speak() -> None:
        try:
            tts.generate(words_as_they_come(pieces()), voices, settings, on_pcm=on_pcm)
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=speak, name="bench-tts")  # as the agent speaks: on a thread of its own
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    if not got:
        from ..errors import MoshikitError

        raise MoshikitError("the TTS spoke no audio for the reference's text")
    return got[0]


class LLMServer:
    """The scripted OpenAI-compatible server (``moshikit.synthetic.llm_server``) in a child process,
    as a local LLM server runs beside the agent; ``url`` once it listens."""

    MODEL = "scripted"

    def __init__(self, reply: str, tokens_per_second: float, first_token_delay: float) -> None:
        cmd = [sys.executable, "-m", "moshikit.synthetic.llm_server", "--reply", reply, "--model", self.MODEL,
               "--tokens-per-second", str(tokens_per_second), "--first-token-delay", str(first_token_delay)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            from ..errors import MoshikitError

            last = (err.strip().splitlines() or ["no output"])[-1]
            raise MoshikitError(f"the scripted LLM server did not start: {last}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_agent(plan: AgentPlan) -> Iterator[Row]:
    from ..agent.llm import ChatClient
    from ..agent.models import load
    from ..agent.offline import OfflineAgent
    from ..agent.turns import DEFAULT_SILENCE, TurnOptions
    from ..tts.engine import Settings

    given = None
    if plan.input is not None:  # read first: a file that is not audio fails before minutes of loading
        from ..audio import read_24k

        given = read_24k(plan.input)[0]
    stt_model, tts = load(plan.stt, plan.tts, plan.device, plan.tts_backend)
    voices = [tts.resolve_voice(None)]
    settings = Settings(seed=0, temp=tts.default_temp, max_steps=plan.max_steps)
    silence = plan.turn_silence
    if silence is None and plan.stt == "synthetic":
        silence = DEFAULT_SILENCE
        plan.notes.append(f"agent: the synthetic STT's pause heads are random: turns end on {silence:g} s of "
                          "silence (--turn-silence)")
    options = TurnOptions(silence=silence)
    text = " ".join(TEXT.split()[:plan.words])
    pcm = given if given is not None else synthetic_input(plan.turns, reply_gap(plan, options.silence_seconds))
    params = dict(words=len(text.split()), tokens_per_second=plan.tokens_per_second,
                  first_token_delay=plan.first_token_delay, stt=stt_model.name, tts=tts.name,
                  stt_backend=stt_model.lm.info.backend, stt_device=str(stt_model.lm.info.device),
                  tts_backend=tts.backend, tts_device=str(tts.describe().get("device")))
    server = LLMServer(text, plan.tokens_per_second, plan.first_token_delay)
    try:
        def agent() -> OfflineAgent:
            return OfflineAgent(stt_model, tts, voices, settings, ChatClient(server.url, LLMServer.MODEL), options)

        warm = synthetic_input(1, reply_gap(plan, options.silence_seconds))
        agent().run(warm)  # unmeasured: every part's first run
        runner = agent()
        with PeakMemory() as peak:
            result = runner.run(pcm)
        busy = load_average()
        turns = [t for t in result.turns if all(v is not None for v in t.latency().values())]
        left = len(result.turns) - len(turns)
        if left:
            counted = {id(t) for t in turns}
            why = ", ".join(sorted({t.status for t in result.turns if id(t) not in counted}))
            plan.notes.append(f"agent: {left} of {len(result.turns)} turns had no first audio ({why}): not counted")
        if not turns:
            from ..errors import MoshikitError

            raise MoshikitError(f"the agent answered no turn of the input ({len(result.turns)} turns heard; "
                                f"{'; '.join(result.errors) or runner.options.describe(runner.has_pause_heads)})")
        for key, task in PARTS.items():
            samples = [t.latency()[key] for t in turns]
            row = latency_row("agent", AGENT, task, samples, turns=len(turns), load=busy, turn_rule=result.describe,
                              **params)
            row.memory = peak.result
            yield row
        if plan.reference:
            messages = [{"role": "user", "content": turns[0].user or "hello"}]
            firsts = [first_token(server.url, LLMServer.MODEL, messages) for _ in range(len(turns))]
            yield latency_row("agent", LLM_REFERENCE, "request -> first token", firsts, turns=len(turns),
                              **params)
            audio = [tts_first_audio(tts, voices, settings, text, plan.tokens_per_second)
                     for _ in range(len(turns))]
            yield latency_row("agent", TTS_REFERENCE, "first token -> first audio", audio, turns=len(turns),
                              **params)
    finally:
        server.close()
