"""moshikit encode: audio files to Mimi tokens."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from ..errors import UsageError
from .options import (BackendOpt, CodecBackendName, DeviceOpt, IncludeOpt, InputsArg, JobSource, JsonOpt,
                      MimiWeightOpt, ModelOpt, OutputOpt, OverwriteOpt, RevisionOpt, device_value, with_job_options)


class TokenFormat(str, Enum):
    mimi = "mimi"
    npy = "npy"


class Channels(str, Enum):
    mix = "mix"
    split = "split"


@with_job_options
def encode(
    inputs: InputsArg = None,
    output: OutputOpt = None,
    fmt: Annotated[TokenFormat, typer.Option("--format", "-f", help="mimi: compact checked container; npy: int16 [K, F] plus a .json.")] = TokenFormat.mimi,
    num_codebooks: Annotated[int, typer.Option("--num-codebooks", "-k", min=1, max=32, help="Codebooks to keep (Moshi uses 8).")] = 8,
    channels: Annotated[Channels, typer.Option("--channels", help="mix: downmix to mono; split: encode each channel.")] = Channels.mix,
    include: IncludeOpt = None,
    backend: BackendOpt = CodecBackendName.auto,
    device: DeviceOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Short files (<= 10 s) encoded together.")] = 8,
    mimi_weight: MimiWeightOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    job: JobSource | None = None,
) -> None:
    """Encode audio into Mimi tokens, one token file per input.

    Any rate and format libsndfile or symphonia reads; resampled to 24 kHz.
    Existing outputs are skipped, so an interrupted run resumes where it stopped.
    With --ray the same work runs on a Ray cluster (see the Ray cluster options).
    """
    from .. import codec as ops
    from ..tokens import output_suffix
    from .batch import exit_on_failure, plan_jobs, run_batch
    from .output import Out

    out = Out(json_mode=json_out)
    inputs = list(inputs or [])
    job = job or JobSource()
    if not inputs and not job.manifest:
        raise UsageError("no inputs: give audio files or directories, or --manifest FILE")
    opts = ops.EncodeOptions(fmt=fmt.value, channels=channels.value, batch_size=batch_size, overwrite=overwrite)
    if job.on_ray:
        from .distributed import run_on_ray

        load = {"backend": backend.value, "device": device_value(device), "num_codebooks": num_codebooks,
                "mimi_weight": _absolute(mimi_weight), "model": _absolute(model), "revision": revision}
        summary = run_on_ray(out, "encode", inputs, output, output_suffix(fmt.value), include=include,
                             manifest=job.manifest, manifest_column=job.manifest_column, load=load, opts=opts,
                             **job.ray_options())
        return exit_on_failure(summary)
    jobs, failed = plan_jobs(out, inputs, output, output_suffix(fmt.value), include=include, manifest=job.manifest,
                             manifest_column=job.manifest_column)
    codec = ops.load_codec(backend.value, device_value(device), mimi_weight=mimi_weight, model=model,
                           revision=revision, num_codebooks=num_codebooks)
    out.message(f"[dim]codec: {codec.info.backend} on {codec.info.device} ({codec.choice.reason}); "
                f"weights: {codec.weights.path}[/]")
    summary = run_batch(out, "encode", len(jobs), None,
                        lambda tick: ops.encode_files(jobs, codec, opts, on_audio=tick), failed)
    exit_on_failure(summary)


def _absolute(path: str | None) -> str | None:
    """Workers run in another directory: a local path given relatively is made absolute."""
    import os

    return os.path.abspath(path) if path and os.path.exists(path) else path
