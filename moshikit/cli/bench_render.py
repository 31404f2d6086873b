"""Drawing benchmark results: live rows, a table, histograms, JSON and comparisons."""

from __future__ import annotations

from collections.abc import Callable, Iterator


def render(result, rows: Callable[[], Iterator], json_file: str | None, compare: str | None,
           plot: str | None) -> None:
    """Run ``rows()``, showing progress; Ctrl-C stops and still reports what was measured."""
    from .. import bench
    from .output import Out

    out = Out()
    con, err = out.console, out.err
    old = bench.load(compare) if compare else None
    try:
        with err.status("measuring (warm-up excluded)...") as status:
            for row in rows():
                result.rows.append(row)
                status.update(f"measured {row.name}: {row.task}")
    except KeyboardInterrupt:
        result.interrupted = True
        err.print("[yellow]interrupted: reporting what was measured so far[/]")
    report(con, result)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}", markup=True, highlight=False)
    _histograms(con, result)
    if old is not None:
        compare_table(con, bench.compare(result, old))
    if json_file:
        bench.save(result, json_file)
        err.print(f"[dim]wrote {json_file}[/]")
    if plot:
        _plot(result, plot, err)


def _fmt(row) -> tuple[str, str, str, str]:
    s = row.stats
    if row.unit == "streams":  # in full below the table (capacity_text): the cell says only what is proven
        low, missed = int(s.p50), row.params.get("missed")
        exact = missed == low + 1 or "missed" not in row.params  # files from before "missed" was kept
        if exact:
            return f"{low} streams", "", "", ""
        return (f"≥{low} streams" if missed is None else f"{low}-{missed - 1} streams"), "", "", ""
    if row.unit == "ms":
        return f"{s.p50:.1f} ms", f"{s.p90:.1f}", f"{s.p99:.1f}", f"{s.mean:.1f}"
    def x(v: float) -> str:  # two significant digits below 1 (0.034x, not 0.0x)
        return f"{v:,.1f}" if abs(v) >= 1 or v == 0 else f"{v:.2g}"

    return f"{x(s.p50)}x", x(s.p90), x(s.p99), x(s.mean)


COLUMNS = ("stage", "what", "task", "batch", "p50", "p90", "p99", "mean", "n", "peak MB")
#: Dropped in this order, one at a time, when a terminal is too narrow for a stage's block (all in --json).
OPTIONAL = ("mean", "p90", "peak MB")


def _cells(r) -> dict[str, str]:
    mem = r.memory.get("cuda_max_allocated_mb") or r.memory.get("peak_rss_mb")
    p50, p90, p99, mean = _fmt(r)
    return {"stage": r.stage, "what": r.name, "task": r.task, "batch": str(r.params.get("batch", "")), "p50": p50,
            "p90": p90, "p99": p99, "mean": mean, "n": str(r.stats.n), "peak MB": f"{mem:,.0f}" if mem else ""}


def report(con, result) -> None:
    """The results table for ``con``'s width, then the capacity and budget lines and the machine.

    One table when it fits; on a narrower terminal one block per stage, each subject's full name on
    a line of its own (the reference first) above its tasks, so no name is cut and no task wraps."""
    from rich.measure import Measurement
    from rich.table import Table

    from .. import bench

    label = " (synthetic weights: speed only)" if result.synthetic else ""
    t = Table(title=f"moshikit bench{label}", caption=result.convention)
    for col in COLUMNS:
        t.add_column(col, justify="left" if col in ("stage", "what", "task") else "right")
    for r in result.rows:
        t.add_row(*_cells(r).values())
    if Measurement.get(con, con.options.update_width(10_000), t).maximum <= con.width:
        con.print(t)
    else:
        stages = {stage: {name: [_cells(r) for r in rs] for name, rs in subjects.items()}
                  for stage, subjects in by_stage(result.rows).items()}
        _blocks(con, f"moshikit bench{label}", stages, list(COLUMNS[2:]), OPTIONAL, result.convention)
    for r in result.rows:
        if r.unit == "streams":
            con.print(f"{r.name}: {r.task}: {bench.capacity_text(r)}")
        if "over_budget" in r.params:
            con.print(f"{r.name} {r.task}: {r.params['over_budget']:.0%} of frames over the 80 ms budget, "
                      f"headroom (80 ms - p99) {r.params['headroom_ms']:+.1f} ms")
    env = result.env
    con.print(f"[dim]{env.get('cpu')} ({env.get('cores')} cores), torch {env.get('torch')}, "
              f"threads {env.get('torch_threads')}, GPUs: {', '.join(g['name'] for g in env.get('gpus', [])) or 'none'}[/]")


def by_stage(rows) -> dict[str, dict[str, list]]:
    """{stage: {subject: rows}} in the order measured, the reference subjects of a stage first."""
    stages: dict[str, dict[str, list]] = {}
    for r in rows:
        stages.setdefault(r.stage, {}).setdefault(r.name, []).append(r)
    return {stage: dict(sorted(subjects.items(), key=lambda kv: "(reference)" not in kv[0]))
            for stage, subjects in stages.items()}


def _blocks(con, title: str, stages: dict[str, dict[str, list[dict[str, str]]]], columns: list[str],
            optional: tuple[str, ...], footer: str | None = None) -> None:
    """The narrow layout: ``{stage: {subject: [cells]}}`` as plain lines no wider than the console
    (markup-free, so widths are exact); ``optional`` columns go, in order, before a task wraps."""
    import textwrap

    from rich.text import Text

    width = max(con.width, 40)

    def line(text: str, style: str | None = None) -> None:
        con.print(Text(text, style=style or ""), soft_wrap=True, no_wrap=True, overflow="ignore")

    def wrapped(text: str, indent: str, style: str | None = None) -> None:
        for piece in textwrap.wrap(text, width - len(indent), break_on_hyphens=False) or [""]:
            line(indent + piece, style)

    wrapped(title, "", "bold")
    dropped: list[str] = []
    for stage, subjects in stages.items():
        cells = [x for xs in subjects.values() for x in xs]
        cols = [c for c in columns if c == "task" or any(x[c] for x in cells)]  # e.g. no batch in this stage

        def widths(cols):
            return {c: max([len(c)] + [len(x[c]) for x in cells]) for c in cols}

        w = widths(cols)
        task_room = lambda cols, w: width - 4 - sum(w[c] + 2 for c in cols if c != "task")  # noqa: E731
        for c in optional:
            if task_room(cols, w) >= w["task"] or c not in cols:  # a column goes before a task wraps
                continue
            cols.remove(c)
            dropped.append(c) if c not in dropped else None
        w = widths(cols)
        w["task"] = max(8, min(w["task"], task_room(cols, w)))

        def row_lines(vals: dict[str, str]) -> list[str]:
            task = textwrap.wrap(vals["task"], w["task"], break_on_hyphens=False) or [""]
            first = "    " + task[0].ljust(w["task"]) + "".join(
                "  " + vals[c].rjust(w[c]) for c in cols if c != "task")
            return [first.rstrip()] + ["    " + piece for piece in task[1:]]

        line("")
        line(stage, "bold")
        line(row_lines({c: c for c in cols})[0], "dim")
        for name, xs in subjects.items():
            wrapped(name, "  ", "bold")
            for x in xs:
                for text in row_lines(x):
                    line(text)
    if footer:
        line("")
        wrapped(footer, "", "dim")
    if dropped:
        wrapped(f"({', '.join(dropped)}: not shown at this width; in --json, or on a wider terminal)", "", "dim")


def _histograms(con, result) -> None:
    from .. import bench

    for r in result.rows:
        if r.unit != "ms" or r.stats.n < 5 or ("encode+decode" not in r.task and r.stage == "codec") \
                or r.stage == "agent":  # a few turns: p50/p90 say it
            continue
        con.print(f"\n[bold]{r.name}[/] {r.task}: latency distribution (ms)")
        for lo, hi, count, bar in bench.histogram(r.samples):
            con.print(f"  {lo:8.1f} - {hi:8.1f} │{bar} {count}")


def compare_table(con, pairs) -> None:
    """The speed-up of each row against an earlier run (``--compare``), fitted to ``con``'s width."""
    from rich.measure import Measurement
    from rich.table import Table

    t = Table(title="against the earlier run (speed-up: >1 is faster now)")
    for col in ("what", "task", "batch", "now", "before", "speed-up"):
        t.add_column(col)
    cells = [(new.name, new.task, str(new.params.get("batch", "")), _fmt(new)[0], _fmt(old)[0], f"{ratio:.2f}x")
             for new, old, ratio in pairs]
    for row in cells:
        t.add_row(*row)
    if Measurement.get(con, con.options.update_width(10_000), t).maximum <= con.width:
        con.print(t)
        return
    stages: dict[str, dict[str, list[dict[str, str]]]] = {}
    for (new, _, _), x in zip(pairs, cells):
        stages.setdefault(new.stage, {}).setdefault(new.name, []).append(dict(zip(("task", "batch", "now", "before",
                                                                                   "speed-up"), x[1:])))
    _blocks(con, t.title, stages, ["task", "batch", "now", "before", "speed-up"], ("before",))


def _plot(result, path: str, err) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        err.print("[yellow]--plot needs matplotlib (pip install matplotlib); skipped[/]")
        return
    rows = [r for r in result.rows if r.unit == "ms"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in rows:
        ax.hist(r.samples, bins=30, alpha=0.5, label=f"{r.name}: {r.task}")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    err.print(f"[dim]wrote {path}[/]")
