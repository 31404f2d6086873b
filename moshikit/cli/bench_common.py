"""What the ``bench`` stages' commands share: option definitions and the run-render-write helper."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import option_group

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


def configure_torch(compile: Optional[bool] = None, cuda_graphs: Optional[bool] = None) -> None:
    from ..backends.torch_env import configure

    configure(compile, cuda_graphs)


#: --compile and --cuda-graphs of the stages that run moshi's torch code, set before the stage starts.
with_torch_options = option_group("torch_env", {"compile": (CompileOpt, None), "cuda_graphs": (CudaGraphsOpt, None)},
                                   configure_torch)


def model_opt(help: str):
    """``--model/-m`` of a stage that names its own kind of checkpoint."""
    return Annotated[Optional[str], typer.Option("--model", "-m", show_default=False, help=help)]


def backend_opt(help: str):
    """``--backend/-b`` of a stage whose default is the platform's choice."""
    return Annotated[Optional[str], typer.Option("--backend", "-b", show_default=False, help=help)]


def lm_size_opt(full: str):
    """``--lm-size``: what ``full`` builds with --synthetic."""
    return Annotated[str, typer.Option("--lm-size",
                                       help=f"With --synthetic: tiny (seconds to build) or full ({full}).")]


def seconds_opt(help: str):
    return Annotated[float, typer.Option("--seconds", min=1.0, help=help)]


def check_lm_size(value: str) -> str:
    from ..errors import UsageError

    if value not in ("tiny", "full"):
        raise UsageError(f"--lm-size must be tiny or full, not {value!r}")
    return value


def report(env: dict, synthetic: bool, rows, json_file: Optional[str], compare: Optional[str],
            plot: Optional[str] = None, notes: Optional[list] = None) -> None:
    """Run a stage's rows under the live status, then the table, notes, comparison, --json and --plot.
    ``notes`` is the plan's own list: what the stage skips while running lands there."""
    from .. import bench
    from .bench_render import render

    result = bench.BenchResult(env=bench.environment(env), synthetic=synthetic,
                               notes=notes if notes is not None else [])
    render(result, rows, json_file, compare, plot)


def backends_of(value: str, kind: str) -> list[str]:
    from ..backends import registry

    if value == "all":
        return [n for n in registry.names(kind) if registry.probe(kind, n)[0]]
    names = [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        registry.get_spec(kind, n)
    return names


def lm_backends(value: str) -> list[str]:
    """The LM backends of ``bench lm`` ("all": those installed, moshikit's CPU engine among them)."""
    return backends_of(value, "lm")


def ints(value: str) -> list[int]:
    from ..errors import UsageError

    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise UsageError(f"expected comma-separated whole numbers, not {value!r}") from None
