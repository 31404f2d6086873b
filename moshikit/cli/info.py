"""moshikit info: what this machine is and what moshikit will use on it."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import JsonOpt


def info(json_out: JsonOpt = False,
         gpus: Annotated[bool, typer.Option(help="Probe GPUs (imports torch).")] = True) -> None:
    """Show the platform, which backends load (and how to fix those that don't), and the defaults."""
    from .. import __version__
    from ..backends import registry
    from ..platform import DEFAULTS, detect
    from .output import Out

    out = Out(json_mode=json_out)
    plat = detect(gpus)
    backends = []
    for spec in registry.BACKENDS:
        ok, detail = registry.probe(spec.kind, spec.name)
        backends.append({"kind": spec.kind, "name": spec.name, "available": ok,
                         "version" if ok else "reason": detail, **({} if ok else {"install": spec.install}),
                         "summary": spec.summary})
    defaults = {cmd: vars(fn(plat)) for cmd, fn in DEFAULTS.items()}
    data = {"moshikit": __version__, "platform": plat.to_json(), "backends": backends, "defaults": defaults}
    if not plat.cuda and not plat.apple_silicon:
        data["cpu_precision"] = _cpu_precision(gpus)
    if json_out:
        out.json(data)
        return
    from rich.table import Table

    con = out.console
    ram = f"{plat.ram_gb:.1f} GB RAM" if plat.ram_gb else "RAM unknown"
    con.print(f"[bold]moshikit {__version__}[/] on {plat.system} {plat.machine}, Python {plat.python}")
    con.print(f"CPU: {plat.cpu} ({plat.cores} cores), {ram}")
    if plat.cuda:
        for g in plat.cuda:
            free = f", {g.free_gb:.1f} GB free" if g.free_gb is not None else ""
            con.print(f"GPU {g.index}: {g.name}, {g.total_gb:.1f} GB{free}")
    else:
        con.print("GPU: none usable by PyTorch" + (" (MPS available)" if plat.mps else ""))
    table = Table("kind", "backend", "status", "details")
    for b in backends:
        status = "[green]ok[/]" if b["available"] else "[red]unavailable[/]"
        detail = b.get("version") or f"{b['reason']} -> {b['install']}"
        table.add_row(b["kind"], b["name"], status, detail)
    con.print(table)
    t2 = Table("command", "backend", "device", "why")
    for cmd, c in defaults.items():
        t2.add_row(cmd, c["backend"], c["device"], c["reason"])
    con.print(t2)
    if "cpu_precision" in data:
        p = data["cpu_precision"]
        con.print(f"CPU matmul instructions: {', '.join(p['kernels']) or 'none found'}; "
                  f"transcribe precision: {p['transcribe']}")


def _cpu_precision(probe_torch: bool) -> dict:
    """What ``transcribe`` runs a full-size model in on this CPU (``--dtype auto``), and why."""
    from ..cpu_precision import INT8_MIN_BYTES, cpu_kernels, int8_available

    kernels = cpu_kernels()
    int8 = int8_available() if probe_torch else None
    if int8 is False:
        what = "fp32 (this PyTorch has no int8 CPU kernels)"
    else:
        what = (f"int8 weights for checkpoints of {INT8_MIN_BYTES >> 20} MB and more (stt, stt-en), "
                "fp32 below; --dtype forces one")
    return {"kernels": kernels, "int8_kernels": int8, "transcribe": what}
