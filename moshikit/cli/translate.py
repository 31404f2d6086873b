"""moshikit translate: Hibiki's simultaneous speech translation for files, trees and live audio."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import (AudioOrMicArg, DeviceOpt, Dtype, DtypeOpt, IncludeOpt, JsonOpt, ListDevicesOpt, LMBackendName,
                      LMBackendOpt, MicDeviceOpt, MicDurationOpt, OverwriteOpt, RevisionOpt, device_value)

NO_DEVICE_INSTEAD = "translate audio files instead, or see --list-devices"


def translate(
    inputs: AudioOrMicArg = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", show_default=False,
        help="The translated audio for a single input (out.wav), or an output directory (input trees are "
             "mirrored inside). Default: beside each input, as NAME.en.wav.")] = None,
    text: Annotated[Optional[str], typer.Option(
        "--text", "-t", metavar="FILE", show_default=False,
        help="A single input's timed translation text: json, srt, vtt or txt by its extension.")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="Outputs per input for directories: audio (wav, flac, ogg, mp3) and text "
                               "(json, srt, vtt, txt), a comma list.")] = "wav,json",
    stereo: Annotated[Optional[str], typer.Option(
        "--stereo", metavar="FILE", show_default=False,
        help="A single input's stereo pair: the original left, the translation right, aligned.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", show_default=False,
        help="hibiki (kyutai/hibiki-1b-pytorch-bf16, the default), hibiki-2b, a hub repo id, a local "
             "directory, or 'synthetic' (generated test weights).")] = None,
    cfg: Annotated[float, typer.Option(
        "--cfg", min=0.0, help="Classifier-free guidance strength (1 = off; Kyutai suggests up to 3 "
                               "for a closer translation).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", show_default=False, help="Seed the sampling: the same seed gives the same output.")] = None,
    backend: LMBackendOpt = LMBackendName.auto,
    device: DeviceOpt = None,
    dtype: DtypeOpt = Dtype.auto,
    piece_seconds: Annotated[float, typer.Option(
        "--piece-seconds", min=2.0, help="Longer input is cut at pauses into pieces of at most this long.")] = 110.0,
    mic: Annotated[bool, typer.Option("--mic", help="Translate the microphone live (with --play).")] = False,
    play: Annotated[bool, typer.Option("--play", help="With --mic: speak the translation on the speaker.")] = False,
    input_device: MicDeviceOpt = None,
    output_device: Annotated[Optional[str], typer.Option(
        "--output-device", show_default=False, help="Output device for --play: index or (part of) its name.")] = None,
    duration: MicDurationOpt = None,
    list_devices: ListDevicesOpt = False,
    include: IncludeOpt = None,
    revision: RevisionOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Translate speech with Kyutai's Hibiki (French to English): the translated audio and its timed text.

    Hibiki speaks the translation while it listens; the end of the input is signalled so its
    last words come out. Existing outputs are skipped, so a rerun resumes.
    """
    from ..errors import UsageError
    from .devices import print_devices
    from .output import Out

    out = Out(json_mode=json_out)
    if list_devices:
        return print_devices(out)
    if mic and inputs:
        raise UsageError("give audio files or --mic, not both")
    device_dtype = (device_value(device), dtype.value)
    load = dict(model=model, backend=backend.value, device_dtype=device_dtype, revision=revision, cfg=cfg, seed=seed)
    if mic or play:
        if not (mic and play):
            raise UsageError("live translation listens and speaks: give --mic --play")
        if text or stereo or output:
            raise UsageError("-o, -t and --stereo write files; live translation (--mic) prints its text")
        return _live(out, load, input_device, output_device, duration)
    if duration is not None or input_device is not None or output_device is not None:
        raise UsageError("--duration, --input-device and --output-device go with --mic --play")
    if not inputs:
        raise UsageError("nothing to translate: give audio files or directories, or --mic --play")
    _files(out, inputs, output, text, stereo, fmt, include, overwrite, piece_seconds, load)


def _load(out, model, backend, device_dtype, revision, cfg, seed):
    from .. import translate as lib

    device, dtype = device_dtype
    tr = lib.load_translator(model, backend=backend, device=device, dtype=dtype, revision=revision, cfg=cfg,
                             seed=seed)
    info = tr.describe()
    out.message(f"[dim]model: {tr.name} ({info['lm_backend']} on {info['device']}, codec {info['codec_backend']}); "
                f"cfg {cfg:g}{'' if seed is None else f', seed {seed}'}[/]")
    return tr


def _formats(fmt: str) -> list[str]:
    from .. import translate as lib
    from ..errors import UsageError

    names = list(dict.fromkeys(f.strip().lower() for f in fmt.split(",") if f.strip()))
    known = lib.AUDIO_FORMATS + lib.TEXT_FORMATS
    bad = [f for f in names if f not in known]
    if bad or not names:
        raise UsageError(f"unknown output format {bad[0] if bad else fmt!r} (choose from {', '.join(known)})")
    return names


def _files(out, inputs, output, text, stereo, fmt, include, overwrite, piece_seconds, load) -> None:
    from pathlib import Path

    from .. import translate as lib
    from ..errors import UsageError
    from .batch import exit_on_failure, plan_jobs, run_batch, text_printer

    formats = _formats(fmt)
    single = len(inputs) == 1 and Path(inputs[0]).is_file()
    if (text or stereo) and not single:
        raise UsageError("-t/--text and --stereo name one input's files: give a single input file")
    if text and Path(text).suffix.lstrip(".").lower() not in lib.TEXT_FORMATS:
        raise UsageError(f"{text}: -t writes {', '.join(lib.TEXT_FORMATS)} (by the file's extension)")
    audio_suffix = Path(output).suffix.lstrip(".").lower() if output else ""
    if single and output and audio_suffix in lib.AUDIO_FORMATS:
        formats = [audio_suffix]  # -o names the audio file itself
    elif single and output and audio_suffix:
        raise UsageError(f"{output}: -o names the translated audio ({', '.join(lib.AUDIO_FORMATS)}) or a directory")
    elif single and (text or stereo):
        formats = [f for f in formats if f in lib.AUDIO_FORMATS][:1] if output else []
    suffix = f".{formats[0]}" if formats else ".wav"
    if output is None:
        suffix = ".en" + suffix  # beside the input, never over it
    jobs, failed = plan_jobs(out, inputs, output, suffix, include=include)
    tr = _load(out, **load)
    opts = lib.TranslateOptions(formats=formats, overwrite=overwrite, max_piece_seconds=piece_seconds,
                                min_piece_seconds=piece_seconds / 2)
    live = len(jobs) == 1 and not out.json_mode
    on_text = text_printer(out) if live else None

    def work(tick):
        if single and (text or stereo):
            yield _single(tr, jobs[0], text, stereo, opts, tick, on_text)
            return
        for result in lib.translate_files(jobs, tr, opts, on_audio=tick, on_text=on_text):
            if live:
                out.write("\n", err=True)
            yield result

    exit_on_failure(run_batch(out, "translate", len(jobs), None, work, failed, progress=not live))


def _single(tr, job, text, stereo, opts, tick, on_text):
    """One input with explicitly named files (-o, -t, --stereo); skipped when all exist."""
    import time
    from pathlib import Path

    from .. import translate as lib
    from ..filejobs import FileResult, job_failed, skip_result
    from ..errors import MoshikitError, OutputError

    audio = job.output if opts.formats else None
    named = [p for p in (audio, Path(text) if text else None, Path(stereo) if stereo else None) if p is not None]
    kept = skip_result(job, named, opts.overwrite)
    if kept is not None:
        return kept
    started = time.perf_counter()
    try:
        r = lib.translate_file(tr, job.source, audio_out=audio, text_outs=[Path(text)] if text else [],
                               stereo_out=Path(stereo) if stereo else None, opts=opts, on_audio=tick,
                               on_text=on_text)
    except OutputError as exc:
        return job_failed(job, exc)
    except MoshikitError as exc:
        return FileResult(job.source, None, "failed", str(exc))
    if on_text is not None:
        on_text("\n")
    return FileResult(job.source, str(named[0]), "done", audio_seconds=r.duration, frames=r.steps,
                      seconds=time.perf_counter() - started)


def _live(out, load, input_device, output_device, duration) -> None:
    """Listen on the microphone, speak the translation: chat's live loop on Hibiki."""
    from .. import chat as lib
    from ..conversation import Conversation
    from ..mic import find_devices
    from .batch import text_printer

    find_devices(input_device, output_device, instead=NO_DEVICE_INSTEAD)
    tr = _load(out, **load)
    conv = Conversation(tr.codec, tr.lm, tr.tokenizer)
    times = lib.warm_up(conv)
    out.message(f"[dim]ready: a step takes {times[-1] * 1000:.0f} ms (a frame lasts 80 ms); Ctrl-C to stop[/]")
    engine = lib.LocalEngine(conv)
    cfg = lib.LiveConfig(input_device=input_device, output_device=output_device, aec=False, duration=duration)
    try:
        state = lib.run_live(engine, cfg, on_text=None if out.json_mode else text_printer(out))
    finally:
        engine.close()
    if not out.json_mode:
        out.write("\n", err=True)
    summary = {"seconds": round(state.elapsed, 2), "steps": state.steps, "dropped_in": state.dropped_in,
               "text": state.text.strip(), "pieces": state.pieces}
    if out.json_mode:
        out.json(summary)
    else:
        out.message(f"translated {state.elapsed:.1f} s live ({state.steps} steps, {state.dropped_in} input "
                    "frame(s) dropped)")
