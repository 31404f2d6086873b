"""`--list-devices` of the commands that use the sound card (transcribe --mic, chat)."""

from __future__ import annotations



def print_devices(out) -> None:
    """Every PortAudio device, one line each (or JSON), defaults marked."""
    from ..mic import list_devices

    devices = list_devices()
    if out.json_mode:
        out.json(devices)
        return
    if not devices:
        out.message("no audio devices found")
    for d in devices:
        marks = " ".join(m for m, on in (("default input", d["default_input"]),
                                         ("default output", d["default_output"])) if on)
        out.result(f"{d['index']:>3}  {d['name']}  (in {d['inputs']}, out {d['outputs']}, "
                   f"{int(d['default_rate'])} Hz){'  [' + marks + ']' if marks else ''}")
