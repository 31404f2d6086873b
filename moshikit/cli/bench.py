"""moshikit bench: latency and throughput, every backend side by side."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import bench_serving
from .bench_common import (
    BackendsOpt, BatchSizesOpt, CompareOpt, JsonFileOpt, ReferenceOpt, RepeatsOpt, SyntheticOpt, backend_opt,
    backends_of, check_lm_size, ints, lm_backends, lm_size_opt, model_opt, report, seconds_opt,
    with_torch_options)
from .options import DeviceOpt, MimiWeightOpt, ModelOpt, device_value

bench_app = typer.Typer(
    help="Measure latency and throughput of each stage; backends side by side in one run.",
    no_args_is_help=False, invoke_without_command=True,
)

@bench_app.command("codec")
@with_torch_options
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
    torch_env: None = None,  # --compile/--no-compile, --cuda-graphs/--no-cuda-graphs, applied (with_torch_options)
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
    plan = bench.CodecPlan(backends_of(backend, "codec"), str(weights.path), reference, sizes, lengths, repeats,
                           frames, num_codebooks, device_value(device), files=file_plan)
    report({"weights": str(weights.path)}, synthetic, lambda: bench.bench_codec(plan), json_file, compare, plot,
            plan.notes)


LMSizeOpt = lm_size_opt("the Moshi 7B architecture, ~15 GB on disk")
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="LM steps timed per batch size.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="bf16, fp16, fp32 or int8 (CPU; moshi's reference "
                                                                 "then runs bf16) (default: bf16 on CUDA, fp32 on "
                                                                 "CPU).", show_default=False)]


def _lm_repo(synthetic: bool, size: str, model: Optional[str]) -> str:
    from .. import bench

    if synthetic:
        return bench.synthetic_moshi_repo(check_lm_size(size))
    from ..hub import resolve_model

    return str(resolve_model(model, kind="moshi").path)


@bench_app.command("lm")
@with_torch_options
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
    torch_env: None = None,  # --compile/--no-compile, --cuda-graphs/--no-cuda-graphs, applied (with_torch_options)
) -> None:
    """One Moshi step (temporal + depth): latency per batch size, real-time capacity, first output."""
    from .. import bench

    sizes = ints(batch_sizes)
    if synthetic and lm_size == "full" and dtype is None:
        dtype = "bf16"  # 7.7 B parameters: 15 GB in bf16, 31 GB in fp32
    repo = _lm_repo(synthetic, lm_size, model)
    plan = bench.LMPlan(lm_backends(backend), repo, reference, sizes, steps, device_value(device), dtype)
    report({"lm": repo, "lm_size": lm_size if synthetic else None}, synthetic, lambda: bench.bench_lm(plan),
            json_file, compare)


@bench_app.command("chat")
@with_torch_options
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
    torch_env: None = None,  # --compile/--no-compile, --cuda-graphs/--no-cuda-graphs, applied (with_torch_options)
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

    report({"lm": repo}, synthetic, rows, json_file, compare, plot)


@bench_app.command("stt")
def stt(
    synthetic: SyntheticOpt = False,
    lm_size: lm_size_opt("the published architecture of -m stt|stt-en") = "tiny",
    model: model_opt("An STT checkpoint (default: stt); with --synthetic --lm-size full: stt or stt-en.") = None,
    backend: backend_opt("cpu, torch or mlx, or several comma-separated (default: the platform's: cpu on a CPU).")
    = None,
    reference: ReferenceOpt = True,
    batch_sizes: BatchSizesOpt = "1,4",
    streams: Annotated[int, typer.Option("--streams", min=1, help="Files transcribed per measurement "
                                                                  "(at least the batch size).")] = 4,
    seconds: seconds_opt("Audio seconds per file.") = 10.0,
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

    if check_lm_size(lm_size) == "full" and synthetic and model not in (None, "stt", "stt-en"):
        raise UsageError("--synthetic --lm-size full builds -m stt or -m stt-en")
    if threads:
        import torch

        torch.set_num_threads(threads)
    path = bench_stt.synthetic_stt_repo(lm_size, model) if synthetic else model
    dtypes = [None if d.strip() in ("", "auto") else d.strip() for d in dtype.split(",")]
    plan = bench_stt.SttPlan(path, backend, reference, ints(batch_sizes), streams, seconds, device_value(device),
                             repeats, dtypes, live_frames)
    report({"stt": path, "lm_size": lm_size if synthetic else None,
             "synthetic_model": (model or "stt") if synthetic else None}, synthetic,
            lambda: bench_stt.bench_stt(plan), json_file, compare, notes=plan.notes)


@bench_app.command("translate")
def translate(
    synthetic: SyntheticOpt = False,
    lm_size: lm_size_opt("Hibiki 1B's architecture, ~3.7 GB on disk") = "tiny",
    model: model_opt("A Hibiki checkpoint (default: hibiki).") = None,
    backend: backend_opt("The LM backend (default: the platform's).") = None,
    reference: ReferenceOpt = True,
    seconds: seconds_opt("Audio seconds translated.") = 10.0,
    cfg: Annotated[float, typer.Option("--cfg", min=0.0, help="Guidance strength, both rows.")] = 1.0,
    repeats: RepeatsOpt = 2,
    device: DeviceOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
) -> None:
    """Hibiki translation throughput (x real time), next to moshi's run_inference in the same run."""
    from ..bench.translate import TranslatePlan, bench_translate, synthetic_hibiki

    plan = TranslatePlan(synthetic_hibiki(check_lm_size(lm_size)) if synthetic else model, backend,
                         device_value(device), seconds, repeats, reference, cfg)
    report({"hibiki": plan.model, "lm_size": lm_size if synthetic else None}, synthetic, lambda: bench_translate(plan), json_file, compare)


@bench_app.command("tts")
def tts(
    synthetic: SyntheticOpt = False,
    model: model_opt("A TTS checkpoint (default: tts).") = None,
    reference: ReferenceOpt = True,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Batch sizes (moshikit's and the reference's).")
                           ] = "1",
    words: Annotated[int, typer.Option("--words", min=1, help="Words spoken per measurement.")] = 20,
    repeats: RepeatsOpt = 2,
    lm_size: lm_size_opt("the tts-1.6b-en_fr architecture, ~3.7 GB") = "tiny",
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

    if check_lm_size(lm_size) == "full" and not synthetic:
        raise UsageError("--lm-size full goes with --synthetic")
    chosen = "synthetic" if synthetic else model
    max_steps = None
    if lm_size == "full":
        from ..synthetic.tts import ensure_full_tts

        chosen = str(ensure_full_tts())
        max_steps = 16 + 2 + round(words / 2.5 * 12.5)  # random weights never finish: a normal pace's steps
    plan = bench_tts.TtsPlan(chosen, device_value(device), reference, ints(batch_sizes), words, repeats,
                             max_steps=max_steps, dtype=dtype, warmup=lm_size != "full",
                             backends=backends_of(backend, "tts"), pocket=pocket, kyutai=kyutai)
    report({"tts": plan.model, "pocket": pocket}, synthetic, lambda: bench_tts.bench_tts(plan), json_file, compare)


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
    codecs = [b for b in backends_of("all", "codec") if b != "mlx" or is_apple_silicon()]
    codec_plan = bench.CodecPlan(codecs, weights, True, [1], [4.0], 2, 20)
    lm_plan = bench.LMPlan(lm_backends("all"), repo, True, [1], 20)

    def rows():
        yield from bench.bench_codec(codec_plan)
        yield from bench.bench_lm(lm_plan)
        yield from bench.bench_chat("auto", "auto", weights, repo, frames=20)  # what `chat` runs here

    report({"lm": repo}, synthetic, rows, json_file, None)


bench_app.command("serve")(bench_serving.serve)
bench_app.command("agent")(bench_serving.agent)
