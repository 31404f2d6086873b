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
