"""Finding sound devices: no PortAudio, no device at all, no default, a name that matches
nothing; each is one line (exit 2 where the user must choose another way in), said before
any model is loaded."""

from __future__ import annotations

import importlib.abc
import sys

import numpy as np
import pytest

from moshikit import mic
from moshikit.cli.app import main
from moshikit.errors import MoshikitError, NoDeviceError


class FakeSoundDevice:
    """What sounddevice reports on a machine with ``devices`` (dicts of channel counts)."""

    class PortAudioError(Exception):
        pass

    def __init__(self, devices: list[dict], default: tuple[int, int] = (-1, -1)) -> None:
        self.devices = [dict({"default_samplerate": 48000.0}, **d) for d in devices]

        class Default:
            device = list(default)

        self.default = Default()

    def query_devices(self, device=None, kind=None):
        if kind is None and device is None:
            return list(self.devices)
        index = device if device is not None else self.default.device[0 if kind == "input" else 1]
        if not 0 <= index < len(self.devices):
            raise self.PortAudioError(f"Error querying device {index}")
        return self.devices[index]


@pytest.fixture
def no_devices(monkeypatch):
    fake = FakeSoundDevice([])
    monkeypatch.setattr(mic, "load_sounddevice", lambda: fake)
    return fake


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """Loading any model fails the test; the cache stays empty (no synthetic checkpoint built)."""
    from moshikit import chat, stt

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the devices were checked")

    monkeypatch.setattr(chat, "load_chat", refuse)
    monkeypatch.setattr(stt, "load_stt", refuse)
    monkeypatch.setenv("MOSHIKIT_CACHE", str(tmp_path / "cache"))
    yield
    assert not (tmp_path / "cache").exists()


def test_no_device_at_all_is_a_usage_error_naming_what_works(no_devices):
    with pytest.raises(NoDeviceError) as err:
        mic.find_devices(None, None, instead="use a file")
    assert err.value.exit_code == 2
    assert str(err.value) == "no audio input device found on this machine; use a file"


def test_a_missing_speaker_is_named(monkeypatch):
    fake = FakeSoundDevice([{"name": "usb mic", "max_input_channels": 1, "max_output_channels": 0}], (0, -1))
    monkeypatch.setattr(mic, "load_sounddevice", lambda: fake)
    assert mic.find_device(None, "input") == (None, fake.devices[0])
    with pytest.raises(NoDeviceError, match=r"^no audio output device found on this machine; x$"):
        mic.find_devices(None, None, instead="x")
    with pytest.raises(NoDeviceError, match="no input device matches 'speaker'"):
        mic.find_device("speaker", "input")


def test_devices_without_a_default_ask_for_one(monkeypatch):
    fake = FakeSoundDevice([{"name": "a", "max_input_channels": 2, "max_output_channels": 2}])
    monkeypatch.setattr(mic, "load_sounddevice", lambda: fake)
    with pytest.raises(NoDeviceError, match=r"no default audio input device; choose one with --input-device"):
        mic.find_device(None, "input")
    assert mic.find_device("a", "input")[0] == 0 and mic.find_device("0", "output")[0] == 0


class _NoPortAudio(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports sounddevice as a machine without libportaudio does: OSError."""

    def find_spec(self, name, path=None, target=None):
        if name == "sounddevice":
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        raise OSError("PortAudio library not found")

    def exec_module(self, module):  # pragma: no cover - create_module raises
        pass


def test_no_portaudio_is_one_line_with_the_package_to_install(monkeypatch):
    import importlib.util  # noqa: F401 - used by the finder

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoPortAudio(), *sys.meta_path])
    with pytest.raises(MoshikitError) as err:
        mic.load_sounddevice()
    assert str(err.value) == "cannot use audio devices: PortAudio library not found"
    assert "apt-get install libportaudio2" in err.value.hint


@pytest.mark.parametrize("argv, instead", [
    (["chat", "-m", "synthetic"], "chat over files with -i FILE -o FILE, talk to a server with --url, "
                                  "or see --list-devices"),
    (["chat", "--url", "ws://127.0.0.1:9"], "chat over files with --url URL -i FILE -o FILE, or see --list-devices"),
    (["chat", "-m", "synthetic", "--input-device", "usb"], None),
    (["transcribe", "--mic", "-m", "synthetic"], "transcribe audio files instead, or see --list-devices"),
])
def test_commands_say_there_is_no_device_before_loading_a_model(no_devices, no_model, capsys, argv, instead):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [
        "error: no audio input device found on this machine; "
        + (instead or "chat over files with -i FILE -o FILE, talk to a server with --url, or see --list-devices")]


def test_live_chat_warms_the_model_up_before_opening_the_devices(monkeypatch, capsys):
    """load, first steps, reset; only then the sound devices open."""
    from types import SimpleNamespace

    from moshikit import chat
    from moshikit.conversation import FRAME, Frame

    events = []

    class Conv:
        batch_size = 1
        lm = SimpleNamespace(info=SimpleNamespace(delays=(0, 2, 1)))

        def reset(self):
            events.append("reset")

        def step(self, pcm):
            events.append("step")
            return Frame(np.zeros((1, FRAME), np.float32), None, [""], 0, 0.01)

    def load_chat(*a, **k):
        events.append("load")
        return Conv()

    def open_stream(sd, kind, *a, **k):
        events.append(f"open {kind}")
        raise MoshikitError("stop here")

    fake = FakeSoundDevice([{"name": "card", "max_input_channels": 1, "max_output_channels": 2}], (0, 0))
    monkeypatch.setattr(mic, "load_sounddevice", lambda: fake)
    monkeypatch.setattr(mic, "open_stream", open_stream)
    monkeypatch.setattr(chat, "load_chat", load_chat)
    code = main(["chat", "-m", "synthetic", "--no-aec", "--plain"])
    err = capsys.readouterr().err
    assert code == 1 and "error: stop here" in err, err
    assert events[:events.index("open input")] == ["load", "reset", *["step"] * 6, "reset", "reset"]
    assert "warming up..." in err and "ready: a step takes 10 ms" in err
