"""moshikit chat: talk to Moshi live (microphone and speaker), or run a file through it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (DeviceOpt, Dtype, DtypeOpt, JsonOpt, ListDevicesOpt, LMBackendName, LMBackendOpt, RevisionOpt,
                      device_value, with_sampling_options)


#: What works without a sound card, said when there is none.
NO_DEVICE_INSTEAD = "chat over files with -i FILE -o FILE, talk to a server with --url, or see --list-devices"
NO_DEVICE_INSTEAD_URL = "chat over files with --url URL -i FILE -o FILE, or see --list-devices"


@with_sampling_options
def chat(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", show_default=False,
        help="The voice: moshiko (default) or moshika; a hub repo id, a local directory, or 'synthetic' "
             "(generated test weights).")] = None,
    input_file: Annotated[Optional[str], typer.Option(
        "--input", "-i", show_default=False, help="Chat offline: the user's side from this audio file.")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", show_default=False, help="With --input: write Moshi's reply here (wav, flac...).")] = None,
    transcript: Annotated[Optional[str], typer.Option(
        "--transcript", "-t", show_default=False, help="With --input: write Moshi's text with times here (JSON).")] = None,
    url: Annotated[Optional[str], typer.Option(
        "--url", show_default=False, help="Talk to a Moshi server (ws://, wss://, http(s):// or host:port) "
                                          "instead of a local model.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="With --url: accept a self-signed certificate.")] = False,
    backend: LMBackendOpt = LMBackendName.auto,
    device: DeviceOpt = None,
    dtype: DtypeOpt = Dtype.auto,
    input_device: Annotated[Optional[str], typer.Option(
        "--input-device", show_default=False, help="Microphone: index or (part of) its name.")] = None,
    output_device: Annotated[Optional[str], typer.Option(
        "--output-device", show_default=False, help="Speaker: index or (part of) its name.")] = None,
    list_devices: ListDevicesOpt = False,
    aec: Annotated[bool, typer.Option("--aec/--no-aec", help="Cancel Moshi's echo from the microphone "
                                                             "(--no-aec with headphones).")] = True,
    record: Annotated[Optional[str], typer.Option(
        "--record", show_default=False, help="Record the chat into this directory from the start: a stereo wav "
                                             "(you left, Moshi right) and a transcript JSON. The r key toggles.")] = None,
    duration: Annotated[Optional[float], typer.Option(
        "--duration", min=0.1, show_default=False, help="Live: stop after this many seconds.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Plain line output, even on a terminal.")] = False,
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
    sampling=None,  # SamplingOverrides, from with_sampling_options
) -> None:
    """Talk with Moshi: it listens and speaks at the same time.

    Live (default): microphone and speaker, with Moshi's text, level meters, step
    latency and dropped frames on screen; keys: q quit, m mute, r record. Offline:
    --input FILE --output FILE runs the same loop over a file as fast as it can.
    With --url, the model runs on a Moshi server instead.
    """
    from ..errors import UsageError
    from .devices import print_devices
    from .output import Out

    out = Out(json_mode=json_out)
    if list_devices:
        return print_devices(out)
    s = sampling
    local_only = {"--model": model, "--temp": s.temp, "--temp-text": s.temp_text, "--top-k": s.top_k, "--seed": s.seed,
                  "--device": device, "--revision": revision,
                  "--dtype": None if dtype == Dtype.auto else dtype}
    if url is not None:
        given = [k for k, v in local_only.items() if v is not None]
        if backend != LMBackendName.auto:
            given.append("--backend")
        if given:
            raise UsageError(f"{', '.join(given)} choose a local model; with --url the server's model answers")
    elif insecure:
        raise UsageError("--insecure goes with --url")
    if input_file is None:
        if output is not None or transcript is not None:
            raise UsageError("--output and --transcript go with --input (live chats record with --record)")
        return _live(out, url, insecure, model, backend.value, (device_value(device), dtype.value), revision,
                     sampling or None, input_device, output_device, aec, record,
                     duration, plain)
    if output is None:
        raise UsageError("--input needs --output (where Moshi's reply goes)")
    given = [k for k, v in {"--input-device": input_device, "--output-device": output_device, "--record": record,
                            "--duration": duration}.items() if v is not None]
    if given:
        raise UsageError(f"{', '.join(given)} go with a live chat, not --input")
    _offline(out, url, insecure, input_file, output, transcript, model, backend.value,
             (device_value(device), dtype.value),
             revision, sampling or None)


def _remote():
    from ..errors import MoshikitError

    try:
        from .. import remote
    except ImportError as exc:
        raise MoshikitError(f"chat --url is not available in this install ({exc})") from None
    return remote


def _offline(out, url, insecure, input_file, output, transcript, model, backend, device_dtype, revision,
             sampling) -> None:
    device, dtype = device_dtype
    import numpy as np

    from .. import chat as lib
    from ..audio import AudioWriter, audio_format, read_24k
    from ..conversation import SAMPLE_RATE

    audio_format(Path(output))  # a bad extension fails before any model work
    pcm = read_24k(input_file)[0]
    printing = not out.json_mode

    def on_text(piece: str) -> None:
        if printing:
            out.write(piece)

    if url is not None:
        audio, pieces = _remote().chat_file(url, pcm, insecure=insecure, on_text=on_text)
        source = url
    else:
        warn = None
        from ..platform import resolve

        if resolve("lm", backend, device).device == "cpu" and not lib.is_explicit_small(model):
            warn = "Moshi 7B on a CPU runs far slower than real time: this will take a while"
        if warn:
            out.message(f"[yellow]warning:[/] {warn}")
        out.message("[dim]loading the model...[/]")
        conv = lib.load_chat(model, backend=backend, device=device, sampling=sampling, revision=revision,
                             dtype=dtype)
        total_seconds = pcm.size / SAMPLE_RATE
        with out.progress(1, total_seconds, "chat") as prog:
            def on_frame(i: int, n: int) -> None:
                prog.add_audio(0.08)

            audio, pieces = lib.run_offline_chat(conv, pcm, on_text=on_text, on_frame=on_frame)
            prog.file_done()
        repo = getattr(conv.lm, "repo", None)
        source = str(repo.source if repo is not None else model or "")
    if printing:
        out.write("\n")
    with AudioWriter(Path(output), SAMPLE_RATE, 1) as w:
        w.write(np.asarray(audio, np.float32)[None])
    duration = audio.size / SAMPLE_RATE
    doc = lib.transcript_json(pieces, duration=duration, source=source)
    if transcript is not None:
        lib.write_json_atomic(Path(transcript), doc)
    if out.json_mode:
        out.json({"input": input_file, "output": output, "transcript": transcript, **doc})
    else:
        out.message(f"wrote {output} ({duration:.1f} s)" + (f" and {transcript}" if transcript else ""))


def _live(out, url, insecure, model, backend, device_dtype, revision, sampling, input_device, output_device, aec,
          record, duration, plain) -> None:
    device, dtype = device_dtype
    from .. import chat as lib
    from ..mic import find_devices
    from .chat_ui import ui_for

    warn = lib.check_realtime_device(model, backend, device) if url is None else None
    # No PortAudio, no microphone or no speaker: say so (and what works instead) before any model work.
    find_devices(input_device, output_device, instead=NO_DEVICE_INSTEAD if url is None else NO_DEVICE_INSTEAD_URL)
    if aec:
        from ..aec import probe

        probe()
    if warn:
        out.message(f"[yellow]warning:[/] {warn}")
    if url is not None:
        engine = _remote().connect(url, insecure=insecure)
    else:
        out.message("[dim]loading the model...[/]")
        conv = lib.load_chat(model, backend=backend, device=device, sampling=sampling, revision=revision,
                             dtype=dtype)
        # Everything slow happens before the devices open: a first step can take seconds.
        out.message("[dim]warming up...[/]")
        times = lib.warm_up(conv)
        out.message(f"[dim]ready: a step takes {times[-1] * 1000:.0f} ms (a frame lasts 80 ms)[/]")
        engine = lib.LocalEngine(conv)
    cfg = lib.LiveConfig(input_device=input_device, output_device=output_device, aec=aec, duration=duration,
                         record_dir=record, record=record is not None)
    try:
        with ui_for(out, plain=plain) as ui:
            state = lib.run_live(engine, cfg, on_update=ui.update, keys=ui.keys, on_text=ui.text)
    finally:
        engine.close()
    def ms(pair, i):
        return None if pair is None else round(pair[i] * 1000, 1)

    summary = {"seconds": round(state.elapsed, 2), "steps": state.steps, "dropped_in": state.dropped_in,
               "skipped_out": state.skipped_out, "late_out": state.late_out, "text": state.text.strip()}
    if url is None:  # a local model: its step times
        summary.update(latency_p50_ms=ms(state.latency, 0), latency_p99_ms=ms(state.latency, 1))
    else:  # a server: what the client measures (its step times stay on the server)
        summary.update(frames_sent=state.frames_sent, frames_received=state.frames_received,
                       reply_delay_p50_ms=ms(state.reply_delay, 0), reply_delay_p99_ms=ms(state.reply_delay, 1))
    if out.json_mode:
        out.json(summary)
