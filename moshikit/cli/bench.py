"""moshikit bench: latency and throughput, every backend side by side."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import DeviceOpt, MimiWeightOpt, ModelOpt, device_value, option_group

bench_app = typer.Typer(
    help="Measure latency and throughput of each stage; backends side by side in one run.",
    no_args_is_help=False, invoke_without_command=True,
)

BackendsOpt = Annotated[str, typer.Option(
    "--backend", "-b", help="Comma-separated backends, or 'all' (those installed).")]
SyntheticOpt = Annotated[bool, typer.Option(
    "--synthetic", help="Random/fitted weights in the published architectures: speed only, no download.")]
ReferenceOpt = Annotated[bool, typer.Option(
    "--reference/--no-reference", help="Add rows for the upstream libraries called directly (the baseline).")]
JsonFileOpt = Annotated[Optional[str], typer.Option("--json", help="Write every sample summary to this JSON file.",
                                                    show_default=False)]
CompareOpt = Annotated[Optional[str], typer.Option("--compare", help="Print ratios against an earlier --json file.",
                                                   show_default=False)]
CompileOpt = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", help="torch.compile moshi's helpers (default off: slow to start on a CPU).",
    show_default=False)]
CudaGraphsOpt = Annotated[Optional[bool], typer.Option(
    "--cuda-graphs/--no-cuda-graphs", help="moshi's CUDA graphs (default: moshi's, on with CUDA).",
    show_default=False)]
RepeatsOpt = Annotated[int, typer.Option("--repeats", "-n", min=1, help="Timed repetitions per measurement.")]
BatchSizesOpt = Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")]


def _configure_torch(compile: Optional[bool] = None, cuda_graphs: Optional[bool] = None) -> None:
    from ..backends.torch_env import configure

    configure(compile, cuda_graphs)


#: --compile and --cuda-graphs of the stages that run moshi's torch code, set before the stage starts.
_with_torch_options = option_group("torch_env", {"compile": (CompileOpt, None), "cuda_graphs": (CudaGraphsOpt, None)},
                                   _configure_torch)


def _model_opt(help: str):
    """``--model/-m`` of a stage that names its own kind of checkpoint."""
    return Annotated[Optional[str], typer.Option("--model", "-m", show_default=False, help=help)]


def _backend_opt(help: str):
    """``--backend/-b`` of a stage whose default is the platform's choice."""
    return Annotated[Optional[str], typer.Option("--backend", "-b", show_default=False, help=help)]


def _lm_size_opt(full: str):
    """``--lm-size``: what ``full`` builds with --synthetic."""
    return Annotated[str, typer.Option("--lm-size",
                                       help=f"With --synthetic: tiny (seconds to build) or full ({full}).")]


def _seconds_opt(help: str):
    return Annotated[float, typer.Option("--seconds", min=1.0, help=help)]


def _lm_size(value: str) -> str:
    from ..errors import UsageError

    if value not in ("tiny", "full"):
        raise UsageError(f"--lm-size must be tiny or full, not {value!r}")
    return value


def _report(env: dict, synthetic: bool, rows, json_file: Optional[str], compare: Optional[str],
            plot: Optional[str] = None, notes: Optional[list] = None) -> None:
    """Run a stage's rows under the live status, then the table, notes, comparison, --json and --plot.
    ``notes`` is the plan's own list: what the stage skips while running lands there."""
    from .. import bench
    from .bench_render import render

    result = bench.BenchResult(env=bench.environment(env), synthetic=synthetic,
                               notes=notes if notes is not None else [])
    render(result, rows, json_file, compare, plot)


def _backends(value: str, kind: str) -> list[str]:
    from ..backends import registry

    if value == "all":
        return [n for n in registry.names(kind) if registry.probe(kind, n)[0]]
    names = [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        registry.get_spec(kind, n)
    return names


def _lm_backends(value: str) -> list[str]:
    """The LM backends of ``bench lm``: "all" leaves out the CPU engine (it runs speech-to-text
    models only for now; ``bench stt`` measures it)."""
    names = _backends(value, "lm")
    return [n for n in names if n != "cpu"] if value == "all" else names


@bench_app.command("codec")
@_with_torch_options
def codec(
    backend: BackendsOpt = "all",
    synthetic: SyntheticOpt = False,
    reference: ReferenceOpt = True,
    batch_sizes: BatchSizesOpt = "1",
    seconds: Annotated[str, typer.Option("--seconds", metavar="S,S...",
                                         help="Comma-separated clip lengths (s).")] = "10",
    frames: Annotated[int, typer.Option("--stream-frames", min=0, help="80 ms frames timed in streaming.")] = 50,
    num_codebooks: Annotated[int, typer.Option("--num-codebooks", "-k", min=1, max=32)] = 8,
    files: Annotated[Optional[str], typer.Option(
        "--files", metavar="COUNTxSECONDS", show_default=False,
        help="e.g. 40x2: time `encode` on that many short files against one file as long as all of them.")] = None,
    repeats: RepeatsOpt = 3,
    device: DeviceOpt = None,
    mimi_weight: MimiWeightOpt = None,
    model: ModelOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Save a latency histogram PNG (needs matplotlib).",
                                                show_default=False)] = None,
    torch_env: None = None,  # --compile/--no-compile, --cuda-graphs/--no-cuda-graphs, applied (_with_torch_options)
) -> None:
    """Mimi batch encode/decode throughput and streaming per-frame latency."""
    from .. import bench
    from ..errors import UsageError
    from ..hub import resolve_mimi

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
        lengths = [float(s) for s in seconds.split(",")]
    except ValueError:
        raise UsageError("--batch-sizes and --seconds take comma-separated numbers") from None
    file_plan = None
    if files:
        count, _, secs = files.lower().partition("x")
        try:
            file_plan = (int(count), float(secs))
        except ValueError:
            file_plan = None
        if not file_plan or file_plan[0] < 1 or file_plan[1] <= 0:
            raise UsageError(f"--files takes COUNTxSECONDS, e.g. 40x2, not {files!r}")
    weights = resolve_mimi(mimi_weight, "synthetic" if synthetic else model)
    plan = bench.CodecPlan(_backends(backend, "codec"), str(weights.path), reference, sizes, lengths, repeats,
                           frames, num_codebooks, device_value(device), files=file_plan)
    _report({"weights": str(weights.path)}, synthetic, lambda: bench.bench_codec(plan), json_file, compare, plot,
            plan.notes)


LMSizeOpt = _lm_size_opt("the Moshi 7B architecture, ~15 GB on disk")
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="LM steps timed per batch size.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="bf16, fp16 or fp32 (default: bf16 on CUDA, "
                                                                 "fp32 on CPU).", show_default=False)]


def _lm_repo(synthetic: bool, size: str, model: Optional[str]) -> str:
    from .. import bench

    if synthetic:
        return bench.synthetic_moshi_repo(_lm_size(size))
    from ..hub import resolve_model

    return str(resolve_model(model, kind="moshi").path)


@bench_app.command("lm")
@_with_torch_options
def lm(
    backend: BackendsOpt = "all",
    synthetic: SyntheticOpt = False,
    lm_size: LMSizeOpt = "tiny",
    reference: ReferenceOpt = True,
    batch_sizes: BatchSizesOpt = "1",
    steps: StepsOpt = 50,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    model: ModelOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
    torch_env: None = None,  # --compile/--no-compile, --cuda-graphs/--no-cuda-graphs, applied (_with_torch_options)
) -> None:
    """One Moshi step (temporal + depth): latency per batch size, real-time capacity, first output."""
    from .. import bench

    sizes = _ints(batch_sizes)
    if synthetic and lm_size == "full" and dtype is None:
        dtype = "bf16"  # 7.7 B parameters: 15 GB in bf16, 31 GB in fp32
    repo = _lm_repo(synthetic, lm_size, model)
    plan = bench.LMPlan(_lm_backends(backend), repo, reference, sizes, steps, device_value(device), dtype)
    _report({"lm": repo, "lm_size": lm_size if synthetic else None}, synthetic, lambda: bench.bench_lm(plan),
            json_file, compare)


@bench_app.command("chat")
@_with_torch_options
def chat(
    synthetic: SyntheticOpt = False,
    lm_size: LMSizeOpt = "tiny",
    codec_backend: Annotated[str, typer.Option("--codec-backend", help="auto: the codec chat uses here.")] = "auto",
    lm_backend: Annotated[str, typer.Option("--lm-backend", help="auto: the LM chat uses here.")] = "auto",
    frames: Annotated[int, typer.Option("--frames", min=1, help="80 ms frames timed.")] = 50,
    device: DeviceOpt = None,
    mimi_weight: MimiWeightOpt = None,
    model: ModelOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
    plot: Annotated[Optional[str], typer.Option("--plot", show_default=False)] = None,
    torch_env: None = None,  # --compile/--no-compile, --cuda-graphs/--no-cuda-graphs, applied (_with_torch_options)
) -> None:
    """The whole loop per 80 ms frame (encode + LM step + decode), unpaced and paced."""
    from .. import bench
    from ..hub import resolve_mimi

    repo = _lm_repo(synthetic, lm_size, model)
    weights = str(resolve_mimi(mimi_weight, "synthetic" if synthetic else model).path)
    dev = device_value(device)

    def rows():
        for paced in (False, True):
            yield from bench.bench_chat(codec_backend, lm_backend, weights, repo, frames=frames, device=dev,
                                        paced=paced)

    _report({"lm": repo}, synthetic, rows, json_file, compare, plot)


@bench_app.command("stt")
def stt(
    synthetic: SyntheticOpt = False,
    lm_size: _lm_size_opt("the published architecture of -m stt|stt-en") = "tiny",
    model: _model_opt("An STT checkpoint (default: stt); with --synthetic --lm-size full: stt or stt-en.") = None,
    backend: _backend_opt("cpu, torch or mlx, or several comma-separated (default: the platform's: cpu on a CPU).")
    = None,
    reference: ReferenceOpt = True,
    batch_sizes: BatchSizesOpt = "1,4",
    streams: Annotated[int, typer.Option("--streams", min=1, help="Files transcribed per measurement "
                                                                  "(at least the batch size).")] = 4,
    seconds: _seconds_opt("Audio seconds per file.") = 10.0,
    dtype: Annotated[str, typer.Option("--dtype", help="Comma-separated moshikit precisions: auto (what "
                                                       "transcribe picks), int8, bf16, fp32...")] = "auto",
    live_frames: Annotated[int, typer.Option("--live-frames", min=0, help="Frames of the live row (one stream "
                                                                          "paced in real time); 0: none.")] = 50,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, show_default=False,
                                                   help="torch threads for every row (default: torch's).")] = None,
    repeats: RepeatsOpt = 2,
    device: DeviceOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
) -> None:
    """Transcription throughput (x real time) per batch size and live latency, next to moshi's own loop."""
    from ..bench import stt as bench_stt
    from ..errors import UsageError

    if _lm_size(lm_size) == "full" and synthetic and model not in (None, "stt", "stt-en"):
        raise UsageError("--synthetic --lm-size full builds -m stt or -m stt-en")
    if threads:
        import torch

        torch.set_num_threads(threads)
    path = bench_stt.synthetic_stt_repo(lm_size, model) if synthetic else model
    dtypes = [None if d.strip() in ("", "auto") else d.strip() for d in dtype.split(",")]
    plan = bench_stt.SttPlan(path, backend, reference, _ints(batch_sizes), streams, seconds, device_value(device),
                             repeats, dtypes, live_frames)
    _report({"stt": path, "lm_size": lm_size if synthetic else None,
             "synthetic_model": (model or "stt") if synthetic else None}, synthetic,
            lambda: bench_stt.bench_stt(plan), json_file, compare, notes=plan.notes)


@bench_app.command("translate")
def translate(
    synthetic: SyntheticOpt = False,
    model: _model_opt("A Hibiki checkpoint (default: hibiki).") = None,
    backend: _backend_opt("The LM backend (default: the platform's).") = None,
    reference: ReferenceOpt = True,
    seconds: _seconds_opt("Audio seconds translated.") = 10.0,
    cfg: Annotated[float, typer.Option("--cfg", min=0.0, help="Guidance strength, both rows.")] = 1.0,
    repeats: RepeatsOpt = 2,
    device: DeviceOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
) -> None:
    """Hibiki translation throughput (x real time), next to moshi's run_inference in the same run."""
    from ..bench.translate import TranslatePlan, bench_translate

    plan = TranslatePlan("synthetic" if synthetic else model, backend, device_value(device), seconds, repeats,
                         reference, cfg)
    _report({"hibiki": plan.model}, synthetic, lambda: bench_translate(plan), json_file, compare)


@bench_app.command("tts")
def tts(
    synthetic: SyntheticOpt = False,
    model: _model_opt("A TTS checkpoint (default: tts).") = None,
    reference: ReferenceOpt = True,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Batch sizes (moshikit's and the reference's).")
                           ] = "1",
    words: Annotated[int, typer.Option("--words", min=1, help="Words spoken per measurement.")] = 20,
    repeats: RepeatsOpt = 2,
    lm_size: _lm_size_opt("the tts-1.6b-en_fr architecture, ~3.7 GB") = "tiny",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="moshikit's Kyutai TTS backends: comma-separated, "
                                         "or 'all' (those installed; Pocket TTS is --pocket).")] = "torch",
    pocket: Annotated[Optional[str], typer.Option(
        "--pocket", metavar="MODEL", show_default=False,
        help="Also Pocket TTS (pocket-tts, synthetic, or a folder), next to pocket-tts's own API.")] = None,
    kyutai: Annotated[bool, typer.Option("--kyutai/--no-kyutai", help="The Kyutai TTS rows.")] = True,
) -> None:
    """Text to speech: time to first audio and x real time, next to moshi's TTSModel.generate (and Pocket TTS)."""
    from ..bench import tts as bench_tts
    from ..errors import UsageError

    if _lm_size(lm_size) == "full" and not synthetic:
        raise UsageError("--lm-size full goes with --synthetic")
    chosen = "synthetic" if synthetic else model
    max_steps = None
    if lm_size == "full":
        from ..synthetic.tts import ensure_full_tts

        chosen = str(ensure_full_tts())
        max_steps = 16 + 2 + round(words / 2.5 * 12.5)  # random weights never finish: a normal pace's steps
    plan = bench_tts.TtsPlan(chosen, device_value(device), reference, _ints(batch_sizes), words, repeats,
                             max_steps=max_steps, dtype=dtype, warmup=lm_size != "full",
                             backends=_backends(backend, "tts"), pocket=pocket, kyutai=kyutai)
    _report({"tts": plan.model, "pocket": pocket}, synthetic, lambda: bench_tts.bench_tts(plan), json_file, compare)


@bench_app.command("serve")
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
    seconds: _seconds_opt("Audio seconds per STT stream.") = 10.0,
    words: Annotated[int, typer.Option("--words", min=1, help="Words per TTS request.")] = 20,
    stt_batch: Annotated[Optional[int], typer.Option("--stt-batch", min=1, show_default=False,
                                                     help="The server's --stt-batch.")] = None,
    tts_batch: Annotated[Optional[int], typer.Option("--tts-batch", min=1, show_default=False,
                                                     help="The server's --tts-batch.")] = None,
    backend: _backend_opt("The server's LM backend (cpu, torch, mlx).") = None,
    tts_backend: Annotated[Optional[str], typer.Option("--tts-backend", metavar="NAME", show_default=False,
                                                       help="The server's TTS backend (torch, mlx, pocket).")] = None,
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
    plan = bench_serve.ServePlan(stt, tts, _ints(streams), seconds, words, stt_batch, tts_batch, backend,
                                 tts_backend, device_value(device), reference)
    _report({"stt": stt, "tts": tts}, synthetic, lambda: bench_serve.bench_serve(plan), json_file, compare,
            notes=plan.notes)


@bench_app.command("agent")
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


@bench_app.callback()
def quick(ctx: typer.Context, synthetic: SyntheticOpt = False,
          json_file: JsonFileOpt = None) -> None:
    """Run with no subcommand: a short version of every stage (codec, lm, chat)."""
    if ctx.invoked_subcommand is not None:
        if synthetic or json_file:
            from ..errors import UsageError

            raise UsageError("put --synthetic/--json after the stage: moshikit bench codec --synthetic")
        return
    from .. import bench
    from ..hub import resolve_mimi

    weights = str(resolve_mimi(None, "synthetic" if synthetic else None).path)
    repo = _lm_repo(synthetic, "tiny", None)
    from ..platform import is_apple_silicon

    # MLX off Apple silicon runs on a reference BLAS (~0.6x real time): leave it to `bench codec -b mlx`.
    codecs = [b for b in _backends("all", "codec") if b != "mlx" or is_apple_silicon()]
    codec_plan = bench.CodecPlan(codecs, weights, True, [1], [4.0], 2, 20)
    lm_plan = bench.LMPlan(_lm_backends("all"), repo, True, [1], 20)

    def rows():
        yield from bench.bench_codec(codec_plan)
        yield from bench.bench_lm(lm_plan)
        yield from bench.bench_chat("auto", "auto", weights, repo, frames=20)  # what `chat` runs here

    _report({"lm": repo}, synthetic, rows, json_file, None)


def _ints(value: str) -> list[int]:
    from ..errors import UsageError

    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise UsageError(f"expected comma-separated whole numbers, not {value!r}") from None
