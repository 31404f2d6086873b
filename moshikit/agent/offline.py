"""The agent over a recording: ``agent -i question.wav -o reply.wav -t turns.json``.

The input is fed to the STT frame by frame on its own timeline (80 ms frames; the time of
frame ``i`` is ``i * 0.08`` s, not the wall clock), so turn ends and barge-ins fall on the
same frames on every run and idle stretches cost only the STT's compute. While the agent
answers, the timeline advances no faster than the wall clock: the LLM's tokens and the TTS's
audio arrive in real (wall) time and are placed on the timeline at the moment they came, as
they would reach a listener. The agent's audio then plays at real time from its first frame
(a frame generated late starts late: an underrun).

Barge-in is decided on the timeline: ``barge_in`` seconds of the user's voice while the agent
answers cut the agent's audio at that frame and cancel its request (if still running).

Output: stereo, the user (the input) left and the agent right; and a JSON of turns with each
turn's times and latency parts (end of speech -> end of turn -> first LLM token -> first audio).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from .llm import ChatClient
from .reply import Responder
from .turns import FRAME_SECONDS, History, TurnOptions, VoiceActivity

SAMPLE_RATE = 24000
FRAME = 1920
MAX_WAIT = 120.0  # wall seconds the last reply may take after the input ends


@dataclass
class Turn:
    """One user turn and the agent's answer; times in seconds on the input's timeline."""

    index: int
    user: str
    speech_start: float | None
    speech_end: float | None  # the user's voice last heard
    end_of_turn: float  # when the turn was taken as over
    by: str  # pause, silence, end of input
    status: str = "waiting"  # done, cancelled, error, interrupted
    error: str | None = None
    agent: str = ""  # the LLM's text
    heard: str = ""  # what the user heard of it before a barge-in (all of it otherwise)
    first_token: float | None = None
    llm_end: float | None = None
    audio_start: float | None = None
    audio_end: float | None = None
    interrupted_at: float | None = None
    request_cancelled: bool = False  # the LLM request cut while it still streamed
    messages: int = 0  # messages the request carried

    def latency(self) -> dict:
        def gap(a, b):
            return None if a is None or b is None else round(b - a, 3)

        return {"end_of_speech_to_end_of_turn": gap(self.speech_end, self.end_of_turn),
                "end_of_turn_to_first_token": gap(self.end_of_turn, self.first_token),
                "first_token_to_first_audio": gap(self.first_token, self.audio_start),
                "end_of_speech_to_first_audio": gap(self.speech_end, self.audio_start)}

    def to_json(self) -> dict:
        d = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        d["latency"] = self.latency()
        return d


@dataclass
class Result:
    turns: list[Turn]
    user: np.ndarray  # the input, 24 kHz mono
    agent: np.ndarray  # the agent's track, same rate
    mode: str
    describe: str
    errors: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return max(self.user.size, self.agent.size) / SAMPLE_RATE

    def stereo(self) -> np.ndarray:
        n = max(self.user.size, self.agent.size)
        out = np.zeros((2, n), np.float32)
        out[0, :self.user.size] = self.user
        out[1, :self.agent.size] = self.agent
        return out


class Track:
    """The agent's audio on the timeline: frames placed at their arrival, played back to back."""

    def __init__(self) -> None:
        self.pcm = np.zeros(SAMPLE_RATE * 10, np.float32)
        self.cursor = 0  # where the next frame can start (the end of what is queued)
        self.size = 0

    def place(self, at: float, block: np.ndarray) -> float:
        start = max(self.cursor, int(round(at * SAMPLE_RATE)))
        end = start + block.size
        if end > self.pcm.size:
            self.pcm = np.concatenate([self.pcm, np.zeros(max(end - self.pcm.size, self.pcm.size), np.float32)])
        self.pcm[start:end] = block
        self.cursor = self.size = max(self.size, end)
        return start / SAMPLE_RATE

    def cut(self, at: float) -> None:
        n = int(round(at * SAMPLE_RATE))
        if n < self.size:
            self.pcm[n:self.size] = 0
            self.size = self.cursor = n

    @property
    def end(self) -> float:
        return self.cursor / SAMPLE_RATE


class OfflineAgent:
    """``OfflineAgent(stt_model, tts, voices, settings, client, options).run(pcm)``."""

    def __init__(self, stt_model, tts, voices: list, settings, client: ChatClient, options: TurnOptions | None = None,
                 *, system: str | None = None, max_history_chars: int | None = None,
                 on_turn: Callable[[Turn], None] | None = None, on_error: Callable[[str], None] | None = None,
                 on_text: Callable[[str], None] | None = None,
                 on_audio: Callable[[float, np.ndarray], None] | None = None,
                 on_cut: Callable[[float], None] | None = None) -> None:
        self.stt, self.tts, self.voices, self.settings, self.client = stt_model, tts, voices, settings, client
        self.options = options or TurnOptions()
        from ..backends.base import StreamsLMBackend

        # As the STT runs them (stt.run_streams): pause heads read only through a streams backend.
        self.has_pause_heads = isinstance(stt_model.lm, StreamsLMBackend) and stt_model.lm.info.extra_heads > 2
        self.mode = self.options.mode(self.has_pause_heads)
        self.history = History(system, **({} if max_history_chars is None else {"max_chars": max_history_chars}))
        self.on_turn, self.on_error, self.on_text = on_turn, on_error, on_text
        self.on_audio, self.on_cut = on_audio, on_cut
        self.turns: list[Turn] = []
        self.errors: list[str] = []
        self.vad = VoiceActivity(self.options.voice_db)
        self.track = Track()
        self.heard_text = ""  # the STT's text since the last turn ended
        self.paused = False
        self.turn: Turn | None = None  # the turn the agent is answering
        self.responder: Responder | None = None
        self.anchor = (0.0, 0.0)  # (timeline seconds, wall perf_counter) where the request started
        self.failure: BaseException | None = None
        self.stopped = False  # stop(): the input's end ends the session, the answer in progress is cut
        # True when the frames come at the wall clock's pace themselves (a microphone): the timeline
        # never waits for the wall clock then (frames that waited in a queue are caught up at once).
        self.paced_input = False

    def stop(self) -> None:
        """End the session when the input ends (Ctrl-C, a live session's duration): no new turn
        starts there, and an answer still in progress is cut at that moment and its request cancelled.
        The frames' iterator must still end (return) for ``run_frames`` to return."""
        self.stopped = True

    # ------------------------------------------------------------ the STT's callbacks

    def _text(self, piece: str) -> None:
        self.heard_text += piece
        if self.on_text is not None:
            self.on_text(piece)

    def _pause(self, at: float) -> None:
        self.paused = True

    # ------------------------------------------------------------ running

    def run(self, pcm: np.ndarray, source: str = "<input>") -> Result:
        """The agent over a recording (the whole input in memory)."""
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        n = -(-pcm.size // FRAME)
        padded = np.zeros(n * FRAME, np.float32)
        padded[:pcm.size] = pcm
        result = self.run_frames((padded[i * FRAME:(i + 1) * FRAME] for i in range(n)), source)
        result.user = pcm
        return result

    def run_frames(self, blocks: Iterable[np.ndarray], source: str = "<input>") -> Result:
        """The agent over 80 ms frames (1920 float32 samples at 24 kHz) from any source: a file, a
        microphone or a WebSocket, whose iterator may block until the next frame arrives. Frame ``i``
        is at ``i * 0.08`` s on the timeline. The agent's audio goes to ``on_audio(at, block)`` as it
        is generated (``at`` on the timeline, where it starts) and to the result's track; a barge-in
        calls ``on_cut(at)``: audio handed over past ``at`` is not to be played."""
        from ..stt import Stream, run_streams

        heard: list[np.ndarray] = []

        def frames():
            previous = None
            for i, block in enumerate(blocks):
                block = np.asarray(block, np.float32).reshape(-1)
                try:
                    if previous is not None:
                        self.vad.feed(previous, (i - 1) * FRAME_SECONDS)
                    self._tick(i * FRAME_SECONDS)
                except BaseException as exc:  # the STT's reader would take it for a broken file
                    self.failure = exc
                    return
                heard.append(block)
                previous = block
                yield block
            if previous is not None:
                self.vad.feed(previous, (len(heard) - 1) * FRAME_SECONDS)

        stream = Stream(self.stt, source, frames(), refine=False, on_text=self._text,
                        on_turn=self._pause if self.mode == "pause" else None,
                        pause_threshold=self.options.threshold)
        try:
            for _ in run_streams(self.stt, [stream], 1, chunk=1):
                pass
            if self.failure is not None:
                raise self.failure
            now = len(heard) * FRAME_SECONDS
            if self.stopped and self.turn is not None:
                self._collect()
                if (self.responder is None or self.responder.done) and self.track.end <= now:
                    self._close(self.turn, now)
                else:
                    self._interrupt(now)
            self._tick(now, end_of_input=True)
            deadline = time.perf_counter() + MAX_WAIT
            while self.turn is not None:  # the last answer plays out after the input
                now += FRAME_SECONDS
                if time.perf_counter() > deadline and self.responder is not None and not self.responder.done:
                    self._error(f"the agent's reply took over {MAX_WAIT:g} s after the input ended: stopped")
                    self._interrupt(now)
                    break
                self._tick(now, end_of_input=True)
        finally:
            if self.responder is not None and not self.responder.done:
                self.responder.cancel()
                self.responder.join(5)
        user = np.concatenate(heard) if heard else np.zeros(0, np.float32)
        return Result(self.turns, user, self.track.pcm[:self.track.size].copy(), self.mode,
                      self.options.describe(self.has_pause_heads, self.stt.name), self.errors)

    def _tick(self, now: float, end_of_input: bool = False) -> None:
        """The state at ``now`` on the timeline (frames before it heard, fed and stepped)."""
        r = self.responder
        # The agent is working: the timeline keeps wall time (a microphone keeps it by itself).
        if r is not None and not r.done and not self.paced_input:
            wait = self.anchor[1] + (now - self.anchor[0]) - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        self._collect()
        if self.turn is not None and not end_of_input and self.vad.run >= self.options.barge_in - 1e-9 \
                and self.vad.run_start >= self.turn.end_of_turn:
            self._interrupt(now)
        if self.turn is not None and (r is None or r.done):
            self._collect()  # the last frames, generated after the collect above
            if self.track.end <= now:
                self._close(self.turn, now)
        ended = self._end_of_turn(now, end_of_input)
        if ended:
            if self.turn is not None:  # a turn shorter than a barge-in over the agent
                self._interrupt(now)
            self._start(now, ended)

    def _end_of_turn(self, now: float, end_of_input: bool) -> str | None:
        quiet, delay = self.vad.quiet, self.stt.delay + FRAME_SECONDS
        if not self.vad.any_since_turn:
            # No voice since the last turn: text now is the STT's noise (its late words are out by now).
            if quiet >= delay:
                self.heard_text = ""
            self.paused = False
            return None
        if not self.heard_text.strip():
            if quiet >= self.options.silence_seconds + delay:
                self.vad.any_since_turn = False  # voice the STT heard no words in: noise
            self.paused = False
            return None
        if end_of_input:
            return "end of input" if self.turn is None and not self.stopped else None
        if self.mode == "pause":
            if self.paused:
                self.paused = False
                return "pause"
            return None
        # Without pause heads: enough silence, and the STT's delay passed (its last words are out).
        if quiet >= max(self.options.silence_seconds, delay) - 1e-9:
            return "silence"
        return None

    def _start(self, now: float, by: str) -> None:
        text, self.heard_text = self.heard_text.strip(), ""
        start = self.vad.first_voice if self.vad.any_since_turn else None
        turn = Turn(len(self.turns) + 1, text, None if start is None else round(start, 3),
                    self.vad.last_voice_end, now, by)
        self.vad.any_since_turn = False
        self.turns.append(turn)
        self.history.add("user", text)
        messages = self.history.messages()
        turn.messages = len(messages)
        self.turn = turn
        self.anchor = (now, time.perf_counter())
        self.responder = Responder(self.client, self.tts, self.voices, self.settings, messages).start()

    def _collect(self) -> None:
        r, turn = self.responder, self.turn
        if r is None or turn is None:
            return
        for wall, block in r.take_frames():
            at = self.track.place(self.anchor[0] + wall, block)
            if self.on_audio is not None:
                self.on_audio(at, block)
            if turn.audio_start is None:
                turn.audio_start = at
        turn.audio_end = self.track.end if turn.audio_start is not None else None

    def _interrupt(self, now: float) -> None:
        """A barge-in at ``now``: the agent's audio stops there and its request is cancelled."""
        turn, r = self.turn, self.responder
        if r is not None and not r.done:
            # The LLM's request is cut only while it still streams: its reply may be whole while
            # its speech is still being made (a slow CPU), and then only the speech stops.
            turn.request_cancelled = r.state.llm_end is None
            r.cancel()
            r.join(10)
        self.track.cut(now)
        if self.on_cut is not None:
            self.on_cut(now)
        turn.interrupted_at = now
        if turn.audio_end is not None:
            turn.audio_end = min(turn.audio_end, now)
        self._close(turn, now, interrupted=True)

    def _close(self, turn: Turn, now: float, interrupted: bool = False) -> None:
        r = self.responder
        s = r.state
        a = self.anchor[0]
        turn.agent = s.text
        turn.first_token = None if s.first_token is None else round(a + s.first_token, 3)
        turn.llm_end = None if s.llm_end is None else round(a + s.llm_end, 3)
        if s.status == "error":
            turn.status, turn.error = "error", s.error
            self._error(s.error)
        elif s.tts_error:
            turn.status, turn.error = "error", f"TTS: {s.tts_error}"
            self._error(turn.error)
        else:
            turn.status = "interrupted" if interrupted else s.status
        turn.heard = self._heard(turn, s) if interrupted else s.text.strip()
        self.history.add("assistant", turn.heard)
        self.turn, self.responder = None, None
        if self.on_turn is not None:
            self.on_turn(turn)

    def _heard(self, turn: Turn, s) -> str:
        """The words whose audio played before the cut (by the TTS's word times where it has them)."""
        if turn.audio_start is None or turn.audio_end is None:
            return ""
        played = turn.audio_end - turn.audio_start
        if s.words:
            return " ".join(w for w, at in s.words if at < played)
        if not s.samples:
            return ""
        part = s.text[:int(len(s.text) * min(1.0, played * SAMPLE_RATE / s.samples))]
        return part.rsplit(" ", 1)[0] if " " in part else ""

    def _error(self, line: str | None) -> None:
        if line:
            self.errors.append(line)
            if self.on_error is not None:
                self.on_error(line)


def write_outputs(result: Result, output: str | None, turns_path: str | None, meta: dict) -> dict:
    """The stereo wav (user left, agent right) and the turns JSON, each written whole or not at all."""
    import json
    from pathlib import Path

    summary = {**meta, "turn_taking": result.mode, "turn_rule": result.describe,
               "duration": round(result.duration, 3), "channels": {"left": "user", "right": "agent"},
               "turns": [t.to_json() for t in result.turns], "errors": result.errors}
    if output is not None:
        from ..audio import AudioWriter

        with AudioWriter(Path(output), SAMPLE_RATE, 2) as w:
            w.write(result.stereo())
    if turns_path is not None:
        from ..atomic import write_text

        write_text(turns_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary
