"""moshikit encode: audio files to Mimi tokens."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from .options import (BackendOpt, CodecBackendName, DeviceOpt, IncludeOpt, JsonOpt, MimiWeightOpt, ModelOpt,
                      OutputOpt, OverwriteOpt, RevisionOpt, device_value)


class TokenFormat(str, Enum):
    mimi = "mimi"
    npy = "npy"


class Channels(str, Enum):
    mix = "mix"
    split = "split"


def encode(
    inputs: Annotated[list[str], typer.Argument(help="Audio files, directories (recursive) or - for stdin.",
                                                show_default=False)],
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
) -> None:
    """Encode audio into Mimi tokens, one token file per input.

    Any rate and format libsndfile or symphonia reads; resampled to 24 kHz.
    Existing outputs are skipped, so an interrupted run resumes where it stopped.
    """
    from .. import codec as ops
    from ..tokens import output_suffix
    from .batch import run_batch
    from .output import Out

    out = Out(json_mode=json_out)
    jobs, failed = ops.plan(inputs, output, output_suffix(fmt.value), include=include or ())
    if not jobs:
        for r in failed:
            out.error(r.error)
        raise typer.Exit(1)
    codec = ops.load_codec(backend.value, device_value(device), mimi_weight=mimi_weight, model=model,
                           revision=revision, num_codebooks=num_codebooks)
    out.message(f"[dim]codec: {codec.info.backend} on {codec.info.device} ({codec.choice.reason}); "
                f"weights: {codec.weights.path}[/]")
    opts = ops.EncodeOptions(fmt=fmt.value, channels=channels.value, batch_size=batch_size, overwrite=overwrite)
    summary = run_batch(out, "encode", len(jobs), None,
                        lambda tick: ops.encode_files(jobs, codec, opts, on_audio=tick), failed)
    if summary["failed"]:
        raise typer.Exit(1)
