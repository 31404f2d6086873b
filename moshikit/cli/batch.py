"""Running a batch of per-file jobs with progress, per-file errors and a summary."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import typer

from ..errors import ExitStatus
from .output import Out


def plan_jobs(out: Out, inputs: list[str], output: str | None, suffix: str, *, include: Sequence[str] | None = None,
              extensions: Sequence[str] | None = None, manifest: str | None = None,
              manifest_column: str | None = None) -> tuple[list, list]:
    """A batch command's jobs and the inputs that cannot start, from its arguments or, with ``--manifest``
    (without ``--ray``), planned as the cluster plans them; when none can start, a line for each and exit FAILED."""
    if manifest:
        from .. import distributed as dist

        entries = dist.read_manifest(manifest, manifest_column)
        tasks, failed = dist.plan_tasks(inputs, output, suffix, manifest=entries, include=include or ())
        jobs = dist.jobs_of(tasks)
    else:
        from .. import filejobs

        more = {} if extensions is None else {"extensions": extensions}
        jobs, failed = filejobs.plan(inputs, output, suffix, include=include or (), **more)
    return require_some(out, jobs, failed), failed


def require_some(out: Out, jobs: list, failed: list) -> list:
    """``jobs``; when there are none, a line for each input that could not start, and exit FAILED."""
    if not jobs:
        for r in failed:
            out.error(r.error)
        raise typer.Exit(ExitStatus.FAILED)
    return jobs


def exit_on_failure(summary: dict) -> None:
    """A batch with a failed file exits FAILED (after its summary is printed)."""
    if summary["failed"]:
        raise typer.Exit(ExitStatus.FAILED)


def text_printer(out: Out) -> Callable[[str], None]:
    """Text pieces to the terminal (stderr) as a model emits them."""
    def show(piece: str) -> None:
        out.write(piece, err=True)

    return show


def run_batch(out: Out, label: str, total: int, total_seconds: float | None,
              work: Callable[[Callable[[float], None]], Iterator], failed_early: list, *,
              progress: bool = True, extra: Callable[[], dict] | None = None,
              on_file: Callable | None = None) -> dict:
    """Drive ``work(on_audio)``, print one line per failure, return the summary.

    ``progress=False`` leaves the terminal to the caller (transcribe prints text live);
    ``extra()`` adds keys to the summary (e.g. per-node throughput); ``on_file(progress)``
    runs after each file.
    """
    from ..errors import OutputError, interrupted_status

    results = list(failed_early)
    for r in failed_early:
        out.error(r.error)
    stopped: OutputError | None = None
    try:
        with out.progress(total, total_seconds, label, show=progress) as progress:
            try:
                for r in work(progress.add_audio):
                    results.append(r)
                    progress.file_done()
                    if on_file is not None:
                        on_file(progress)
                    if r.status == "failed":
                        out.error(r.error)
            except OutputError as exc:  # the output location is full or read-only: stop here
                if not exc.stops_batch:
                    raise
                stopped = exc
            elapsed = progress.elapsed
    except KeyboardInterrupt as exc:
        done = sum(r.status == "done" for r in results)
        what, status = interrupted_status(exc)
        out.err.print(f"{what} after {done} new file(s): finished files are kept and partial ones "
                      "removed; run the same command again to resume")
        raise typer.Exit(status) from None
    if stopped is not None:
        out.error(str(stopped), stopped.hint)
    done = [r for r in results if r.status == "done"]
    audio = sum(r.audio_seconds for r in done)
    summary = {
        "done": len(done),
        "skipped": sum(r.status == "skipped" for r in results),
        "failed": sum(r.status == "failed" for r in results) + (stopped is not None),
        "audio_seconds": round(audio, 3),
        "wall_seconds": round(elapsed, 3),
        "x_real_time": round(audio / elapsed, 2) if elapsed > 0 and audio else None,
        "files": [r.__dict__ for r in results],
    }
    if stopped is not None:
        summary["stopped"] = str(stopped)
        summary["not_started"] = max(0, total - (len(results) - len(failed_early)) - 1)
    if extra is not None:
        summary.update(extra())
    if out.json_mode:
        out.json(summary)
    else:
        speed_txt = f" at {audio / elapsed:,.1f}x real time" if done and elapsed > 0 else ""
        out.message(f"{label}: {summary['done']} done, {summary['skipped']} skipped (already there), "
                    f"{summary['failed']} failed; {audio:,.1f} s of audio{speed_txt}"
                    + (f"; stopped with {summary['not_started']} not started" if stopped is not None else ""))
    return summary
