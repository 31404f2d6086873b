"""The live loop: talk to a ``DuplexEngine`` (a local model or a server) through the sound card.

PortAudio's callbacks only copy samples into and out of queues (they never wait); the loop
thread resamples (when a device cannot open 24 kHz), cancels Moshi's echo from the
microphone, feeds the engine, and queues what comes back for the speaker. When the model
falls behind it catches up as Kyutai's clients do: the engine drops the oldest unprocessed
microphone frames (so Moshi answers what is being said now), and the speaker skips the
oldest queued audio when more than a bound has piled up; both are counted, and silence
played because nothing was ready is counted as late.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..conversation import FRAME, FRAME_SECONDS, SAMPLE_RATE, DuplexEngine
from .devices import DeviceClock, Player, level
from .recorder import Recorder


@dataclass
class LiveConfig:
    input_device: str | int | None = None
    output_device: str | int | None = None
    aec: bool = True
    duration: float | None = None  # stop after this many seconds
    record_dir: str | None = None  # where recordings go
    record: bool = False  # start recording at once
    max_output_seconds: float = 0.4  # queued speaker audio beyond this is skipped, oldest first
    tick: float = 0.01


@dataclass
class LiveState:
    """What the UI shows, refreshed by the loop."""

    elapsed: float = 0.0
    text: str = ""  # Moshi's text so far (the UI keeps its tail)
    input_level: float = 0.0  # RMS in dBFS-ish 0..1 (see level())
    output_level: float = 0.0
    latency: tuple[float, float] | None = None  # p50, p99 seconds of a local model's step
    steps: int = 0
    frames_sent: int | None = None  # with a server: 80 ms frames of the user's audio sent
    frames_received: int | None = None  # and of Moshi's audio received
    reply_delay: tuple[float, float] | None = None  # p50, p99 seconds from sending to hearing back
    dropped_in: int = 0  # microphone frames dropped (model behind, or callback queue full)
    skipped_out: int = 0  # speaker frames skipped (too much queued)
    late_out: int = 0  # speaker callbacks that found nothing ready
    muted: bool = False
    recording: str | None = None  # path of the recording in progress
    aec: str = "off"
    devices: str = ""
    backend: str = ""
    error: str | None = None
    done: bool = False
    pieces: list = field(default_factory=list)

    @property
    def margin(self) -> float | None:
        """Real-time margin: the share of an 80 ms frame left after a p99 step."""
        if self.latency is None:
            return None
        return 1.0 - self.latency[1] / FRAME_SECONDS


def run_live(engine: DuplexEngine, config: LiveConfig | None = None, *,
             on_update: Callable[[LiveState], None] | None = None,
             keys: Callable[[], str] | None = None, on_text: Callable[[str], None] | None = None,
             stop: threading.Event | None = None) -> LiveState:
    """Talk to ``engine`` through the sound card until ``stop``, the ``q`` key, Ctrl-C or
    ``config.duration``. ``keys()`` returns the keys pressed since the last call
    (``q`` quit, ``m`` mute, ``r`` record on/off). ``on_update`` gets the state ~10 times
    a second; ``on_text`` each of Moshi's text pieces. Returns the final state."""
    loop = LiveLoop(engine, config or LiveConfig(), on_text=on_text)
    return loop.run(stop or threading.Event(), on_update=on_update, keys=keys)


class LiveLoop:
    """One live session: the devices, the resamplers, echo cancellation, the recorder and
    the state, stepped by ``run`` every ``config.tick`` seconds."""

    def __init__(self, engine: DuplexEngine, config: LiveConfig, *,
                 on_text: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.cfg = config
        self.on_text = on_text
        self.state = LiveState()
        self.mic_q: queue.Queue = queue.Queue(maxsize=200)
        self.mic_drops = 0
        self.clock = DeviceClock()
        self.in_rate = self.out_rate = SAMPLE_RATE
        self.recorder: Recorder | None = None
        self.rec_start = 0  # played_total when the recording started
        self.played_total = 0  # samples the speaker has played (on the recording's timeline)
        self.text_tail: collections.deque[str] = collections.deque(maxlen=400)

    # -- devices
    def on_input(self, indata, frames, time_info, status) -> None:
        """PortAudio's microphone callback: copy, never wait."""
        if self.clock.ahead("in", frames, self.in_rate):
            return  # a device without a clock (e.g. backed by a file) delivering faster than real time
        try:
            self.mic_q.put_nowait(indata[:, 0].copy())
        except queue.Full:
            self.mic_drops += 1

    def open_devices(self) -> None:
        from ..audio import Resampler
        from ..mic import find_devices, load_sounddevice, open_stream

        sd = load_sounddevice()
        (in_dev, _), (out_dev, _) = find_devices(self.cfg.input_device, self.cfg.output_device)
        self.in_stream, self.in_rate, in_info = open_stream(sd, "input", in_dev, FRAME, self.on_input)
        try:
            self.player = Player(FRAME, self.clock)
            self.out_stream, self.out_rate, out_info = open_stream(sd, "output", out_dev, FRAME, self.player.callback)
        except BaseException:
            self.in_stream.close()
            raise
        self.state.devices = f"{in_info.get('name', '?')} -> {out_info.get('name', '?')}"
        conv = getattr(self.engine, "conv", None)
        self.state.backend = (f"{conv.lm.info.backend} LM on {conv.lm.info.device}" if conv is not None
                              else str(getattr(self.engine, "url", "remote")))
        self.in_resample = Resampler(self.in_rate, 1) if self.in_rate != SAMPLE_RATE else None
        self.out_resample = None
        if self.out_rate != SAMPLE_RATE:
            import soxr

            self.out_resample = soxr.ResampleStream(SAMPLE_RATE, self.out_rate, 1, dtype="float32", quality="HQ")
        self.back_resample = Resampler(self.out_rate, 1) if self.out_rate != SAMPLE_RATE else None
        self.aec = None
        if self.cfg.aec:
            from ..aec import EchoCanceller

            self.aec = EchoCanceller(SAMPLE_RATE)
            self.state.aec = "on"

    def close_devices(self) -> None:
        for s in (self.in_stream, self.out_stream):
            try:
                s.stop()
                s.close()
            except Exception:  # noqa: BLE001
                pass

    # -- one tick
    def toggle_record(self) -> None:
        if self.recorder is None:
            self.recorder = Recorder(self.cfg.record_dir or ".")
            self.rec_start = self.played_total
            self.state.recording = str(self.recorder.wav_path)
        else:
            self.recorder.close()
            self.recorder = None
            self.state.recording = None

    def handle_keys(self, pressed: str, stop: threading.Event) -> None:
        for key in pressed:
            if key in "qQ\x03":
                stop.set()
            elif key in "mM":
                self.state.muted = not self.state.muted
            elif key in "rR":
                self.toggle_record()

    def drain_played(self) -> None:
        """What the speaker played: the echo reference, and Moshi's channel of the recording."""
        while self.player.played:
            block = self.player.played.popleft()
            if self.back_resample is not None:
                block = self.back_resample(block[None])[0]
            self.played_total += block.size
            self.state.output_level = level(block)
            if self.aec is not None:
                self.aec.far(block)
            if self.recorder is not None:
                self.recorder.moshi(block)

    def drain_mic(self) -> None:
        """The microphone: resample, cancel the echo, mute, send."""
        while True:
            try:
                block = self.mic_q.get_nowait()
            except queue.Empty:
                return
            if self.in_resample is not None:
                block = self.in_resample(block[None])[0]
            if self.aec is not None:
                block = self.aec.near(block)
            if self.state.muted:
                block = np.zeros_like(block)
            self.state.input_level = level(block)
            if self.recorder is not None:
                self.recorder.user(block)
            self.engine.send(block)

    def take_replies(self) -> None:
        """Moshi's replies: queued for the speaker; each text piece timed on the speaker's timeline."""
        for audio, piece in self.engine.receive():
            if audio.size:
                a = np.asarray(audio, np.float32).reshape(-1)
                if self.out_resample is not None:
                    a = self.out_resample.resample_chunk(a)
                self.player.push(a)
            if piece:
                at = (self.played_total + self.player.queued() * SAMPLE_RATE / self.out_rate - audio.size) / SAMPLE_RATE
                if self.recorder is not None:
                    self.recorder.text(at - self.rec_start / SAMPLE_RATE, piece)
                self.text_tail.append(piece)
                self.state.pieces.append({"time": round(at, 3), "text": piece})
                if len(self.state.pieces) > 10000:
                    del self.state.pieces[:5000]
                if self.on_text is not None:
                    self.on_text(piece)
        # Skip the oldest queued speaker audio when too much piled up.
        excess = self.player.queued() - int(self.cfg.max_output_seconds * self.out_rate)
        if excess > 0 and not self.player.skip_request:
            self.player.skip_request = excess

    def refresh_stats(self) -> None:
        engine, state = self.engine, self.state
        state.dropped_in = getattr(engine, "dropped_frames", 0) + self.mic_drops \
            + getattr(engine, "dropped_samples", 0) // FRAME
        state.skipped_out = self.player.skipped // max(1, round(FRAME * self.out_rate / SAMPLE_RATE))
        state.late_out = self.player.late
        lat = getattr(engine, "latency", None)
        if lat is not None:
            state.latency = lat.percentiles()
            state.steps = lat.count
        if getattr(engine, "reply_delay", None) is not None:  # a server: what the client sees of it
            state.frames_sent = engine.samples_sent // FRAME
            state.frames_received = engine.samples_received // FRAME
            state.steps = state.frames_received
            state.reply_delay = engine.reply_delay.percentiles()

    # -- the session
    def run(self, stop: threading.Event, *, on_update: Callable[[LiveState], None] | None = None,
            keys: Callable[[], str] | None = None) -> LiveState:
        self.open_devices()
        if self.cfg.record:
            self.toggle_record()
        state = self.state
        last_ui = 0.0
        t0 = time.monotonic()
        self.clock.start(self.out_rate)
        self.in_stream.start()
        self.out_stream.start()
        try:
            while not stop.is_set():
                now = time.monotonic()
                state.elapsed = now - t0
                if self.cfg.duration is not None and state.elapsed >= self.cfg.duration:
                    break
                self.handle_keys(keys() if keys else "", stop)
                self.drain_played()
                self.drain_mic()
                self.take_replies()
                self.refresh_stats()
                if on_update is not None and now - last_ui >= 0.1:
                    state.text = "".join(self.text_tail)
                    on_update(state)
                    last_ui = now
                time.sleep(self.cfg.tick)
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # noqa: BLE001 - shown, then re-raised below after cleanup
            state.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        finally:
            self.close_devices()
            if self.recorder is not None:
                self.recorder.close()
            state.done = True
            state.text = "".join(self.text_tail)
            if on_update is not None:
                on_update(state)
        return state
