"""The agent live: the microphone in, the speaker out, the turn engine of ``offline`` between them.

``LiveAgent(options)`` opens the sound card (sounddevice/PortAudio, imported on first use, as
``chat`` and ``transcribe --mic`` do) and hands ``OfflineAgent.run_frames`` the microphone as
80 ms frames: frame ``i`` is at ``i * 0.08`` s on the session's timeline. PortAudio's callbacks
only copy into and out of queues (they never wait); the main thread resamples (when a device
cannot open 24 kHz), cancels the agent's echo from the microphone (WebRTC AEC3, the speaker's
output as the far end; on by default, as ``chat``) and steps the STT.

The agent's audio reaches the speaker through a queue (``on_audio``); a barge-in (``on_cut``)
flushes it at once. Ctrl-C (SIGINT, caught while the session runs: a second one interrupts
hard), the ``q`` key, ``stop()`` or ``duration`` end the session: the answer in progress is cut,
its request cancelled, the devices closed, and the result (both tracks, the turns) returned as
the offline agent's, so ``--record`` and ``--json`` write the same shapes.

Counted for ``--json``: microphone blocks lost because the main thread fell behind by the whole
queue (``dropped_in``), PortAudio's input overflows, and the most microphone audio that waited.
"""

from __future__ import annotations

import collections
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .offline import FRAME, SAMPLE_RATE, OfflineAgent, Result, Turn

NO_DEVICE_INSTEAD = "run the agent over a recording with -i FILE -o FILE, or see --list-devices"


@dataclass
class LiveOptions:
    input_device: str | int | None = None
    output_device: str | int | None = None
    aec: bool = True
    duration: float | None = None  # seconds of microphone audio, then the session ends
    queue_seconds: float = 20.0  # microphone audio that may wait for the STT before blocks are dropped


@dataclass
class LiveState:
    """What the panel shows; refreshed every frame by the main thread."""

    elapsed: float = 0.0  # seconds of microphone audio heard
    input_level: float = 0.0
    output_level: float = 0.0
    heard: str = ""  # the user's words since the last turn began (the STT's text as it comes)
    user: str = ""  # the turn being answered (or the last one)
    agent: str = ""  # the LLM's text of that turn, as it streams
    speaking: bool = False
    latency: dict = field(default_factory=dict)  # that turn's parts so far (seconds)
    turns: int = 0
    frames_in: int = 0
    dropped_in: int = 0
    overflows: int = 0
    input_lag_max: float = 0.0  # seconds of microphone audio waiting at worst
    error: str | None = None
    aec: str = "off"
    devices: str = ""
    done: bool = False


def latency_so_far(turn: Turn, reply_state) -> dict:
    """A turn's latency parts known so far (end of speech -> end of turn -> first token -> first audio)."""
    first = turn.first_token
    if first is None and reply_state is not None and reply_state.first_token is not None:
        first = turn.end_of_turn + reply_state.first_token  # the request started at the end of the turn
    parts = {"end of turn": (turn.speech_end, turn.end_of_turn), "first token": (turn.end_of_turn, first),
             "first audio": (first, turn.audio_start)}
    return {k: round(b - a, 3) for k, (a, b) in parts.items() if a is not None and b is not None}


class Speaker:
    """The speaker's queue: the callback plays queued audio and never waits; ``flush()`` (a
    barge-in) drops everything queued. What was played is kept for the echo canceller."""

    def __init__(self) -> None:
        self.chunks: collections.deque[np.ndarray] = collections.deque()
        self.played: collections.deque[np.ndarray] = collections.deque(maxlen=4096)
        self.lock = threading.Lock()  # held for a few list operations only
        self.flushed = 0  # samples dropped by barge-ins

    def push(self, pcm: np.ndarray) -> None:
        with self.lock:
            self.chunks.append(np.asarray(pcm, np.float32).reshape(-1))

    def flush(self) -> None:
        with self.lock:
            self.flushed += sum(c.size for c in self.chunks)
            self.chunks.clear()

    def queued(self) -> int:
        with self.lock:
            return sum(c.size for c in self.chunks)

    def callback(self, outdata, frames, time_info, status) -> None:
        from ..audio import drain_into

        out = outdata[:, 0]
        with self.lock:
            drain_into(self.chunks, out)
        if outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]
        self.played.append(out.copy())


class LiveAgent:
    """One live session. Build the ``OfflineAgent`` with ``**session.callbacks()``, then
    ``session.run(agent)``; ``on_update(state)`` is called ~10 times a second from the main thread."""

    def __init__(self, options: LiveOptions | None = None, *, on_update: Callable[[LiveState], None] | None = None,
                 on_turn: Callable[[Turn], None] | None = None, on_error: Callable[[str], None] | None = None,
                 keys: Callable[[], str] | None = None) -> None:
        self.options = options or LiveOptions()
        self.on_update, self.on_turn_done, self.on_error, self.keys = on_update, on_turn, on_error, keys
        self.state = LiveState(aec="on" if self.options.aec else "off")
        self.stop_event = threading.Event()
        self.speaker = Speaker()
        self.mic_q: queue.Queue = queue.Queue()
        self.in_rate = self.out_rate = SAMPLE_RATE
        self.agent: OfflineAgent | None = None
        self.heard: list[np.ndarray] = []
        self.streams: list = []
        self.aec = self.in_resample = self.back_resample = self.out_resample = None
        self.work: collections.deque[float] = collections.deque(maxlen=2000)  # seconds of work per frame

    # ------------------------------------------------------------ the agent's callbacks

    def callbacks(self) -> dict:
        return {"on_audio": self.play, "on_cut": self.cut, "on_text": self.text, "on_turn": self.turn_done,
                "on_error": self.error}

    def play(self, at: float, block: np.ndarray) -> None:
        if self.out_resample is not None:
            block = self.out_resample.resample_chunk(np.asarray(block, np.float32))
        self.speaker.push(block)

    def cut(self, at: float) -> None:
        self.speaker.flush()

    def text(self, piece: str) -> None:
        self.state.heard += piece

    def turn_done(self, turn: Turn) -> None:
        if self.state.turns < turn.index:  # begun and over between two refreshes
            self.state.turns, self.state.user, self.state.heard = turn.index, turn.user, ""
        self.state.latency = latency_so_far(turn, None)
        self.state.agent = turn.heard if turn.status == "interrupted" else turn.agent
        if self.on_turn_done is not None:
            self.on_turn_done(turn)

    def error(self, line: str) -> None:
        self.state.error = line
        if self.on_error is not None:
            self.on_error(line)

    def stop(self) -> None:
        """End the session (from any thread, or a signal handler)."""
        self.stop_event.set()

    # ------------------------------------------------------------ devices

    def on_input(self, indata, frames, time_info, status) -> None:
        """PortAudio's microphone callback: copy, never wait."""
        if status and getattr(status, "input_overflow", False):
            self.state.overflows += 1
        try:
            self.mic_q.put_nowait(indata[:, 0].copy())
        except queue.Full:
            self.state.dropped_in += 1

    def open_devices(self) -> None:
        from ..audio import Resampler
        from ..mic import find_devices, load_sounddevice, open_stream

        sd = load_sounddevice()
        (in_dev, _), (out_dev, _) = find_devices(self.options.input_device, self.options.output_device,
                                                 instead=NO_DEVICE_INSTEAD)
        if self.options.aec:
            from ..aec import EchoCanceller

            self.aec = EchoCanceller(SAMPLE_RATE)
        stream, self.in_rate, in_info = open_stream(sd, "input", in_dev, FRAME, self.on_input)
        self.streams.append(stream)
        stream, self.out_rate, out_info = open_stream(sd, "output", out_dev, FRAME, self.speaker.callback)
        self.streams.append(stream)
        blocks = max(8, int(self.options.queue_seconds * self.in_rate / max(1, self.streams[0].blocksize)))
        self.mic_q = queue.Queue(maxsize=blocks)
        self.state.devices = f"{in_info.get('name', '?')} -> {out_info.get('name', '?')}"
        self.in_resample = Resampler(self.in_rate, 1) if self.in_rate != SAMPLE_RATE else None
        self.back_resample = Resampler(self.out_rate, 1) if self.out_rate != SAMPLE_RATE else None
        if self.out_rate != SAMPLE_RATE:
            import soxr

            self.out_resample = soxr.ResampleStream(SAMPLE_RATE, self.out_rate, 1, dtype="float32", quality="HQ")

    def close_devices(self) -> None:
        for s in self.streams:
            try:
                s.stop()
                s.close()
            except Exception:  # noqa: BLE001 - a device that went away
                pass
        self.streams = []

    # ------------------------------------------------------------ the frames

    def drain_played(self) -> None:
        """What the speaker played: the echo canceller's far end, and the meter."""
        while self.speaker.played:
            block = self.speaker.played.popleft()
            if self.back_resample is not None:
                block = self.back_resample(block[None])[0]
            self.state.output_level = level(block)
            if self.aec is not None:
                self.aec.far(block)

    def frames(self):
        """The microphone as 80 ms frames at 24 kHz, echo cancelled, until the session stops."""
        buf = np.zeros(0, np.float32)
        wanted = None if self.options.duration is None else int(round(self.options.duration / 0.08))
        last_ui = 0.0
        while not self.stop_event.is_set() and (wanted is None or self.state.frames_in < wanted):
            pressed = self.keys() if self.keys is not None else ""
            if any(k in "qQ" for k in pressed):
                break
            self.drain_played()
            try:
                block = self.mic_q.get(timeout=0.05)
            except queue.Empty:
                if self.streams and not self.streams[0].active:
                    self.error("the microphone stopped")
                    break
                continue
            lag = (self.mic_q.qsize() + 1) * block.size / self.in_rate
            self.state.input_lag_max = max(self.state.input_lag_max, lag)
            if self.in_resample is not None:
                block = self.in_resample(block[None])[0]
            if self.aec is not None:
                block = self.aec.near(block)
            buf = np.concatenate([buf, block])
            while buf.size >= FRAME and (wanted is None or self.state.frames_in < wanted):
                frame, buf = buf[:FRAME], buf[FRAME:]
                self.state.frames_in += 1
                self.state.elapsed = self.state.frames_in * 0.08
                self.state.input_level = level(frame)
                self.heard.append(frame)
                t = time.perf_counter()
                yield frame
                self.work.append(time.perf_counter() - t)  # the STT's step and the turn engine's tick
            now = time.monotonic()
            if self.on_update is not None and now - last_ui >= 0.1:
                self.refresh()
                self.on_update(self.state)
                last_ui = now
        if self.agent is not None:
            self.agent.stop()

    def refresh(self) -> None:
        agent, st = self.agent, self.state
        turn = None if agent is None else agent.turn
        if turn is not None:
            r = agent.responder
            if st.turns < turn.index:  # a new turn began: its words leave the live line
                st.turns, st.user, st.heard, st.error = turn.index, turn.user, "", None
            st.agent = "" if r is None else r.state.text
            st.latency = latency_so_far(turn, None if r is None else r.state)
        st.speaking = self.speaker.queued() > 0

    # ------------------------------------------------------------ the session

    def run(self, agent: OfflineAgent, source: str = "<microphone>") -> Result:
        """The session until Ctrl-C, ``q``, ``stop()`` or the duration; the devices are closed on
        every way out. A second Ctrl-C interrupts hard (KeyboardInterrupt, the result still returned)."""
        self.agent = agent
        agent.paced_input = True  # the microphone is the clock
        try:
            self.open_devices()
        except BaseException:  # the speaker would not open: the microphone is closed again
            self.close_devices()
            raise
        restore = None
        if threading.current_thread() is threading.main_thread():
            def on_sigint(signum, frame) -> None:
                if self.stop_event.is_set():
                    raise KeyboardInterrupt
                self.stop()

            restore = signal.signal(signal.SIGINT, on_sigint)
        try:
            for s in reversed(self.streams):
                s.start()
            try:
                result = agent.run_frames(self.frames(), source)
            except KeyboardInterrupt:  # the second Ctrl-C: what was heard and said so far
                if agent.responder is not None and not agent.responder.done:
                    agent.responder.cancel()
                result = Result(agent.turns, np.zeros(0, np.float32), agent.track.pcm[:agent.track.size].copy(),
                                agent.mode, agent.options.describe(agent.has_pause_heads, agent.stt.name),
                                agent.errors)
        finally:
            self.close_devices()
            if restore is not None:
                signal.signal(signal.SIGINT, restore)
        result.user = np.concatenate(self.heard) if self.heard else np.zeros(0, np.float32)
        self.state.done = True
        self.refresh()
        if self.on_update is not None:
            self.on_update(self.state)
        return result

    def summary(self) -> dict:
        """The session's numbers for ``--json`` (beside the turns)."""
        s = self.state
        return {"seconds": round(s.elapsed, 2), "frames_in": s.frames_in, "dropped_in": s.dropped_in,
                "overflows": s.overflows, "input_lag_max": round(s.input_lag_max, 3), "aec": s.aec,
                "devices": s.devices, "cut_seconds": round(self.speaker.flushed / self.out_rate, 3),
                **self.work_ms()}

    def work_ms(self) -> dict:
        """The main thread's work per 80 ms frame (the STT's step, the turn engine), p50 and p99 in ms."""
        if not self.work:
            return {"frame_work_p50_ms": None, "frame_work_p99_ms": None}
        p50, p99 = np.percentile(np.asarray(self.work), [50, 99]) * 1000
        return {"frame_work_p50_ms": round(float(p50), 1), "frame_work_p99_ms": round(float(p99), 1)}


def level(pcm: np.ndarray) -> float:
    """Loudness for a meter (as chat's): 0 at -60 dBFS or below, 1 at 0 dBFS."""
    from ..live import level as chat_level

    return chat_level(pcm)


def warm_up(stt_model, tts=None, voices: list | None = None, settings=None, seconds: float = 1.0) -> None:
    """Step the STT over a little quiet noise, and have the TTS say a word, before the devices open:
    first steps allocate, pick kernels and may build graphs (seconds on first use), and the live
    session must not pay that with the user's first words (the microphone would wait and lag)."""
    from ..stt import transcribe_live

    rng = np.random.default_rng(0)
    n = max(1, int(round(seconds / 0.08)))
    transcribe_live(stt_model, ((rng.standard_normal(FRAME) * 1e-3).astype(np.float32) for _ in range(n)),
                    refine=False, source="<warm-up>")
    if tts is not None:
        from dataclasses import replace

        from ..tts.text import Chunk

        tts.generate(iter([Chunk("Hello.", 0, True)]), voices or [tts.resolve_voice(None)],
                     replace(settings, max_steps=25) if settings is not None else None, on_pcm=lambda pcm: None)
