"""moshikit speak: Kyutai text-to-speech, to files, to the speaker, streamed, timed, in bulk."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import DeviceOpt, Dtype, DtypeOpt, JsonOpt, ListDevicesOpt, OverwriteOpt, RevisionOpt, device_value

NO_SPEAKER_INSTEAD = "write a file with -o FILE instead, or see --list-devices"


def speak(
    text: Annotated[Optional[str], typer.Argument(
        help="What to say; - reads standard input; a directory speaks every .txt file in it (with -o DIR).",
        show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", show_default=False,
        help="Audio file (.wav, .flac, .ogg Vorbis, .opus) or Mimi tokens (.mimi); a directory for a directory of "
             "texts.")] = None,
    text_file: Annotated[Optional[str], typer.Option(
        "--file", "-f", metavar="FILE", show_default=False, help="Read the text from this file (any length).")] = None,
    words: Annotated[Optional[str], typer.Option(
        "--words", metavar="FILE", show_default=False,
        help="Write each word's start and end (the model's own alignment): .json, .srt or .vtt. "
             "For a directory: the format, written beside each output.")] = None,
    voice: Annotated[Optional[str], typer.Option(
        "--voice", metavar="VOICE", show_default=False,
        help="A voice of kyutai/tts-voices (e.g. expresso/ex03-ex01_happy_001_channel1_334s.wav), a voice "
             "embedding (.safetensors), or an audio sample for models conditioned on one.")] = None,
    list_voices: Annotated[bool, typer.Option("--list-voices", help="List the voices available and exit.")] = False,
    dialogue: Annotated[Optional[str], typer.Option(
        "--dialogue", metavar="JSONL", show_default=False,
        help='A .jsonl of turns, {"speaker": "A", "text": "...", "voice": optional}: two speakers, '
             "one voice each.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", show_default=False,
        help="tts (kyutai/tts-1.6b-en_fr; the default with a GPU), tts-public (kyutai/tts-0.75b-en-public), "
             "pocket-tts (the default without a GPU, if installed), a hub repo id, a local directory, or "
             "'synthetic' (generated test weights).")] = None,
    speed: Annotated[float, typer.Option("--speed", help="Speaking pace, 0.5 to 2 (Kyutai's padding bonus).")] = 1.0,
    temp: Annotated[Optional[float], typer.Option(
        "--temp", min=0.0, show_default=False,
        help="Sampling temperature (0: greedy); default: the model's own (0.6 Kyutai TTS, 0.3 Pocket TTS).")] = None,
    cfg: Annotated[float, typer.Option("--cfg", help="How closely to follow the voice: 1 to 4 in steps of 0.5.")] = 2.0,
    seed: Annotated[Optional[int], typer.Option("--seed", show_default=False,
                                                help="Seed the sampling: the same text speaks the same.")] = None,
    stream: Annotated[bool, typer.Option(
        "--stream", help="Text arrives on stdin over time (e.g. from an LLM): speak each word as it comes.")] = False,
    play: Annotated[bool, typer.Option("--play", help="Play through the speaker as it is generated.")] = False,
    output_device: Annotated[Optional[str], typer.Option(
        "--output-device", show_default=False, help="Speaker for --play: index or (part of) its name.")] = None,
    list_devices: ListDevicesOpt = False,
    backend: Annotated[str, typer.Option("--backend", "-b", metavar="NAME",
                                         help="torch (Kyutai TTS through moshi), cpu (Kyutai TTS on moshikit's CPU "
                                              "engine, the default without a GPU; --dtype int8, bf16 or fp32), mlx, "
                                              "pocket (Pocket TTS, CPU, voice cloning), or auto: the platform's "
                                              "choice.")] = "auto",
    batch: Annotated[Optional[int], typer.Option(
        "--batch", min=1, show_default=False,
        help="For a directory of texts: how many to speak at once (default: 32 on a GPU, 16 on the cpu "
             "engine, 4 on a CPU otherwise).")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = Dtype.auto,
    revision: RevisionOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Speak text with Kyutai TTS: voices, pauses (<break time="0.5s"/>), word timings, any length.

    Long text is cut at sentence ends and spoken as one continuous stream. A directory of
    .txt files is spoken file by file into -o DIR; existing outputs are skipped, so a rerun
    resumes. --stream with --play starts speaking before the input ends.
    """
    from ..errors import UsageError
    from ..tts.model import padding_bonus
    from .devices import print_devices
    from .output import Out

    out = Out(json_mode=json_out)
    if list_devices:
        return print_devices(out)
    from ..backends import registry

    if backend != "auto":
        registry.get_spec("tts", backend)  # an unknown name is one line, before anything loads
    bonus = padding_bonus(speed)
    sources = [x for x in (text, text_file, dialogue) if x is not None]
    if not list_voices and not sources:
        raise UsageError("nothing to say: give the text, -f FILE, - (standard input), --dialogue FILE or a directory")
    if len(sources) > 1:
        raise UsageError("give one of: the text, -f FILE, --dialogue FILE")
    if stream and text != "-":
        raise UsageError("--stream reads standard input: use `speak - --stream`")
    if output_device is not None and not play:
        raise UsageError("--output-device goes with --play")
    if not list_voices and output is None and not play:
        raise UsageError("where to? give -o FILE (.wav, .flac, .ogg, .opus, .mimi) or --play")
    if text is not None and text != "-" and not text.strip():
        raise UsageError("nothing to say: the text is empty")
    from pathlib import Path

    from ..tts.engine import Settings

    settings = Settings(cfg=cfg, padding_bonus=bonus, seed=seed, **({} if temp is None else {"temp": temp}))
    if text is not None and text != "-" and Path(text).is_dir():
        return _tree(out, text, output, words, voice, model, backend, device, dtype, revision, overwrite, settings,
                     batch, temp=temp)
    if batch is not None:
        raise UsageError("--batch goes with a directory of texts")
    from ..tts.files import output_format, words_format

    if output is not None:
        output_format(output)
    if words is not None:
        words_format(words)
    if output is not None and Path(output).exists() and not overwrite:
        raise UsageError(f"{output} exists", hint="add --overwrite to replace it")
    speaker = None
    if play:
        from ..tts.play import Speaker

        speaker = Speaker(output_device, instead=NO_SPEAKER_INSTEAD)  # no speaker: say so before loading
    if list_voices:
        from ..tts import voices_of

        return _list_voices(out, voices_of(model, backend=backend, revision=revision))
    m = _load(out, model, backend, device, dtype, revision)
    _fit(m, settings, temp, words)
    turns, voices, chunks, source = _script(out, m, text, text_file, dialogue, voice, stream)
    _one(out, m, chunks, voices, output, words, settings, speaker, source, stream)


def _load(out, model, backend, device, dtype, revision):
    from ..tts import load_tts

    m = load_tts(model, backend=backend, device=device_value(device),
                 dtype=dtype.value if dtype.value != "auto" else None, revision=revision)
    info = m.describe()
    out.message(f"[dim]model: {m.name} ({m.backend} on {info['device']})[/]")
    if info.get("no_cloning_reason"):  # Pocket TTS on its open weights: say so, never silently
        from rich.markup import escape

        out.message(f"[yellow]no voice cloning: {escape(info['no_cloning_reason'])}; predefined voices only[/]")
    return m


def _fit(m, settings, temp, words) -> None:
    """The model's own default temperature; --words refused by a model without word timings."""
    from ..errors import UsageError

    if temp is None:
        settings.temp = m.default_temp
    if words is not None and not m.word_timings:
        raise UsageError(f"--words: the {m.backend} backend has no word timings (the model has no alignment)",
                         hint="drop --words, or use Kyutai TTS (-b torch)")


def _list_voices(out, found) -> None:
    name, names, where = found
    if out.json_mode:
        out.json({"model": name, "source": where, "voices": names})
        return
    if not names:
        from ..download import download_command

        out.message(f"no voices found in {where}: run `{download_command('tts-voices')}` "
                    "(or name a voice with --voice and it is fetched)")
        return
    out.message(f"[dim]{len(names)} voices ({where}):[/]")
    out.write("".join(n + "\n" for n in names))


def _script(out, m, text, text_file, dialogue, voice, stream):
    """(turns, voices, chunks, source name) for the one input given."""
    from ..catalog import DEFAULT_TTS_VOICE
    from ..errors import UsageError
    from ..tts import text as T
    if dialogue is not None:
        turns = T.read_dialogue(dialogue)
        speakers = list(dict.fromkeys(t.speaker for t in turns))
        if voice is not None:
            raise UsageError("--dialogue takes each speaker's voice from its lines (\"voice\"), not --voice")
        if not m.multi_speaker:
            raise UsageError(f"{m.name} speaks with one voice (an audio prefix): --dialogue needs --model tts")
        defaults = [DEFAULT_TTS_VOICE, _second_voice(m)]
        chosen = []
        for i, sp in enumerate(speakers):
            named = next((t.voice for t in turns if t.speaker == sp and t.voice), None)
            chosen.append(m.resolve_voice(named or defaults[i]))
        return turns, chosen, T.dialogue_chunks(turns), dialogue
    voices = [m.resolve_voice(voice)]
    if text_file is not None:
        return None, voices, T.chunks(T.read_blocks(text_file)), text_file
    if text == "-":
        if stream:
            return None, voices, T.words_as_they_come(_stdin_blocks(out)), "<stdin>"
        return None, voices, T.chunks(_stdin_blocks(out)), "<stdin>"
    return None, voices, T.chunks([text]), "<text>"


def _second_voice(m) -> str:
    from ..catalog import DEFAULT_TTS_VOICE

    names, _ = m.list_voices()
    others = [n for n in names if n != DEFAULT_TTS_VOICE]
    return others[0] if others else "expresso/ex04-ex02_narration_001_channel1_674s.wav"


def _stdin_blocks(out):
    """Standard input as it arrives (not line-buffered: an LLM's words come through at once)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    raw = out.env.stdin.buffer
    while True:
        data = raw.read1(4096)
        if not data:
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
            return
        yield decoder.decode(data)


def _one(out, m, chunks, voices, output, words, settings, speaker, source, stream) -> None:
    import contextlib

    from ..tts.files import speak_to_file

    import time

    show = not out.json_mode and out.err.is_terminal
    state = {"audio": 0.0, "words": 0, "start": time.perf_counter()}

    def on_word(word: str, at: float) -> None:
        state["words"] += 1

    def on_audio(seconds: float) -> None:
        state["audio"] += seconds
        if show:
            speed = state["audio"] / max(1e-9, time.perf_counter() - state["start"])
            out.write(f"\r{state['words']} words, {state['audio']:6.1f} s of audio, {speed:.2f}x real time ", err=True)

    with speaker if speaker is not None else contextlib.nullcontext():
        if speaker is not None:
            out.message(f"[dim]playing on {speaker.name!r}[/]")
        speech = speak_to_file(m, chunks, voices, output, settings, words=words, source=source,
                               on_pcm=speaker.push if speaker is not None else None, on_audio=on_audio,
                               on_word=on_word)
    if show:
        out.write("\n", err=True)
    summary = {
        "output": output, "words_file": words, "model": m.name, "voices": [v.name for v in voices],
        "characters": speech.characters, "words": len(speech.words), "audio_seconds": round(speech.duration, 3),
        "wall_seconds": round(speech.seconds, 3),
        "x_real_time": round(speech.duration / speech.seconds, 3) if speech.seconds > 0 else None,
        "time_to_first_audio": None if speech.first_audio is None else round(speech.first_audio, 3),
        "steps": speech.steps, "complete": speech.ended, "seed": settings.seed, "stream": stream,
    }
    if speaker is not None:
        summary["underruns"] = speaker.underruns
    if "voice_cloning" in m.describe():
        summary["voice_cloning"] = m.describe()["voice_cloning"]
    if out.json_mode:
        out.json(summary)
        return
    ttfa = f"; first audio after {speech.first_audio:.2f} s" if speech.first_audio is not None else ""
    where = f" -> {output}" if output else ""
    out.message(f"spoke {speech.characters} characters, {len(speech.words)} words: {speech.duration:.1f} s of "
                f"audio in {speech.seconds:.1f} s ({summary['x_real_time'] or 0:.2f}x real time){ttfa}{where}")


def _tree(out, directory, output, words, voice, model, backend, device, dtype, revision, overwrite,
          settings, batch, temp=None) -> None:
    from pathlib import Path

    from ..errors import UsageError
    from ..tts.files import OUTPUT_FORMATS, BatchOptions, speak_files
    from .batch import exit_on_failure, plan_jobs, run_batch

    if output is None:
        raise UsageError("a directory of texts needs -o DIR (its tree is mirrored there)")
    out_dir = Path(output)
    suffix = out_dir.suffix.lower() if out_dir.suffix.lower().lstrip(".") in OUTPUT_FORMATS else None
    fmt = "wav"
    if suffix is not None:  # -o audio.flac/ would be odd: a directory named like a file
        raise UsageError(f"-o {output}: for a directory of texts, give an output directory")
    wfmt = None
    if words is not None:
        wfmt = words.lower().lstrip(".").rsplit(".", 1)[-1]
        if wfmt not in ("json", "srt", "vtt"):
            raise UsageError("--words for a directory: json, srt or vtt (written beside each output)")
    jobs, failed = plan_jobs(out, [directory], str(out_dir), f".{fmt}", extensions=(".txt",))
    m = _load(out, model, backend, device, dtype, revision)
    _fit(m, settings, temp, words)
    voices = [m.resolve_voice(voice)]
    from ..tts.files import default_batch

    if not batch:
        batch, why = default_batch(m)
        if len(jobs) > 1:
            out.message(f"[dim]batch: {why}[/]")
    opts = BatchOptions(suffix=f".{fmt}", words=wfmt, overwrite=overwrite, settings=settings, batch=batch)
    exit_on_failure(run_batch(out, "speak", len(jobs), None, lambda tick: speak_files(jobs, m, voices, opts, tick),
                              failed))
