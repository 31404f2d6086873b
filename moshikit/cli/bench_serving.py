"""The serving stages of ``moshikit bench``: ``serve`` (a server under concurrent clients) and
``agent`` (the voice agent's turn latency); registered on the bench app by ``cli.bench``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .bench_common import (
    CompareOpt, JsonFileOpt, ReferenceOpt, SyntheticOpt, backend_opt, ints, report, seconds_opt)
from .options import DeviceOpt, device_value

def serve(
    stt: Annotated[Optional[str], typer.Option("--stt", metavar="MODEL", show_default=False,
                                               help="Speech-to-text model the server serves (synthetic, stt-1b...).")
                   ] = None,
    tts: Annotated[Optional[str], typer.Option("--tts", metavar="MODEL", show_default=False,
                                               help="Text-to-speech model the server serves (synthetic, pocket...).")
                   ] = None,
    synthetic: SyntheticOpt = False,
    streams: Annotated[str, typer.Option("--streams", metavar="N,N", help="Concurrent clients per measurement, comma-separated.")
                       ] = "1,4",
    seconds: seconds_opt("Audio seconds per STT stream.") = 10.0,
    words: Annotated[int, typer.Option("--words", min=1, help="Words per TTS request.")] = 20,
    stt_batch: Annotated[Optional[int], typer.Option("--stt-batch", min=1, show_default=False,
                                                     help="The server's --stt-batch.")] = None,
    tts_batch: Annotated[Optional[int], typer.Option("--tts-batch", min=1, show_default=False,
                                                     help="The server's --tts-batch.")] = None,
    backend: backend_opt("The server's LM backend (cpu, torch, mlx).") = None,
    tts_backend: Annotated[Optional[str], typer.Option("--tts-backend", metavar="NAME", show_default=False,
                                                       help="The server's TTS backend (torch, cpu, mlx, pocket).")] = None,
    reference: ReferenceOpt = True,
    device: DeviceOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
) -> None:
    """A `moshikit serve` under N concurrent clients over loopback: STT streams at real-time pace
    (time to first word, lag, the most streams held) and TTS requests (first audio, x real time),
    next to the same models run in this process."""
    from ..bench import serve as bench_serve
    from ..errors import UsageError

    if synthetic:
        stt, tts = stt or "synthetic", tts or "synthetic"
    if not (stt or tts):
        raise UsageError("name a model to serve: --stt MODEL, --tts MODEL, or --synthetic for both")
    plan = bench_serve.ServePlan(stt, tts, ints(streams), seconds, words, stt_batch, tts_batch, backend,
                                 tts_backend, device_value(device), reference)
    report({"stt": stt, "tts": tts}, synthetic, lambda: bench_serve.bench_serve(plan), json_file, compare,
            notes=plan.notes)


def agent(
    stt: Annotated[Optional[str], typer.Option("--stt", metavar="MODEL", show_default=False,
                                               help="The agent's speech-to-text model (as `agent --stt`; default: "
                                                    "the agent's here, see `moshikit info`).")] = None,
    tts: Annotated[Optional[str], typer.Option("--tts", metavar="MODEL", show_default=False,
                                               help="The agent's text-to-speech model (as `agent --tts`).")] = None,
    tts_backend: Annotated[Optional[str], typer.Option(
        "--tts-backend", metavar="NAME", show_default=False,
        help="The text-to-speech backend (torch, mlx or pocket; `--tts synthetic --tts-backend pocket`: "
             "a synthetic Pocket TTS).")] = None,
    synthetic: SyntheticOpt = False,
    input: Annotated[Optional[str], typer.Option(
        "--input", "-i", metavar="FILE", show_default=False,
        help="The user's turns, spoken (any audio file; default: --turns utterances of a bundled sample).")] = None,
    turns: Annotated[int, typer.Option("--turns", min=1, help="User turns of the default input.")] = 6,
    words: Annotated[int, typer.Option("--words", min=1, help="Words of each scripted reply.")] = 12,
    tokens_per_second: Annotated[float, typer.Option(
        "--tokens-per-second", min=0.1, help="The scripted LLM's pace (a token is a word).")] = 30.0,
    first_token_delay: Annotated[float, typer.Option(
        "--first-token-delay", metavar="S", min=0.0,
        help="Seconds the scripted LLM waits before its first token (a model's prompt processing).")] = 0.0,
    turn_silence: Annotated[Optional[float], typer.Option(
        "--turn-silence", metavar="S", min=0.1, show_default=False,
        help="End turns on S seconds of silence (as `agent --turn-silence`; --synthetic: 0.8).")] = None,
    reference: ReferenceOpt = True,
    device: DeviceOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
) -> None:
    """`moshikit agent`'s turn latency (end of speech -> end of turn -> first LLM token -> first
    audio) against a local scripted OpenAI-compatible server, next to the LLM's first token and
    the TTS's first audio each alone."""
    from .. import bench
    from ..bench import agent as bench_agent
    from .bench_render import render

    if synthetic:
        stt, tts = stt or "synthetic", tts or "synthetic"
    # Random weights may never end a text: the steps of a normal pace (~2.5 words a second).
    max_steps = 16 + 2 + round(words / 2.5 * 12.5) if tts == "synthetic" else None
    plan = bench_agent.AgentPlan(stt, tts, tts_backend, input, turns, words, tokens_per_second, first_token_delay,
                                 turn_silence, device_value(device), reference, max_steps)
    result = bench.BenchResult(env=bench.environment({"stt": stt, "tts": tts, "tts_backend": tts_backend,
                                                      "input": input,
                                                      "tokens_per_second": tokens_per_second,
                                                      "first_token_delay": first_token_delay}),
                               synthetic=synthetic, notes=plan.notes)
    render(result, lambda: bench_agent.bench_agent(plan), json_file, compare, None)
