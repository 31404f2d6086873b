"""Live input from a sound card through sounddevice (PortAudio), as 24 kHz mono blocks.

sounddevice is imported here, on first use, so machines without PortAudio can run every
other command. The PortAudio callback only copies into a bounded queue (it never blocks);
blocks are resampled to 24 kHz on the consumer's side when the device cannot open 24 kHz.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from .errors import AudioError, MoshikitError, NoDeviceError

SAMPLE_RATE = 24000


def load_sounddevice():
    """The sounddevice module, or one line saying why audio devices cannot be used here."""
    try:
        import sounddevice as sd
    except OSError as exc:  # the wheel is there, libportaudio is not
        raise MoshikitError(f"cannot use audio devices: {str(exc).splitlines()[0]}",
                            hint="install PortAudio (Debian/Ubuntu: apt-get install libportaudio2; "
                                 "macOS: brew install portaudio)") from None
    except ImportError as exc:  # the wheel itself is missing
        raise MoshikitError(f"cannot use audio devices: {exc}", hint="pip install sounddevice") from None
    return sd


_sounddevice = load_sounddevice  # the old name


def list_devices() -> list[dict]:
    """Every PortAudio device with its index, name, channel counts and default rate."""
    sd = load_sounddevice()
    default_in, default_out = (sd.default.device if isinstance(sd.default.device, (list, tuple))
                               else (sd.default.device, sd.default.device))
    return [{"index": i, "name": d["name"], "inputs": d["max_input_channels"], "outputs": d["max_output_channels"],
             "default_rate": d["default_samplerate"], "default_input": i == default_in,
             "default_output": i == default_out} for i, d in enumerate(sd.query_devices())]


def find_device(device: str | int | None, kind: str = "input", *, instead: str | None = None) -> tuple[int | None, dict]:
    """The PortAudio ``kind`` ("input" or "output") device for ``device``: an index, an exact
    or partial name, or None for the default.

    Raises ``NoDeviceError`` (exit 2) when there is none; ``instead`` (e.g. "chat with a file:
    -i FILE -o FILE") is appended to that one line, to say what works without a device."""
    sd = load_sounddevice()
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    try:
        devices = sd.query_devices()
    except Exception as exc:  # noqa: BLE001 - PortAudio reports as it can
        raise AudioError(f"cannot list audio devices ({str(exc).splitlines()[0]})") from None
    usable = [(i, d) for i, d in enumerate(devices) if d[channels] > 0]
    alternatives = f"; {instead}" if instead else ""
    if not usable:
        raise NoDeviceError(f"no audio {kind} device found on this machine{alternatives}")
    if device is None or device == "":
        try:
            info = sd.query_devices(kind=kind)
        except Exception:  # noqa: BLE001 - PortAudioError('Error querying device -1')
            raise NoDeviceError(f"no default audio {kind} device; choose one with --{kind}-device "
                                f"(see --list-devices){alternatives}") from None
        return None, dict(info)
    text = str(device)
    if text.isdigit():
        for i, d in usable:
            if i == int(text):
                return i, dict(d)
        raise NoDeviceError(f"{kind} device {text} does not exist or has no {kind} channels",
                            hint="see --list-devices")
    matches = [(i, d) for i, d in usable if d["name"] == text] or \
              [(i, d) for i, d in usable if text.lower() in d["name"].lower()]
    if not matches:
        raise NoDeviceError(f"no {kind} device matches {text!r}", hint="see --list-devices")
    if len(matches) > 1:
        names = ", ".join(repr(d["name"]) for _, d in matches[:4])
        raise NoDeviceError(f"{text!r} matches several {kind} devices ({names})", hint="give the device's index")
    return matches[0][0], dict(matches[0][1])


def find_devices(input_device: str | int | None, output_device: str | int | None, *,
                 instead: str | None = None) -> tuple[tuple[int | None, dict], tuple[int | None, dict]]:
    """Both ends of a duplex chat, checked before anything slow happens (see ``find_device``)."""
    return (find_device(input_device, "input", instead=instead),
            find_device(output_device, "output", instead=instead))


def open_stream(sd, kind: str, device: int | None, block24: int, callback):
    """A mono float32 ``kind`` stream at 24 kHz, else at the device's own rate (the caller
    resamples); blocks of ``block24`` samples' worth of time. Returns (stream, rate, info)."""
    info = sd.query_devices(device, kind=kind)
    errors = []
    for rate in dict.fromkeys((SAMPLE_RATE, int(info.get("default_samplerate") or 48000))):
        cls = sd.InputStream if kind == "input" else sd.OutputStream
        try:
            return cls(device=device, channels=1, samplerate=rate, dtype="float32",
                       blocksize=max(1, round(block24 * rate / SAMPLE_RATE)), callback=callback), rate, info
        except Exception as exc:  # noqa: BLE001 - PortAudioError and friends
            errors.append(str(exc).splitlines()[0])
    raise AudioError(f"cannot open {kind} device {info.get('name', device)!r} ({'; '.join(errors)})")


class Microphone:
    """An open input stream; iterate for 24 kHz mono float32 blocks until ``stop()``.

    ``seconds`` ends the stream after that much audio; Ctrl-C (KeyboardInterrupt in
    the consumer) ends it too. ``dropped`` counts blocks the consumer was too slow for.
    """

    def __init__(self, device: str | int | None = None, *, seconds: float | None = None, block: int = 1920,
                 max_queue: int = 750, instead: str | None = None) -> None:
        self.sd = load_sounddevice()
        self.index, self.info = find_device(device, "input", instead=instead)
        self.name = self.info.get("name", "default")
        self.seconds = seconds
        self.block = block
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._stopped = threading.Event()
        self._stream = None
        self.rate = SAMPLE_RATE
        self._captured = 0
        self._enough: int | None = None

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread: never block
        try:
            self._queue.put_nowait(indata.mean(axis=1).astype(np.float32, copy=True))
            self._captured += frames
        except queue.Full:
            self.dropped += 1
        if self._enough is not None and self._captured >= self._enough:
            raise self.sd.CallbackStop  # --duration reached: stop capturing, the queue holds the rest

    def _open(self) -> None:
        self._stream, self.rate, _ = open_stream(self.sd, "input", self.index, self.block, self._callback)
        if self.seconds is not None:  # read before the first callback: start() comes after
            self._enough = int(self.seconds * self.rate) + self._stream.blocksize
        self._stream.start()

    def stop(self) -> None:
        self._stopped.set()

    def __iter__(self) -> Iterator[np.ndarray]:
        from .audio import Resampler

        self._open()
        resample = Resampler(self.rate, 1) if self.rate != SAMPLE_RATE else None
        wanted = None if self.seconds is None else int(round(self.seconds * SAMPLE_RATE))
        got = 0
        try:
            while not self._stopped.is_set() and (wanted is None or got < wanted):
                try:
                    block = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if not self._stream.active and self._queue.empty():
                        break  # the device stopped (end of --duration, or it went away)
                    continue
                if resample is not None:
                    block = resample(block[None])[0]
                if wanted is not None:
                    block = block[: wanted - got]
                got += block.size
                if block.size:
                    yield block
        except KeyboardInterrupt:  # Ctrl-C ends the recording; what was heard is still transcribed
            pass
        finally:
            self._stream.stop()
            self._stream.close()
