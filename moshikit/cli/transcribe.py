"""moshikit transcribe: Kyutai speech-to-text for files in bulk and live from a microphone."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .options import (AudioOrMicArg, DeviceOpt, Dtype, DtypeOpt, IncludeOpt, JobSource, JsonOpt, ListDevicesOpt,
                      LMBackendName, LMBackendOpt, MicDeviceOpt, MicDurationOpt, OverwriteOpt, RevisionOpt,
                      device_value, with_job_options)



@with_job_options
def transcribe(
    inputs: AudioOrMicArg = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", show_default=False,
        help="Output directory (input trees are mirrored inside), a file name for a single input, "
             "or - to print a single input's transcript. Default: beside each input.")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="txt, srt, vtt, json (words, segments, end of turn) or tsv; a comma list, or all.")] = "txt",
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", show_default=False,
        help="stt (kyutai/stt-1b-en_fr, the default), stt-en (kyutai/stt-2.6b-en), a hub repo id, "
             "a local directory, or 'synthetic' (generated test weights).")] = None,
    backend: LMBackendOpt = LMBackendName.auto,
    device: DeviceOpt = None,
    dtype: DtypeOpt = Dtype.auto,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, show_default=False,
        help="Files transcribed as parallel streams of one batch (default: 16 on a GPU; on a CPU 32 "
             "on moshikit's engine, as RAM allows, 4 with -b torch).")] = None,
    mic: Annotated[bool, typer.Option("--mic", help="Transcribe the microphone live until Ctrl-C.")] = False,
    input_device: MicDeviceOpt = None,
    list_devices: ListDevicesOpt = False,
    duration: MicDurationOpt = None,
    save: Annotated[Optional[str], typer.Option(
        "--save", show_default=False, help="With --mic: keep the audio (mic.wav) and the transcript in this directory.")] = None,
    include: IncludeOpt = None,
    revision: RevisionOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    job: JobSource | None = None,
) -> None:
    """Transcribe speech with Kyutai STT: words with start and end times, subtitles, end of turn.

    Word times are corrected for the model's delay. Many files run as parallel
    streams of one batch; existing outputs are skipped, so a rerun resumes.
    With --ray the same work runs on a Ray cluster (see the Ray cluster options).
    """
    from ..errors import UsageError
    from ..transcript import formats_of
    from .devices import print_devices
    from .output import Out

    out = Out(json_mode=json_out)
    if list_devices:
        return print_devices(out)
    try:
        formats = formats_of(fmt)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    job = job or JobSource()
    manifest = job.manifest
    if mic and (inputs or manifest):
        raise UsageError("give audio files or --mic, not both")
    if not mic and not inputs and not manifest:
        raise UsageError("nothing to transcribe: give audio files or directories, --manifest FILE, or --mic")
    if job.on_ray and (mic or output == "-"):
        raise UsageError("--ray writes transcript files: it goes with neither --mic nor -o -")
    device = (device_value(device), dtype.value)
    if job.on_ray:
        return _ray(out, inputs or [], output, formats, model, backend.value, device, batch_size,
                    include, revision, overwrite, manifest, job.manifest_column, job.ray_options())
    if not mic and (duration is not None or save is not None or input_device is not None):
        raise UsageError("--duration, --save and --input-device go with --mic")
    if mic:
        return _mic(out, model, backend.value, device, revision, input_device, duration, save,
                    formats)
    _files(out, inputs or [], output, formats, model, backend.value, device, batch_size, include,
           revision, overwrite, manifest, job.manifest_column)


def _ray(out, inputs, output, formats, model, backend, device, batch_size, include, revision, overwrite, manifest,
         manifest_column, ray_opts: dict) -> None:
    import os

    from .. import stt
    from .batch import exit_on_failure
    from .distributed import run_on_ray

    # Workers run elsewhere: a local model directory given relatively is made absolute.
    model = os.path.abspath(model) if model and os.path.exists(model) else model
    opts = stt.TranscribeOptions(formats=formats, batch_size=batch_size or 0, overwrite=overwrite)  # 0: per device
    summary = run_on_ray(out, "transcribe", inputs, output, f".{formats[0]}", include=include, manifest=manifest,
                         manifest_column=manifest_column,
                         load={"model": model, "backend": backend, "device": device[0], "dtype": device[1],
                               "revision": revision},
                         opts=opts, **ray_opts)
    exit_on_failure(summary)


def _load(out, model, backend, device_dtype, revision):
    from .. import stt

    device, dtype = device_dtype
    m = stt.load_stt(model, backend=backend, device=device, dtype=dtype, revision=revision)
    info = m.describe()
    prec = f" in {m.precision}" if m.precision else ""
    out.message(f"[dim]model: {m.name} ({info['lm_backend']} on {info['device']}{prec}, codec "
                f"{info['codec_backend']}); text delay {m.delay:g} s[/]")
    return m


def _files(out, inputs, output, formats, model, backend, device, batch_size, include, revision, overwrite,
           manifest=None, manifest_column=None) -> None:
    import shutil
    import tempfile
    from pathlib import Path

    from .. import stt
    from ..errors import UsageError
    from .batch import exit_on_failure, plan_jobs, run_batch, text_printer

    to_stdout = output == "-"
    if to_stdout and (len(inputs) != 1 or Path(inputs[0]).is_dir() or len(formats) != 1):
        raise UsageError("-o - prints one transcript: give one input file and one --format")
    tmp = tempfile.mkdtemp(prefix="moshikit-") if to_stdout else None
    try:
        jobs, failed = plan_jobs(out, inputs, tmp or output, f".{formats[0]}", include=include, manifest=manifest,
                                 manifest_column=manifest_column)
        m = _load(out, model, backend, device, revision)
        if batch_size is None:
            batch_size, why = stt.default_batch(m, files=True)
            if len(jobs) > 1:
                out.message(f"[dim]batch: {why}[/]")
        opts = stt.TranscribeOptions(formats=formats, batch_size=min(batch_size, len(jobs)),
                                     overwrite=overwrite or to_stdout)
        live = len(jobs) == 1 and not out.json_mode and not to_stdout
        on_text = text_printer(out) if live else None

        def work(tick):
            for result in stt.transcribe_files(jobs, m, opts, on_audio=tick, on_text=on_text):
                if live:
                    out.write("\n", err=True)
                yield result

        summary = run_batch(out, "transcribe", len(jobs), None, work, failed, progress=not live)
        if to_stdout and summary["done"]:
            out.write(Path(summary["files"][-1]["output"]).read_text(encoding="utf-8"))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    exit_on_failure(summary)


def _mic(out, model, backend, device, revision, input_device, duration, save, formats) -> None:
    from pathlib import Path

    from .. import stt
    from ..mic import Microphone
    from .batch import text_printer

    # No PortAudio or no microphone: say so, and what works instead, before loading a model.
    mic = Microphone(input_device, seconds=duration, instead="transcribe audio files instead, or see --list-devices")
    m = _load(out, model, backend, device, revision)
    out.message(f"[dim]listening on {mic.name!r}: Ctrl-C to stop[/]")
    recorder = _Recorder(Path(save)) if save else None
    blocks = recorder.tee(mic) if recorder else mic
    turns = (lambda t: out.write(f"  [end of turn {t:.1f} s]\n", err=True)) if not out.json_mode else None
    transcript = stt.transcribe_live(m, blocks, on_text=None if out.json_mode else text_printer(out), on_turn=turns)
    if not out.json_mode:
        out.write("\n", err=True)
    if mic.dropped:
        out.message(f"[yellow]dropped {mic.dropped} audio block(s): the model fell behind real time[/]")
    if recorder:
        outputs = recorder.finish(transcript, formats)
        out.message(f"saved {', '.join(str(p) for p in outputs)}")
    if out.json_mode:
        out.json(transcript.to_json())
    else:
        out.result(transcript.text)


class _Recorder:
    """--save: the microphone's audio as it comes (mic.wav, atomic) and the transcript at the end."""

    def __init__(self, directory) -> None:
        from ..audio import AudioWriter

        self.dir = directory
        self.wav = directory / "mic.wav"
        self._writer = AudioWriter(self.wav, 24000, 1, "wav").__enter__()

    def tee(self, blocks):
        try:
            for block in blocks:
                self._writer.write(block[None])
                yield block
        except (Exception, KeyboardInterrupt):  # a failed write (a full disk...): no partial mic.wav is left
            self._writer.__exit__(*sys.exc_info())
            raise

    def finish(self, transcript, formats) -> list:
        from ..stt import output_paths, write_transcript

        self._writer.__exit__(None, None, None)
        transcript.source = str(self.wav)
        outputs = output_paths(self.dir / "mic.txt", formats)
        write_transcript(transcript, outputs, formats)
        return [self.wav, *outputs]
