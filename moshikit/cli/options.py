"""Options shared by several commands, written once."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer


class CodecBackendName(str, Enum):
    auto = "auto"
    torch = "torch"
    rustymimi = "rustymimi"
    mlx = "mlx"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"
    gpu = "gpu"


BackendOpt = Annotated[CodecBackendName, typer.Option(
    "--backend", "-b", help="Codec implementation; auto picks the fastest for this machine (see `moshikit info`).")]
DeviceOpt = Annotated[Optional[Device], typer.Option(
    "--device", help="Where to run it (cuda, cpu, mps; gpu means Metal for mlx).", show_default=False)]
MimiWeightOpt = Annotated[Optional[str], typer.Option(
    "--mimi-weight", help="A local Mimi weights file (.safetensors).", show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", show_default=False,
    help="Catalog name (mimi, moshika...: see `moshikit models`), hub repo id, local directory, "
         "or 'synthetic' (generated test weights). Default: kyutai/moshiko-pytorch-bf16.")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit).",
                                                     show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo outputs that already exist.")]
OutputOpt = Annotated[Optional[str], typer.Option(
    "--output", "-o", show_default=False,
    help="Output directory (input trees are mirrored inside), or a file name for a single input. "
         "Default: beside each input.")]
IncludeOpt = Annotated[Optional[list[str]], typer.Option(
    "--include", "-i", show_default=False, help="Glob of file names to take from directories (repeatable).")]


def device_value(device: Optional[Device]) -> Optional[str]:
    return None if device is None else device.value
