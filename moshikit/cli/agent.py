"""moshikit agent: any OpenAI-compatible chat model, listening through Kyutai STT and speaking
through Kyutai TTS (Kyutai's Unmute on one machine): live on the sound card, or over a recording."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import ExitStatus
from .options import (DeviceOpt, HistoryCharsOpt, JsonOpt, LLMModelOpt, LLMTimeoutOpt, LLMUrlOpt, OverwriteOpt,
                      SystemOpt, TurnSilenceOpt, TurnThresholdOpt, VoiceOpt, device_value)


def agent(
    input: Annotated[Optional[str], typer.Option(
        "--input", "-i", metavar="FILE", show_default=False,
        help="The user's side of a conversation (any audio file): the agent listens to it on its own "
             "timeline and answers each turn.")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE", show_default=False,
        help="The conversation as a stereo file: the user left, the agent right (.wav, .flac, .ogg).")] = None,
    turns: Annotated[Optional[str], typer.Option(
        "--turns", "-t", metavar="FILE", show_default=False,
        help="A JSON of turns: what was said and heard, times, and each turn's latency parts (end of "
             "speech -> end of turn -> first LLM token -> first audio).")] = None,
    llm_url: LLMUrlOpt = "http://localhost:11434/v1",
    llm_model: LLMModelOpt = None,
    system: SystemOpt = None,
    voice: VoiceOpt = None,
    stt_model: Annotated[Optional[str], typer.Option(
        "--stt", metavar="MODEL", show_default=False,
        help="Speech-to-text model (as `transcribe -m`): stt (kyutai/stt-1b-en_fr, with pause prediction), "
             "stt-en, a path, or 'synthetic'. Default: this machine's (see `moshikit info`).")] = None,
    tts_model: Annotated[Optional[str], typer.Option(
        "--tts", metavar="MODEL", show_default=False,
        help="Text-to-speech model (as `speak -m`): tts, pocket-tts, a path, or 'synthetic'. Default: this "
             "machine's (see `moshikit info`).")] = None,
    tts_backend: Annotated[Optional[str], typer.Option(
        "--tts-backend", metavar="NAME", show_default=False,
        help="The text-to-speech backend (torch, mlx or pocket; `--tts synthetic --tts-backend pocket`: a "
             "synthetic Pocket TTS). Default: as `speak` chooses.")] = None,
    turn_threshold: TurnThresholdOpt = 0.5,
    turn_silence: TurnSilenceOpt = None,
    history_chars: HistoryCharsOpt = 12000,
    llm_timeout: LLMTimeoutOpt = 30.0,
    seed: Annotated[Optional[int], typer.Option("--seed", show_default=False,
                                                help="Seed the TTS's sampling.")] = None,
    input_device: Annotated[Optional[str], typer.Option(
        "--input-device", show_default=False, help="Live: the microphone, an index or (part of) its name.")] = None,
    output_device: Annotated[Optional[str], typer.Option(
        "--output-device", show_default=False, help="Live: the speaker, an index or (part of) its name.")] = None,
    list_devices: Annotated[bool, typer.Option("--list-devices", help="List audio devices and exit.")] = False,
    aec: Annotated[bool, typer.Option("--aec/--no-aec", help="Live: cancel the agent's echo from the microphone "
                                                             "(--no-aec with headphones).")] = True,
    record: Annotated[Optional[str], typer.Option(
        "--record", metavar="DIR", show_default=False,
        help="Live: write the session into DIR when it ends: a stereo wav (you left, the agent right) and a "
             "JSON of turns with times and latencies.")] = None,
    duration: Annotated[Optional[float], typer.Option(
        "--duration", metavar="S", min=0.1, show_default=False, help="Live: stop after S seconds.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Live: plain lines, even on a terminal.")] = False,
    device: DeviceOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Talk with any LLM: Kyutai STT hears each turn, an OpenAI-compatible chat model answers as it
    streams, Kyutai TTS speaks its words as they come; the user can interrupt (barge-in).

    Live (default): the microphone in, the speaker out, echo cancellation on; the panel shows what
    you say, the LLM's text as it streams, meters and each turn's latency split. q or Ctrl-C ends
    the session (--record DIR keeps it). Over a recording (-i): the conversation comes out as a
    stereo file (-o) and a JSON of turns with their latencies (-t). LLM errors (server down,
    unknown model, HTTP errors, timeouts) are one line each and the next turn tries again.
    """
    import os
    from pathlib import Path

    from ..errors import UsageError
    from .output import Out

    out = Out(json_mode=json_out)
    if list_devices:
        from .devices import print_devices

        return print_devices(out)
    if not llm_model:
        raise UsageError("which chat model? give --llm-model NAME (ollama: `ollama list`)")
    live = {"--input-device": input_device, "--output-device": output_device, "--record": record,
            "--duration": duration}
    if input is None:
        if output is not None or turns is not None:
            raise UsageError("-o and -t go with -i FILE (a live session keeps itself with --record DIR)")
        if record is not None and Path(record).exists() and not Path(record).is_dir():
            raise UsageError(f"--record {record}: not a directory")
        from ..mic import find_devices
        from ..agent.live import NO_DEVICE_INSTEAD

        # No PortAudio, no microphone or no speaker: said before any model loads.
        find_devices(input_device, output_device, instead=NO_DEVICE_INSTEAD)
        if aec:
            from ..aec import probe

            probe()
    else:
        given = [k for k, v in live.items() if v is not None] + (["--plain"] if plain else [])
        if given:
            raise UsageError(f"{', '.join(given)} go with a live session, not -i")
    for path in (output, turns):
        if path is not None and Path(path).exists() and not overwrite:
            raise UsageError(f"{path} exists", hint="add --overwrite to replace it")
    if output is not None:
        from ..audio import audio_format

        if audio_format(Path(output)) not in ("wav", "flac", "ogg"):
            raise UsageError(f"-o {output}: write the conversation as .wav, .flac or .ogg")
    from ..agent.llm import ChatClient
    from ..agent.turns import TurnOptions, read_system
    from ..audio import read_24k

    prompt = read_system(system)
    client = ChatClient(llm_url, llm_model, timeout=llm_timeout, api_key=os.environ.get("MOSHIKIT_LLM_KEY") or None)
    pcm = None if input is None else read_24k(input)[0]
    from .. import stt
    from ..tts import load_tts
    from ..tts.engine import Settings
    from ..agent.models import choices

    dev = device_value(device)
    stt_pick, tts_pick = choices(stt_model, tts_model, dev, tts_backend)  # the `agent` row of `moshikit info`
    s = stt.load_stt(stt_model, backend=stt_pick.backend, device=stt_pick.device)
    out.message(f"[dim]stt: {s.name} ({s.lm.info.backend} on {s.lm.info.device}); text delay {s.delay:g} s[/]")
    t = load_tts(tts_model, backend=tts_pick.backend, device=tts_pick.device)
    out.message(f"[dim]tts: {t.name} ({t.backend} on {t.describe().get('device', '?')})[/]")
    voices = [t.resolve_voice(voice)]
    settings = Settings(seed=seed, temp=t.default_temp)
    options = TurnOptions(threshold=turn_threshold, silence=turn_silence)
    from ..agent.offline import OfflineAgent, write_outputs

    meta = {"input": input, "output": output, "turns_file": turns, "llm": {"url": llm_url, "model": llm_model},
            "stt": s.name, "tts": t.name, "voice": voices[0].name, "system": prompt}

    def make(**callbacks) -> OfflineAgent:
        return OfflineAgent(s, t, voices, settings, client, options, system=prompt, max_history_chars=history_chars,
                            **callbacks)

    if input is None:
        summary = _live(out, make, meta, input_device, output_device, aec, record, duration, plain)
    else:
        from .agent_ui import turn_lines

        def on_turn(turn) -> None:
            for line in turn_lines(turn):
                out.message(line)

        def on_error(line: str) -> None:  # shown in --json mode too (stderr)
            out.status(f"llm: {line} (the next turn tries again)")

        runner = make(on_turn=on_turn, on_error=on_error)
        out.message(f"[dim]{runner.options.describe(runner.has_pause_heads, s.name)}; llm: {llm_model} at {llm_url}[/]")
        result = runner.run(pcm, input)
        summary = write_outputs(result, output, turns, meta)
    answered = sum(1 for x in summary["turns"] if x["status"] != "error")
    if out.json_mode:
        out.json(summary)
    else:
        where = "".join(f" -> {p}" for p in (output, turns, summary.get("record")) if p)
        out.message(f"{len(summary['turns'])} turns, {answered} answered, {summary['duration']:.1f} s{where}")
    if summary["turns"] and not answered:
        raise typer.Exit(ExitStatus.FAILED)


def _live(out, make, meta, input_device, output_device, aec, record, duration, plain) -> dict:
    """The live session: devices, the panel, and the summary (the record written when asked)."""
    from ..agent.live import LiveAgent, LiveOptions, warm_up
    from ..agent.offline import write_outputs
    from .agent_ui import AgentUI

    options = LiveOptions(input_device=input_device, output_device=output_device, aec=aec, duration=duration)
    with AgentUI(out, plain=plain) as ui:
        session = LiveAgent(options, on_update=ui.update, on_turn=ui.turn, on_error=ui.error, keys=ui.keys)
        runner = make(**session.callbacks())
        out.message(f"[dim]{runner.options.describe(runner.has_pause_heads, meta['stt'])}; "
                    f"llm: {meta['llm']['model']} at {meta['llm']['url']}[/]")
        warm_up(runner.stt, runner.tts, runner.voices, runner.settings)  # before the devices open: first steps are slow
        result = session.run(runner)
    wav = js = None
    if record is not None:
        import time
        from pathlib import Path

        stamp = time.strftime("%Y%m%d-%H%M%S")
        base, n = f"agent-{stamp}", 1
        while (Path(record) / f"{base}.wav").exists() or (Path(record) / f"{base}.json").exists():
            n += 1
            base = f"agent-{stamp}-{n}"
        wav, js = str(Path(record) / f"{base}.wav"), str(Path(record) / f"{base}.json")
    summary = write_outputs(result, wav, js, {**meta, "input": "<microphone>", "live": session.summary()})
    if record is not None:
        summary["record"] = {"wav": wav, "turns": js}
    return summary
