"""moshikit download and moshikit models: the catalog, the Hugging Face cache, the hub."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import ExitStatus
from .options import JsonOpt, RevisionOpt

VariantOpt = Annotated[Optional[str], typer.Option(
    "--variant", show_default=False,
    help="pytorch-bf16, pytorch-q8, mlx-bf16, mlx-q8, mlx-q4, candle-bf16, candle-q8 (or just a backend or "
         "precision: q8, mlx). Default: what fits this machine.")]
AnyPlatformOpt = Annotated[bool, typer.Option(
    "--any-platform", help="Allow a variant that cannot run here (to copy it to another machine).")]
ModelsArg = Annotated[Optional[list[str]], typer.Argument(
    help="Catalog names (moshika, moshiko, mimi, stt, stt-en), hub repo ids (owner/name).", show_default=False)]


def download(
    models: ModelsArg = None,
    variant: VariantOpt = None,
    revision: RevisionOpt = None,
    files: Annotated[Optional[list[str]], typer.Option(
        "--file", show_default=False, help="Only this file of the repository (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the files and total size; download nothing.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Say which variant this machine gets and why.")] = False,
    list_: Annotated[bool, typer.Option(
        "--list", help="List the catalog and the cache (as `moshikit models`).")] = False,
    any_platform: AnyPlatformOpt = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Download again even if cached (repairs a corrupt file).")] = False,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Skip the sha256 check of what was downloaded.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the resolved path, for scripts.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Download models into the Hugging Face cache (shared with moshi and moshi_mlx).

    A catalog name picks the variant that fits this machine (see --explain).
    An interrupted download resumes; what arrives is checked (size, sha256).
    Prints where the model is: the file for one-file models (mimi), else the directory.
    """
    from ..errors import UsageError
    from .output import Out

    out = Out(json_mode=json_out, quiet=quiet)
    if quiet and json_out:
        raise UsageError("--quiet and --json do not go together")
    if list_:
        _list(out, json_out)
        return
    if not models:
        raise UsageError("name a model to download", hint="e.g. `moshikit download moshika`; see `moshikit models`")
    if files and len(models) > 1:
        raise UsageError("--file applies to one model at a time")
    if explain:
        _explain(out, models, variant, any_platform, json_out)
        return
    from .. import download as dl

    plans = [dl.plan(m, variant=variant, revision=revision, files=files, any_platform=any_platform) for m in models]
    for p in plans:
        for w in p.warnings:
            _warn(out, w)
    if dry_run:
        _show_plans(out, plans, json_out, quiet)
        return
    results = []
    for p in plans:
        _announce(out, p)
        with _DownloadDisplay(out, p) as display:
            got = dl.download(p, on_progress=display.update, verify=not no_verify, force=force)
        display.summary(got)
        results.append(got)
    if json_out:
        out.json({"models": [r.to_json() for r in results]})
        return
    for r in results:
        out.result(r.result_path)


def _warn(out, text: str) -> None:
    from rich.markup import escape

    if not out.quiet:
        out.err.print(f"[yellow]warning:[/] {escape(text)}")


def _explain(out, models: list[str], variant, any_platform: bool, json_out: bool) -> None:
    from .. import catalog
    from ..errors import UsageError

    plat = catalog.current_platform()
    _, _, words = catalog.accelerator(plat)
    choices = []
    for m in models:
        choice = catalog.lookup(m, plat, variant, any_platform=any_platform)
        if choice is None:
            raise UsageError(f"{m} is not in the catalog: there is nothing to choose",
                             hint=f"`moshikit download {m}` fetches it as it is")
        choices.append(choice)
    if json_out:
        out.json({"platform": words, "models": [c.to_json() for c in choices]})
        return
    if out.quiet:
        for c in choices:
            out.result(c.entry.repo)
        return
    for c in choices:
        out.result(f"{c.asked} on this machine ({words}):")
        for line in c.reasons:
            out.result(f"  {line}")
        for w in c.warnings:
            out.result(f"  warning: {w}")


def _announce(out, p) -> None:
    from rich.markup import escape

    from ..download import human_size

    what = f"{p.asked} -> {p.repo}" if p.asked != p.repo else p.repo
    if p.entry is not None:
        what += f" ({p.entry.backend} {p.entry.precision})"
    need = p.missing_size
    todo = "all cached" if p.complete else f"{human_size(need)} to download"
    out.message(f"{escape(what)}: {len(p.files)} files, {human_size(p.total_size)}, {todo}")


def _show_plans(out, plans, json_out: bool, quiet: bool) -> None:
    from rich.markup import escape

    from ..download import human_size

    if json_out:
        out.json({"dry_run": True, "models": [p.to_json() for p in plans]})
        return
    if quiet:
        for p in plans:
            out.result(p.repo)
        return
    from rich.table import Table

    con = out.console
    for p in plans:
        title = f"{p.asked} -> {p.repo}@{p.revision}" if p.asked != p.repo else f"{p.repo}@{p.revision}"
        if p.entry is not None:
            title += f" ({p.entry.variant})"
        table = Table(title=escape(title), title_justify="left")
        table.add_column("file")
        table.add_column("size", justify="right")
        table.add_column("in cache")
        for f in p.files:
            state = "yes" if f.cached else (f"partial ({human_size(f.partial)})" if f.partial else "no")
            table.add_row(escape(f.name), human_size(f.size) if f.size is not None else "?", state)
        con.print(table)
        approx = "" if p.exact else " (approximate: offline, sizes from the catalog)"
        con.print(f"total {human_size(p.total_size)}, to download {human_size(p.missing_size)}{approx}")


class _DownloadDisplay:
    """Rich bars (one per file and a total) on a terminal; one line per file otherwise."""

    def __init__(self, out, plan) -> None:
        self.out = out
        self.plan = plan
        self.bar = None
        self.tasks: dict[int, int] = {}
        self.total_task = None

    def __enter__(self) -> "_DownloadDisplay":
        if self.out.quiet or self.out.json_mode or not self.out.err.is_terminal or self.plan.complete:
            return self
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=self.out.err)
        self.total_task = self.bar.add_task("[bold]total[/]", total=self.plan.total_size or None)
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, ev) -> None:
        if self.bar is None:
            if ev.phase == "start" and ev.resumed_from:
                from ..download import human_size

                self.out.message(f"{ev.file}: resuming from {human_size(ev.resumed_from)}")
            return
        if ev.index not in self.tasks:
            from rich.markup import escape

            label = escape(ev.file) + (" (resumed)" if ev.resumed_from else "")
            self.tasks[ev.index] = self.bar.add_task(label, total=ev.file_size, completed=ev.file_done)
        self.bar.update(self.tasks[ev.index], completed=ev.file_done)
        self.bar.update(self.total_task, completed=ev.done)

    def summary(self, got) -> None:
        from rich.markup import escape

        from ..download import human_size

        fetched = [f for f in got.files if f.downloaded]
        if not fetched:
            self.out.message(f"{escape(got.plan.repo)}: already in the cache")
            return
        checks = sorted({f.check for f in fetched})
        resumed = [f for f in fetched if f.resumed_from]
        extra = f", {len(resumed)} resumed" if resumed else ""
        self.out.message(f"{escape(got.plan.repo)}: {len(fetched)} files, {human_size(got.downloaded_bytes)} "
                         f"downloaded{extra}; checked: {', '.join(checks)}")


# ---------------------------------------------------------------- moshikit models

models_app = typer.Typer(
    help="The model catalog and the Hugging Face cache: list (default), remove, verify.",
    invoke_without_command=True, no_args_is_help=False,
)


@models_app.callback()
def models(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List the catalog: per entry, whether it is cached, its size on disk, and what this machine picks."""
    if ctx.invoked_subcommand is not None:
        return
    from .output import Out

    _list(Out(json_mode=json_out), json_out)


def _list(out, json_out: bool) -> None:
    from rich.markup import escape

    from .. import catalog
    from .. import download as dl
    from .. import hubcache

    plat = catalog.current_platform()
    _, _, words = catalog.accelerator(plat)
    rows = hubcache.list_models(plat)
    if json_out:
        out.json({"cache": str(dl.cache_dir()), "platform": words, "aliases": catalog.ALIASES,
                  "models": [r.to_json() for r in rows]})
        return
    from rich.table import Table

    con = out.console
    table = Table(title=f"models (cache: {escape(str(dl.cache_dir()))})", title_justify="left")
    for col, kw in (("model", {}), ("variant", {}), ("repository", {}), ("size", {"justify": "right"}),
                    ("memory", {"justify": "right"}), ("cached", {}), ("on disk", {"justify": "right"}),
                    ("here", {"justify": "center"})):
        table.add_column(col, **kw)
    for r in rows:
        e = r.entry
        cached = {"cached": "[green]yes[/]", "partial": "[yellow]partial[/]", "absent": "-"}[r.state]
        table.add_row(e.family, e.variant, escape(e.repo), f"{e.size_gb:g} GB", f"{e.min_memory_gb:g} GB", cached,
                      dl.human_size(r.size_on_disk) if r.size_on_disk else "-", "*" if r.picked else "")
    con.print(table)
    con.print(f"* = what `moshikit download NAME` picks on this machine ({escape(words)}); "
              "`moshikit download --explain NAME` says why.")
    con.print("aliases: stt = stt-1b-en_fr, stt-en = stt-2.6b-en, tts = tts-1.6b-en_fr, "
              "tts-public = tts-0.75b-en-public. Sizes are approximate; "
              "`moshikit download NAME --dry-run` asks the hub.")


@models_app.command("remove")
def remove(
    models: Annotated[list[str], typer.Argument(help="Catalog names (all their cached variants unless --variant), "
                                                     "or repo ids.", show_default=False)],
    variant: VariantOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go and the space freed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove cached models, showing the space it frees first (asks unless -y)."""
    from rich.markup import escape

    from .. import download as dl
    from .. import hubcache
    from ..errors import UsageError
    from .output import Out

    out = Out(json_mode=json_out)
    r = hubcache.plan_removal(models, variant)
    if not json_out:
        for t in r.targets:
            what = "the whole repository" if t.files is None else ", ".join(t.files)
            out.err.print(f"{escape(t.label)}: {escape(t.repo)} ({escape(what)})")
        for a in r.also:
            out.err.print(f"  also removes {escape(a)}")
        out.err.print(f"frees {dl.human_size(r.freed)}")
    if dry_run:
        if json_out:
            out.json({"dry_run": True, **r.to_json()})
        return
    if not yes:
        if json_out:
            raise UsageError("--json needs -y (no question is asked in JSON mode)")
        out.env.stderr.write("remove? [y/N] ")
        out.env.stderr.flush()
        answer = out.env.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            out.err.print("nothing removed")
            raise typer.Exit(ExitStatus.FAILED)
    freed = hubcache.remove(r)
    if json_out:
        out.json({**r.to_json(), "removed": True, "freed_bytes": freed})
    else:
        out.err.print(f"removed; {dl.human_size(freed)} freed")


@models_app.command("verify")
def verify(
    models: Annotated[Optional[list[str]], typer.Argument(
        help="Catalog names or repo ids; default: every catalog model in the cache.", show_default=False)] = None,
    variant: VariantOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-check cached files against their hashes (sha256 for weights, git blob id for small files)."""
    from rich.markup import escape

    from .. import download as dl
    from .. import hubcache
    from .output import Out

    out = Out(json_mode=json_out)
    bar = None
    task = None
    if not json_out and out.err.is_terminal:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=out.err,
                       transient=True)
        bar.start()

    def on_file(name: str, size: int) -> None:
        nonlocal task
        if bar is not None:
            if task is not None:
                bar.remove_task(task)
            task = bar.add_task(escape(name), total=size)

    def on_bytes(n: int) -> None:
        if bar is not None and task is not None:
            bar.advance(task, n)

    try:
        checks = hubcache.verify_cached(models, variant, on_file=on_file, on_bytes=on_bytes)
    finally:
        if bar is not None:
            bar.stop()
    bad = [c for c in checks if not c.ok]
    if json_out:
        out.json({"ok": not bad, "checked": len(checks), "checks": [c.to_json() for c in checks]})
    else:
        if not checks:
            out.err.print("nothing cached to verify")
        for c in checks:
            status = "[green]ok[/]" if c.ok else "[bold red]CORRUPT[/]"
            note = f" ({escape(c.problem)})" if c.problem and c.ok else ""
            out.err.print(f"{status} {escape(c.repo)}/{escape(c.file)} {dl.human_size(c.size)} {c.algorithm}{note}")
    if bad:
        repos = sorted({c.repo for c in bad})
        out.error(f"{len(bad)} corrupt file(s) in {', '.join(repos)}",
                  hint="; ".join(f"moshikit download {r} --force" for r in repos) + " fetches them again")
        raise typer.Exit(ExitStatus.FAILED)
