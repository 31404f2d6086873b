"""Options shared by several commands, written once."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Optional

import typer

from ..backends import registry


def _choices(name: str, kind: registry.Kind) -> type[Enum]:
    """A choice list made from the registry, so a registered backend is accepted everywhere."""
    return Enum(name, {n: n for n in ("auto", *registry.names(kind))}, type=str)


CodecBackendName = _choices("CodecBackendName", "codec")
LMBackendName = _choices("LMBackendName", "lm")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"
    gpu = "gpu"


BackendOpt = Annotated[CodecBackendName, typer.Option(
    "--backend", "-b", help="Codec implementation; auto picks the fastest for this machine (see `moshikit info`).")]
LMBackendOpt = Annotated[LMBackendName, typer.Option(
    "--backend", "-b", help="Model implementation; auto picks this machine's default (see `moshikit info`).")]
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
#: The inputs of the commands that also listen live (transcribe, translate).
AudioOrMicArg = Annotated[Optional[list[str]], typer.Argument(
    help="Audio files or directories (recursive); none with --mic.", show_default=False)]
ListDevicesOpt = Annotated[bool, typer.Option("--list-devices", help="List audio devices and exit.")]
MicDeviceOpt = Annotated[Optional[str], typer.Option(
    "--input-device", show_default=False, help="Input device for --mic: index or (part of) its name.")]
MicDurationOpt = Annotated[Optional[float], typer.Option(
    "--duration", min=0.1, show_default=False, help="With --mic: stop after this many seconds.")]


def device_value(device: Optional[Device]) -> Optional[str]:
    return None if device is None else device.value


InputsArg = Annotated[Optional[list[str]], typer.Argument(
    help="Audio files, directories (recursive), - for stdin, or (with --ray) fsspec URIs such as s3://bucket/dir.",
    show_default=False)]
ManifestOpt = Annotated[Optional[str], typer.Option(
    "--manifest", show_default=False,
    help="A file listing inputs: one path or URI a line, or a column of a .csv/.tsv/.parquet file.")]
ManifestColumnOpt = Annotated[Optional[str], typer.Option(
    "--manifest-column", show_default=False,
    help="The manifest's column of paths (default: path, source, uri, file or audio, else the first).")]
_RAY = "Ray cluster"
RayOpt = Annotated[bool, typer.Option(
    "--ray", rich_help_panel=_RAY,
    help="Run the job on a Ray cluster: workers load the model once, write outputs directly, "
         "a Parquet manifest records every file (needs the ray extra).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", show_default=False, rich_help_panel=_RAY,
    help="HOST:PORT of the head, ray://HOST:10001, or local (a one-machine cluster). "
         "Default: $RAY_ADDRESS, else the cluster this machine belongs to. Implies --ray.")]
RayWorkersOpt = Annotated[Optional[int], typer.Option(
    "--ray-workers", min=1, show_default=False, rich_help_panel=_RAY,
    help="Model workers (actors). Default: as many as the cluster's CPUs/GPUs fit.")]
RayCpusOpt = Annotated[float, typer.Option(
    "--ray-cpus", min=0.0, rich_help_panel=_RAY, help="CPUs each worker reserves (decoding runs on them).")]
RayGpusOpt = Annotated[Optional[float], typer.Option(
    "--ray-gpus", min=0.0, show_default=False, rich_help_panel=_RAY,
    help="GPUs each worker reserves. Default: 1 when the cluster has GPUs, else 0.")]
RayManifestOpt = Annotated[Optional[str], typer.Option(
    "--ray-manifest", show_default=False, rich_help_panel=_RAY,
    help="Where the job's Parquet manifest goes (a rerun reads it to skip finished files). "
         "Default: moshikit-<command>.parquet in the output directory.")]



@dataclass
class JobSource:
    """Where a batch command's inputs come from beyond its arguments, and where it runs: the
    manifest and Ray options, shared by every batch command through ``with_job_options``."""

    manifest: Optional[str] = None
    manifest_column: Optional[str] = None
    ray: bool = False
    ray_address: Optional[str] = None
    ray_workers: Optional[int] = None
    ray_cpus: float = 1.0
    ray_gpus: Optional[float] = None
    ray_manifest: Optional[str] = None

    @property
    def on_ray(self) -> bool:
        return self.ray or bool(self.ray_address)

    def ray_options(self) -> dict:
        return dict(address=self.ray_address, workers=self.ray_workers, cpus=self.ray_cpus, gpus=self.ray_gpus,
                    job_manifest=self.ray_manifest)


def option_group(name: str, options: dict, make):
    """A decorator giving a command a group of options declared once; the command receives them
    as one value, ``name=make(**given)``.

    Typer reads a command's options from its signature: the wrapper's signature is the
    command's (less ``name``) plus ``options`` (``{parameter: (annotation, default)}``)."""
    import functools
    import inspect

    def decorate(command):
        sig = inspect.signature(command, eval_str=True)
        params = [p for p in sig.parameters.values() if p.name != name]
        params += [inspect.Parameter(opt, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ann, default=default)
                   for opt, (ann, default) in options.items()]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            given = {opt: kwargs.pop(opt) for opt in options if opt in kwargs}
            return command(*args, **{name: make(**given)}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)
        return wrapper

    return decorate


#: --manifest and the Ray options; the command gets ``job: JobSource``.
with_job_options = option_group("job", {
    "manifest": (ManifestOpt, None), "manifest_column": (ManifestColumnOpt, None), "ray": (RayOpt, False),
    "ray_address": (RayAddressOpt, None), "ray_workers": (RayWorkersOpt, None), "ray_cpus": (RayCpusOpt, 1.0),
    "ray_gpus": (RayGpusOpt, None), "ray_manifest": (RayManifestOpt, None)}, JobSource)


def _sampling_overrides(**given):
    from ..backends.base import SamplingOverrides

    return SamplingOverrides(**given)


#: --temp, --temp-text, --top-k, --seed; the command gets ``sampling: SamplingOverrides`` (unset: the model's own).
with_sampling_options = option_group("sampling", {
    "temp": (Annotated[Optional[float], typer.Option(
        "--temp", min=0.0, show_default=False,
        help="Audio sampling temperature (0: greedy). Default: the model's config.")], None),
    "temp_text": (Annotated[Optional[float], typer.Option(
        "--temp-text", min=0.0, show_default=False, help="Text sampling temperature.")], None),
    "top_k": (Annotated[Optional[int], typer.Option("--top-k", min=1, show_default=False, help="Audio top-k.")], None),
    "seed": (Annotated[Optional[int], typer.Option(
        "--seed", show_default=False, help="Seed the sampling: runs over the same input repeat exactly.")], None),
}, _sampling_overrides)

class Dtype(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"
    int8 = "int8"


DtypeOpt = Annotated[Dtype, typer.Option(
    "--dtype", help="The LM's precision (PyTorch): auto is bf16 on GPUs of compute capability 8.0 and later, "
                    "fp16 on older GPUs, fp32 on CPUs; transcribe on a CPU: int8 "
                    "weights for full-size checkpoints. int8: 8-bit weights (CPU only).")]


# The agent's options (`agent`, `serve --agent`), written once.
LLMUrlOpt = Annotated[str, typer.Option(
    "--llm-url", metavar="URL",
    help="An OpenAI-compatible server (ollama, llama.cpp's llama-server, vLLM, a hosted API); an API key "
         "is read from MOSHIKIT_LLM_KEY.")]
LLMModelOpt = Annotated[Optional[str], typer.Option(
    "--llm-model", metavar="NAME", show_default=False,
    help="The chat model's name on that server (ollama: `ollama list`).")]
SystemOpt = Annotated[Optional[str], typer.Option(
    "--system", metavar="TEXT|FILE", show_default=False, help="The system prompt, or a file holding it.")]
VoiceOpt = Annotated[Optional[str], typer.Option(
    "--voice", metavar="VOICE", show_default=False, help="The agent's voice (as `speak --voice`).")]
TurnThresholdOpt = Annotated[float, typer.Option(
    "--turn-threshold", min=0.0, max=1.0,
    help="End of turn when the STT's pause prediction (stt-1b's 2 s head, as Kyutai's Unmute reads it) "
         "is above this.")]
TurnSilenceOpt = Annotated[Optional[float], typer.Option(
    "--turn-silence", metavar="S", min=0.1, show_default=False,
    help="End turns after S seconds of silence instead (voice activity): the way for STT models without "
         "pause heads (stt-en), which use 0.8 s when this is not given.")]
HistoryCharsOpt = Annotated[int, typer.Option(
    "--history-chars", min=200,
    help="The most text of past turns each request carries (the oldest turns go first; ~4 characters "
         "a token).")]
LLMTimeoutOpt = Annotated[float, typer.Option(
    "--llm-timeout", min=0.1, help="Seconds the LLM server may stay silent before the turn fails.")]
