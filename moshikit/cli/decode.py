"""moshikit decode: Mimi token files back to audio."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from .options import (BackendOpt, CodecBackendName, DeviceOpt, IncludeOpt, JsonOpt, MimiWeightOpt, ModelOpt,
                      OutputOpt, OverwriteOpt, RevisionOpt, device_value)


class AudioFormat(str, Enum):
    wav = "wav"
    flac = "flac"
    ogg = "ogg"
    opus = "opus"


def decode(
    inputs: Annotated[list[str], typer.Argument(help="Token files (.mimi or .npy) or directories.", show_default=False)],
    output: OutputOpt = None,
    fmt: Annotated[AudioFormat, typer.Option("--format", "-f", help="Audio format to write.")] = AudioFormat.wav,
    include: IncludeOpt = None,
    backend: BackendOpt = CodecBackendName.auto,
    device: DeviceOpt = None,
    mimi_weight: MimiWeightOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Decode even if the tokens were made with other weights.")] = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Decode token files to audio with the original length, one file per input."""
    from .. import codec as ops
    from .. import filejobs
    from ..hub import resolve_mimi
    from .batch import exit_on_failure, plan_jobs, run_batch
    from .output import Out

    out = Out(json_mode=json_out)
    jobs, failed = plan_jobs(out, inputs, output, "." + fmt.value, include=include,
                             extensions=filejobs.TOKEN_EXTENSIONS)
    weights = resolve_mimi(mimi_weight, model, revision)
    codecs: dict[int, ops.Codec] = {}

    def get_codec(k: int) -> ops.Codec:
        if k not in codecs:
            if not 1 <= k <= 32:
                from ..errors import TokenFileError

                raise TokenFileError(f"{k} codebooks: Mimi has 1 to 32")
            codecs[k] = ops.load_codec(backend.value, device_value(device), weights=weights, num_codebooks=k)
        return codecs[k]

    opts = ops.DecodeOptions(fmt=fmt.value, overwrite=overwrite, force=force)
    summary = run_batch(out, "decode", len(jobs), None,
                        lambda tick: ops.decode_files(jobs, get_codec, opts, on_audio=tick), failed)
    exit_on_failure(summary)
