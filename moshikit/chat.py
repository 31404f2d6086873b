"""Talk to Moshi: the local engine, the live loop over sound devices, offline chat, recording.

``LocalEngine`` runs a ``Conversation`` on its own thread behind the ``DuplexEngine``
interface, the same interface ``remote.connect`` returns, so ``run_live`` drives a local
model and a remote server alike.

The live loop (``run_live``): PortAudio's callbacks only copy samples into and out of
queues (they never wait); the loop thread resamples (when a device cannot open 24 kHz),
cancels Moshi's echo from the microphone, feeds the engine, and queues what comes back
for the speaker. When the model falls behind it catches up as Kyutai's clients do: the
engine drops the oldest unprocessed microphone frames (so Moshi answers what is being
said now), and the speaker skips the oldest queued audio when more than a bound has piled
up; both are counted, and silence played because nothing was ready is counted as late.

No length limit: the LM's context slides, the codec's streaming state is fixed-size, the
statistics keep a fixed window, and recordings are written as they go.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .conversation import FRAME, FRAME_SECONDS, SAMPLE_RATE, Conversation, DuplexEngine
from .errors import ModelError

__all__ = ["LocalEngine", "LatencyWindow", "LiveConfig", "LiveState", "Recorder", "check_realtime_device",
           "load_chat", "run_live", "run_offline_chat", "warm_up"]


# --------------------------------------------------------------------------- statistics


class LatencyWindow:
    """Per-step wall times over the last ``seconds`` of steps (a fixed-size window)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=max(1, int(seconds / FRAME_SECONDS)))
        self._lock = threading.Lock()
        self.count = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._times.append(seconds)
            self.count += 1

    def percentiles(self) -> tuple[float, float] | None:
        """(p50, p99) in seconds, or None before the first step."""
        with self._lock:
            if not self._times:
                return None
            arr = np.fromiter(self._times, float)
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


# --------------------------------------------------------------------------- the local engine


class LocalEngine:
    """A ``Conversation`` stepped on its own thread (a ``DuplexEngine``).

    ``send`` appends samples (any length) and returns at once; the worker cuts them into
    80 ms frames. When more than ``max_backlog`` frames wait (the model is slower than
    real time), the oldest are dropped and counted in ``dropped_frames``: Moshi then
    hears the present, not a growing past. ``receive`` returns one (audio, text) pair
    per step taken. ``latency`` holds the per-step times.
    """

    def __init__(self, conv: Conversation, *, max_backlog: int = 3, latency_seconds: float = 10.0) -> None:
        if conv.batch_size != 1:
            raise ValueError("a live engine runs one stream")
        self.conv = conv
        self.max_backlog = max(1, max_backlog)
        self.latency = LatencyWindow(latency_seconds)
        self.dropped_frames = 0
        self.steps = 0
        self.error: BaseException | None = None
        self._pending = np.zeros(0, np.float32)
        self._frames: collections.deque[np.ndarray] = collections.deque()
        self._out: collections.deque[tuple[np.ndarray, str]] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        conv.reset()
        self._thread = threading.Thread(target=self._run, name="moshikit-engine", daemon=True)
        self._thread.start()

    def send(self, pcm: np.ndarray) -> None:
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not x.size or self._closing:
            return
        with self._cv:
            buf = np.concatenate([self._pending, x]) if self._pending.size else x.copy()
            n = buf.size // FRAME
            for i in range(n):
                self._frames.append(buf[i * FRAME : (i + 1) * FRAME])
            self._pending = buf[n * FRAME :]
            while len(self._frames) > self.max_backlog:
                self._frames.popleft()
                self.dropped_frames += 1
            if n:
                self._cv.notify()

    def receive(self) -> list[tuple[np.ndarray, str]]:
        if self.error is not None and not self._out:
            raise self.error
        items = []
        while self._out:
            items.append(self._out.popleft())
        return items

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._frames and not self._closing:
                        self._cv.wait(0.5)
                    if self._closing:
                        return
                    frame = self._frames.popleft()
                out = self.conv.step(frame)
                self.latency.add(out.seconds)
                self.steps += 1
                self._out.append((out.pcm[0], out.text[0]))
        except BaseException as exc:  # noqa: BLE001 - reported to the loop through receive()
            self.error = exc

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout=10.0)

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- loading


#: Above this LM width a checkpoint is a full-size Moshi (the 7B has dim 4096).
_LARGE_DIM = 2048


def is_explicit_small(model: str | None) -> bool:
    if model is None:
        return False
    if model == "synthetic":
        return True
    return Path(model).expanduser().exists()


def check_realtime_device(model: str | None, backend: str | None, device: str | None) -> str | None:
    """Refuse live chat with a hub or catalog model on a CPU; return a warning for a
    large local checkpoint on a CPU (None when there is nothing to say)."""
    from . import platform

    choice = platform.resolve("lm", backend, device)
    dev = choice.device
    if dev in (None, "auto"):
        dev = platform.default_lm().device if choice.backend == "torch" else "gpu"
    if dev != "cpu":
        return None
    if not is_explicit_small(model):
        raise ModelError(
            "Moshi 7B cannot run in real time on a CPU (one step takes seconds, a frame lasts 80 ms): "
            "live chat needs a CUDA GPU or Apple silicon",
            hint="talk to a server with --url, run a file offline with --input, or pass --model with a "
                 "tiny local checkpoint ('synthetic' for test weights)")
    cfg_path = Path(model).expanduser() / "config.json" if model != "synthetic" else None
    if cfg_path is not None and cfg_path.is_file():
        try:
            dim = int(json.loads(cfg_path.read_text()).get("dim", 0))
        except (ValueError, OSError, TypeError):
            dim = 0
        if dim > _LARGE_DIM:
            return (f"{model} is a full-size Moshi (dim {dim}): a CPU cannot run it in real time, "
                    "expect most frames to be dropped")
    return None


def load_chat(model: str | None = None, *, backend: str | None = None, device: str | None = None,
              sampling=None, revision: str | None = None, dtype: str | None = None) -> Conversation:
    """The model for a chat (one stream): see ``serve.load_conversation``."""
    from .serve import load_conversation

    return load_conversation(model, backend=backend, device=device, sampling=sampling, revision=revision,
                             dtype=dtype)


def warm_up(conv: Conversation, *, frames: int | None = None, budget: float = 60.0) -> list[float]:
    """Step ``conv`` over a little quiet noise, then reset it: first calls allocate, pick
    kernels and fill caches (the first step has taken seconds), and a live loop must not pay
    that with the user's first words. Runs the LM's delay plus 4 frames by default (stops
    early past ``budget`` seconds). Returns the step times."""
    n = max(conv.lm.info.delays) + 4 if frames is None else frames
    rng = np.random.default_rng(0)
    times: list[float] = []
    t0 = time.monotonic()
    conv.reset()
    for _ in range(n):
        pcm = (rng.standard_normal((conv.batch_size, FRAME)) * 1e-3).astype(np.float32)
        times.append(conv.step(pcm).seconds)
        if time.monotonic() - t0 > budget:
            break
    conv.reset()
    return times


# --------------------------------------------------------------------------- offline


def run_offline_chat(conv: Conversation, pcm: np.ndarray, *,
                     on_text: Callable[[str], None] | None = None,
                     on_frame: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[dict]]:
    """The live loop's model work over a whole file, as fast as the machine allows.

    Returns Moshi's audio (input length plus the LM's delay) and the transcript
    (``{"time", "token", "text"}`` per piece). With a seeded sampling config two runs
    give the same bytes.
    """
    from .conversation import run_offline

    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    total = -(-pcm.size // FRAME) + max(conv.lm.info.delays)

    def frame(f) -> None:
        if on_text is not None and f.text[0]:
            on_text(f.text[0])
        if on_frame is not None:
            on_frame(f.index + 1, total)

    return run_offline(conv, pcm, on_frame=frame)


def transcript_json(pieces: list[dict], *, duration: float, source: str | None = None) -> dict:
    """The transcript file: every piece with its time, and the text joined."""
    text = "".join(p["text"] for p in pieces).strip()
    doc = {"duration": round(duration, 3), "text": text,
           "pieces": [{"time": p["time"], "text": p["text"]} for p in pieces]}
    if source:
        doc["model"] = source
    return doc


def write_json_atomic(path: Path, doc: dict) -> None:
    from .atomic import write_text

    write_text(Path(path), json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- recording


class Recorder:
    """A stereo 24 kHz wav (user left, Moshi right, sample-aligned on the device clock)
    and a transcript JSON, both written atomically when the recording stops."""

    def __init__(self, directory: str | os.PathLike, *, stamp: str | None = None) -> None:
        from .audio import AudioWriter

        self.directory = Path(directory)  # made by AudioWriter (a file in its place: one line)
        stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
        base, n = f"chat-{stamp}", 1
        while (self.directory / f"{base}.wav").exists():
            n += 1
            base = f"chat-{stamp}-{n}"
        self.wav_path = self.directory / f"{base}.wav"
        self.json_path = self.directory / f"{base}.json"
        self._writer = AudioWriter(self.wav_path, SAMPLE_RATE, 2).__enter__()
        self._left: collections.deque[np.ndarray] = collections.deque()
        self._right: collections.deque[np.ndarray] = collections.deque()
        self._nl = self._nr = 0
        self.samples = 0
        self.pieces: list[dict] = []

    def user(self, pcm: np.ndarray) -> None:
        self._left.append(np.asarray(pcm, np.float32).reshape(-1))
        self._nl += pcm.size
        self._write()

    def moshi(self, pcm: np.ndarray) -> None:
        self._right.append(np.asarray(pcm, np.float32).reshape(-1))
        self._nr += pcm.size
        self._write()

    def _write(self, final: bool = False) -> None:
        """Flush; a failed write (a full disk...) removes the partial recording and is raised."""
        if self._writer is None:
            return
        try:
            self._flush(final)
        except BaseException:
            writer, self._writer = self._writer, None
            writer.__exit__(*sys.exc_info())
            raise

    def text(self, seconds: float, piece: str) -> None:
        self.pieces.append({"time": round(max(seconds, 0.0), 3), "text": piece})

    @staticmethod
    def _take(q: collections.deque, n: int) -> np.ndarray:
        parts, got = [], 0
        while got < n:
            a = q.popleft()
            if got + a.size > n:
                q.appendleft(a[n - got :])
                a = a[: n - got]
            parts.append(a)
            got += a.size
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _flush(self, final: bool = False) -> None:
        n = min(self._nl, self._nr)
        if final:
            n = max(self._nl, self._nr)
            for q, have in ((self._left, self._nl), (self._right, self._nr)):
                if have < n:
                    q.append(np.zeros(n - have, np.float32))
            self._nl = self._nr = n
        if n <= 0:
            return
        block = np.stack([self._take(self._left, n), self._take(self._right, n)])
        self._nl -= n
        self._nr -= n
        self._writer.write(block)
        self.samples += n

    def close(self) -> None:
        """Finish both files; after a failed write there is nothing left to finish."""
        if self._writer is None:
            return
        self._write(final=True)
        writer, self._writer = self._writer, None
        writer.__exit__(None, None, None)
        write_json_atomic(self.json_path, transcript_json(self.pieces, duration=self.samples / SAMPLE_RATE))


# --------------------------------------------------------------------------- the live loop


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


def level(pcm: np.ndarray) -> float:
    """Loudness for a meter: 0 at -60 dBFS or below, 1 at 0 dBFS."""
    if not pcm.size:
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
    return min(1.0, max(0.0, (20 * np.log10(max(rms, 1e-9)) + 60) / 60))


class _DeviceClock:
    """Guards against devices that run faster than real time (ALSA devices backed by
    files have no clock): samples beyond the wall clock (plus slack) are ignored."""

    def __init__(self, slack: float = 0.5) -> None:
        self.slack = slack
        self.t0: float | None = None
        self.counts = {"in": 0, "out": 0}
        self.ignored = 0
        self.out_rate = SAMPLE_RATE

    def start(self, out_rate: int) -> None:
        self.out_rate = out_rate
        self.t0 = time.monotonic()

    def ahead(self, side: str, frames: int, rate: int) -> bool:
        if self.t0 is None:
            return True
        if self.counts[side] > (time.monotonic() - self.t0 + self.slack) * rate:
            self.ignored += 1
            return True
        self.counts[side] += frames
        return False


class _Player:
    """The speaker side: the callback pops queued chunks and never waits."""

    def __init__(self, blocksize: int, clock: _DeviceClock | None = None) -> None:
        self.blocksize = blocksize
        self.clock = clock
        self.chunks: collections.deque[np.ndarray] = collections.deque()
        self.played: collections.deque[np.ndarray] = collections.deque(maxlen=4096)
        self.queued_in = 0  # samples appended (loop)
        self.consumed = 0  # samples taken out (callback, played or skipped)
        self.skip_request = 0  # samples the loop asks the callback to skip
        self.skipped = 0
        self.late = 0
        self._cur = np.zeros(0, np.float32)
        self.started = False

    def queued(self) -> int:
        return self.queued_in - self.consumed

    def push(self, pcm: np.ndarray) -> None:
        self.queued_in += pcm.size
        self.chunks.append(pcm)
        self.started = True

    def callback(self, outdata, frames, time_info, status) -> None:
        if self.clock is not None and self.clock.ahead("out", frames, self.clock.out_rate):
            outdata.fill(0.0)  # a device without a clock asking faster than real time
            return
        out = outdata[:, 0]
        skip = self.skip_request
        if skip:
            self.skip_request = 0
        filled = 0
        while filled < frames:
            if not self._cur.size:
                if not self.chunks:
                    break
                self._cur = self.chunks.popleft()
            if skip:
                k = min(skip, self._cur.size)
                self._cur = self._cur[k:]
                self.consumed += k
                self.skipped += k
                skip -= k
                continue
            k = min(frames - filled, self._cur.size)
            out[filled : filled + k] = self._cur[:k]
            self._cur = self._cur[k:]
            self.consumed += k
            filled += k
        if filled < frames:
            out[filled:] = 0.0
            if self.started:
                self.late += 1
        if outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]
        self.played.append(out.copy())


def run_live(engine: DuplexEngine, config: LiveConfig | None = None, *,
             on_update: Callable[[LiveState], None] | None = None,
             keys: Callable[[], str] | None = None, on_text: Callable[[str], None] | None = None,
             stop: threading.Event | None = None) -> LiveState:
    """Talk to ``engine`` through the sound card until ``stop``, the ``q`` key, Ctrl-C or
    ``config.duration``. ``keys()`` returns the keys pressed since the last call
    (``q`` quit, ``m`` mute, ``r`` record on/off). ``on_update`` gets the state ~10 times
    a second; ``on_text`` each of Moshi's text pieces. Returns the final state."""
    from .audio import Resampler
    from .mic import find_devices, load_sounddevice, open_stream

    cfg = config or LiveConfig()
    sd = load_sounddevice()
    stop = stop or threading.Event()
    state = LiveState()
    (in_dev, _), (out_dev, _) = find_devices(cfg.input_device, cfg.output_device)
    mic_q: queue.Queue = queue.Queue(maxsize=200)
    mic_drops = [0]

    clock = _DeviceClock()

    def on_input(indata, frames, time_info, status) -> None:
        if clock.ahead("in", frames, in_rate):
            return  # a device without a clock (e.g. backed by a file) delivering faster than real time
        try:
            mic_q.put_nowait(indata[:, 0].copy())
        except queue.Full:
            mic_drops[0] += 1

    in_rate = SAMPLE_RATE
    in_stream, in_rate, in_info = open_stream(sd, "input", in_dev, FRAME, on_input)
    out_rate = SAMPLE_RATE
    try:
        player = _Player(FRAME, clock)
        out_stream, out_rate, out_info = open_stream(sd, "output", out_dev, FRAME, player.callback)
    except BaseException:
        in_stream.close()
        raise
    state.devices = f"{in_info.get('name', '?')} -> {out_info.get('name', '?')}"
    conv = getattr(engine, "conv", None)
    state.backend = (f"{conv.lm.info.backend} LM on {conv.lm.info.device}" if conv is not None
                     else str(getattr(engine, "url", "remote")))
    in_resample = Resampler(in_rate, 1) if in_rate != SAMPLE_RATE else None
    out_resample = None
    if out_rate != SAMPLE_RATE:
        import soxr

        out_resample = soxr.ResampleStream(SAMPLE_RATE, out_rate, 1, dtype="float32", quality="HQ")
    back_resample = Resampler(out_rate, 1) if out_rate != SAMPLE_RATE else None
    aec = None
    if cfg.aec:
        from .aec import EchoCanceller

        aec = EchoCanceller(SAMPLE_RATE)
        state.aec = "on"
    recorder: Recorder | None = None
    rec_dir = cfg.record_dir or "."
    rec_start = 0  # played_total when the recording started

    def toggle_record() -> None:
        nonlocal recorder, rec_start
        if recorder is None:
            recorder = Recorder(rec_dir)
            rec_start = played_total
            state.recording = str(recorder.wav_path)
        else:
            recorder.close()
            recorder = None
            state.recording = None

    played_total = 0  # samples the speaker has played (on the recording's timeline)
    if cfg.record:
        toggle_record()
    last_ui = 0.0
    text_tail: collections.deque[str] = collections.deque(maxlen=400)
    t0 = time.monotonic()
    clock.start(out_rate)
    in_stream.start()
    out_stream.start()
    try:
        while not stop.is_set():
            now = time.monotonic()
            state.elapsed = now - t0
            if cfg.duration is not None and state.elapsed >= cfg.duration:
                break
            for key in (keys() if keys else ""):
                if key in "qQ\x03":
                    stop.set()
                elif key in "mM":
                    state.muted = not state.muted
                elif key in "rR":
                    toggle_record()
            # What the speaker played: the echo reference, and Moshi's channel of the recording.
            while player.played:
                block = player.played.popleft()
                if back_resample is not None:
                    block = back_resample(block[None])[0]
                played_total += block.size
                state.output_level = level(block)
                if aec is not None:
                    aec.far(block)
                if recorder is not None:
                    recorder.moshi(block)
            # The microphone: resample, cancel the echo, mute, send.
            while True:
                try:
                    block = mic_q.get_nowait()
                except queue.Empty:
                    break
                if in_resample is not None:
                    block = in_resample(block[None])[0]
                if aec is not None:
                    block = aec.near(block)
                if state.muted:
                    block = np.zeros_like(block)
                state.input_level = level(block)
                if recorder is not None:
                    recorder.user(block)
                engine.send(block)
            # Moshi's replies: queue for the speaker, skip the oldest when too much piled up.
            for audio, piece in engine.receive():
                if audio.size:
                    a = np.asarray(audio, np.float32).reshape(-1)
                    if out_resample is not None:
                        a = out_resample.resample_chunk(a)
                    player.push(a)
                if piece:
                    at = (played_total + player.queued() * SAMPLE_RATE / out_rate - audio.size) / SAMPLE_RATE
                    if recorder is not None:
                        recorder.text(at - rec_start / SAMPLE_RATE, piece)
                    text_tail.append(piece)
                    state.pieces.append({"time": round(at, 3), "text": piece})
                    if len(state.pieces) > 10000:
                        del state.pieces[:5000]
                    if on_text is not None:
                        on_text(piece)
            limit = int(cfg.max_output_seconds * out_rate)
            excess = player.queued() - limit
            if excess > 0 and not player.skip_request:
                player.skip_request = excess
            state.dropped_in = getattr(engine, "dropped_frames", 0) + mic_drops[0] \
                + getattr(engine, "dropped_samples", 0) // FRAME
            state.skipped_out = player.skipped // max(1, round(FRAME * out_rate / SAMPLE_RATE))
            state.late_out = player.late
            lat = getattr(engine, "latency", None)
            if lat is not None:
                state.latency = lat.percentiles()
                state.steps = lat.count
            if getattr(engine, "reply_delay", None) is not None:  # a server: what the client sees of it
                state.frames_sent = engine.samples_sent // FRAME
                state.frames_received = engine.samples_received // FRAME
                state.steps = state.frames_received
                state.reply_delay = engine.reply_delay.percentiles()
            if on_update is not None and now - last_ui >= 0.1:
                state.text = "".join(text_tail)
                on_update(state)
                last_ui = now
            time.sleep(cfg.tick)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - shown, then re-raised below after cleanup
        state.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        for s in (in_stream, out_stream):
            try:
                s.stop()
                s.close()
            except Exception:  # noqa: BLE001
                pass
        if recorder is not None:
            recorder.close()
        state.done = True
        state.text = "".join(text_tail)
        if on_update is not None:
            on_update(state)
    return state
