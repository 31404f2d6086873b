"""Help that reads like the tools users know: flags bare, every value named (PATH, DIR, N...).

Typer names a value by its Python type (TEXT, INTEGER). Options name their value here, by
parameter name, once for every command; an option declared with its own ``metavar`` keeps it,
and a new option whose name is not in the table is named after its type.
"""

from __future__ import annotations

from typing import Any

METAVARS: dict[str, str] = {
    # files and folders
    "output": "PATH", "input_file": "FILE", "transcript": "FILE", "mimi_weight": "FILE",
    "manifest": "FILE", "ray_manifest": "FILE", "json_file": "FILE", "compare": "FILE", "plot": "FILE",
    "ssl_cert": "FILE", "ssl_key": "FILE", "files": "FILE", "record": "DIR", "save": "DIR", "static": "DIR",
    # models and where they come from
    "model": "MODEL", "models": "MODEL", "revision": "REV", "variant": "VARIANT", "lm_size": "SIZE",
    "dtype": "DTYPE", "backend": "NAME", "codec_backend": "NAME", "lm_backend": "NAME",
    # places
    "url": "URL", "host": "HOST", "port": "PORT", "ray_address": "ADDRESS", "input_device": "DEVICE",
    "output_device": "DEVICE",
    # everything else
    "include": "GLOB", "manifest_column": "COLUMN", "fmt": "FORMATS", "shell": "SHELL",
    "batch_sizes": "N,N...", "seconds": "SECONDS", "duration": "SECONDS", "idle_timeout": "SECONDS",
    "temp": "T", "temp_text": "T", "seed": "N", "ray_cpus": "CPUS", "ray_gpus": "GPUS",
}
_BY_TYPE = {"text": "TEXT", "integer": "N", "integer range": "N", "float": "X", "float range": "X"}


def name_values(command: Any) -> Any:
    """Name the value of every option of ``command`` and its subcommands that takes one.

    Arguments keep Typer's own look (``[inputs]...``: their name is already in the column).
    """
    for sub in getattr(command, "commands", {}).values():
        name_values(sub)
    for param in command.params:
        if (param.param_type_name != "option" or getattr(param, "is_flag", False) or param.metavar is not None
                or param.type.name == "choice"):
            continue
        param.metavar = METAVARS.get(param.name or "") or _BY_TYPE.get(param.type.name, param.type.name.upper())
    return command
