"""moshikit agent: any OpenAI-compatible chat model, listening through Kyutai STT and speaking
through Kyutai TTS (Kyutai's Unmute on one machine). Offline over a recording for now."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import ExitStatus
from .options import DeviceOpt, JsonOpt, OverwriteOpt, device_value


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
    llm_url: Annotated[str, typer.Option(
        "--llm-url", metavar="URL",
        help="An OpenAI-compatible server (ollama, llama.cpp's llama-server, vLLM, a hosted API); an API key "
             "is read from MOSHIKIT_LLM_KEY.")] = "http://localhost:11434/v1",
    llm_model: Annotated[Optional[str], typer.Option(
        "--llm-model", metavar="NAME", show_default=False,
        help="The chat model's name on that server (ollama: `ollama list`).")] = None,
    system: Annotated[Optional[str], typer.Option(
        "--system", metavar="TEXT|FILE", show_default=False, help="The system prompt, or a file holding it.")] = None,
    voice: Annotated[Optional[str], typer.Option(
        "--voice", metavar="VOICE", show_default=False, help="The agent's voice (as `speak --voice`).")] = None,
    stt_model: Annotated[Optional[str], typer.Option(
        "--stt", metavar="MODEL", show_default=False,
        help="Speech-to-text model (as `transcribe -m`): stt (kyutai/stt-1b-en_fr, with pause prediction), "
             "stt-en, a path, or 'synthetic'. Default: this machine's (see `moshikit info`).")] = None,
    tts_model: Annotated[Optional[str], typer.Option(
        "--tts", metavar="MODEL", show_default=False,
        help="Text-to-speech model (as `speak -m`): tts, pocket-tts, a path, or 'synthetic'. Default: this "
             "machine's (see `moshikit info`).")] = None,
    turn_threshold: Annotated[float, typer.Option(
        "--turn-threshold", min=0.0, max=1.0,
        help="End of turn when the STT's pause prediction (stt-1b's 2 s head, as Kyutai's Unmute reads it) "
             "is above this.")] = 0.5,
    turn_silence: Annotated[Optional[float], typer.Option(
        "--turn-silence", metavar="S", min=0.1, show_default=False,
        help="End turns after S seconds of silence instead (voice activity): the way for STT models without "
             "pause heads (stt-en), which use 0.8 s when this is not given.")] = None,
    history_chars: Annotated[int, typer.Option(
        "--history-chars", min=200,
        help="The most text of past turns each request carries (the oldest turns go first; ~4 characters "
             "a token).")] = 12000,
    llm_timeout: Annotated[float, typer.Option(
        "--llm-timeout", min=0.1, help="Seconds the LLM server may stay silent before the turn fails.")] = 30.0,
    seed: Annotated[Optional[int], typer.Option("--seed", show_default=False,
                                                help="Seed the TTS's sampling.")] = None,
    device: DeviceOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Talk with any LLM: Kyutai STT hears each turn, an OpenAI-compatible chat model answers as it
    streams, Kyutai TTS speaks its words as they come; the user can interrupt (barge-in).

    For now the agent runs over a recording (-i): the conversation comes out as a stereo file
    (-o) and a JSON of turns with their latencies (-t). LLM errors (server down, unknown model,
    HTTP errors, timeouts) are one line each and the next turn tries again.
    """
    import os
    from pathlib import Path

    from ..errors import UsageError
    from .output import Out

    out = Out(json_mode=json_out)
    if input is None:
        raise UsageError("give the user's side with -i FILE (the live microphone mode is not there yet)")
    if not llm_model:
        raise UsageError("which chat model? give --llm-model NAME (ollama: `ollama list`)")
    for path, what in ((output, "-o"), (turns, "-t")):
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
    pcm = read_24k(input)[0]
    from .. import stt
    from ..tts import load_tts
    from ..tts.engine import Settings
    from ..agent.models import choices

    dev = device_value(device)
    stt_pick, tts_pick = choices(stt_model, tts_model, dev)  # the `agent` row of `moshikit info`
    s = stt.load_stt(stt_model, backend=stt_pick.backend, device=stt_pick.device)
    out.message(f"[dim]stt: {s.name} ({s.lm.info.backend} on {s.lm.info.device}); text delay {s.delay:g} s[/]")
    t = load_tts(tts_model, backend=tts_pick.backend, device=tts_pick.device)
    out.message(f"[dim]tts: {t.name} ({t.backend} on {t.describe().get('device', '?')})[/]")
    voices = [t.resolve_voice(voice)]
    settings = Settings(seed=seed, temp=t.default_temp)
    options = TurnOptions(threshold=turn_threshold, silence=turn_silence)
    from ..agent.offline import OfflineAgent, write_outputs

    def on_turn(turn) -> None:
        from rich.markup import escape

        lat = turn.latency()
        parts = [f"{k.replace('_to_', ' -> ').replace('_', ' ')} {v:.2f} s" for k, v in lat.items()
                 if v is not None and k != "end_of_speech_to_first_audio"]
        out.message(f"[bold]you[/] ({turn.end_of_turn:.2f} s, by {turn.by}): {escape(turn.user)}")
        if turn.heard or turn.status != "error":
            cut = f" [yellow](interrupted at {turn.interrupted_at:.2f} s)[/]" if turn.interrupted_at else ""
            out.message(f"[bold]agent[/]: {escape(turn.heard)}{cut}")
        if parts:
            out.message(f"[dim]  {'; '.join(parts)}[/]")

    def on_error(line: str) -> None:  # shown in --json mode too (stderr)
        out.status(f"llm: {line} (the next turn tries again)")

    runner = OfflineAgent(s, t, voices, settings, client, options, system=prompt, max_history_chars=history_chars,
                          on_turn=on_turn, on_error=on_error)
    out.message(f"[dim]{runner.options.describe(runner.has_pause_heads, s.name)}; llm: {llm_model} at {llm_url}[/]")
    result = runner.run(pcm, input)
    meta = {"input": input, "output": output, "turns_file": turns, "llm": {"url": llm_url, "model": llm_model},
            "stt": s.name, "tts": t.name, "voice": voices[0].name, "system": prompt}
    summary = write_outputs(result, output, turns, meta)
    answered = sum(1 for x in result.turns if x.status != "error")
    if out.json_mode:
        out.json(summary)
    else:
        where = "".join(f" -> {p}" for p in (output, turns) if p)
        out.message(f"{len(result.turns)} turns, {answered} answered, {result.duration:.1f} s{where}")
    if result.turns and not answered:
        raise typer.Exit(ExitStatus.FAILED)
