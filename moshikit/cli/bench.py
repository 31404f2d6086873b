"""moshikit bench: latency and throughput, every backend side by side."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import DeviceOpt, MimiWeightOpt, ModelOpt, device_value

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
RepeatsOpt = Annotated[int, typer.Option("--repeats", "-n", min=1, help="Timed repetitions per measurement.")]


def _backends(value: str, kind: str) -> list[str]:
    from ..backends import registry

    if value == "all":
        return [n for n in registry.names(kind) if registry.probe(kind, n)[0]]
    names = [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        registry.get_spec(kind, n)
    return names


@bench_app.command("codec")
def codec(
    backend: BackendsOpt = "all",
    synthetic: SyntheticOpt = False,
    reference: ReferenceOpt = True,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1",
    seconds: Annotated[str, typer.Option("--seconds", help="Comma-separated clip lengths (s).")] = "10",
    frames: Annotated[int, typer.Option("--stream-frames", min=0, help="80 ms frames timed in streaming.")] = 50,
    num_codebooks: Annotated[int, typer.Option("--num-codebooks", "-k", min=1, max=32)] = 8,
    repeats: RepeatsOpt = 3,
    device: DeviceOpt = None,
    mimi_weight: MimiWeightOpt = None,
    model: ModelOpt = None,
    json_file: JsonFileOpt = None,
    compare: CompareOpt = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Save a latency histogram PNG (needs matplotlib).",
                                                show_default=False)] = None,
) -> None:
    """Mimi batch encode/decode throughput and streaming per-frame latency."""
    from .. import bench
    from ..errors import UsageError
    from ..hub import resolve_mimi
    from .bench_render import render

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
        lengths = [float(s) for s in seconds.split(",")]
    except ValueError:
        raise UsageError("--batch-sizes and --seconds take comma-separated numbers") from None
    weights = resolve_mimi(mimi_weight, "synthetic" if synthetic else model)
    plan = bench.CodecPlan(_backends(backend, "codec"), str(weights.path), reference, sizes, lengths, repeats,
                           frames, num_codebooks, device_value(device))
    result = bench.BenchResult(env=bench.environment({"weights": str(weights.path)}), synthetic=synthetic)
    render(result, lambda: bench.bench_codec(plan), json_file, compare, plot)
