"""The ``--ray`` path shared by encode and transcribe: plan, run on the cluster, render."""

from __future__ import annotations

from .batch import require_some, run_batch
from .output import Out


def run_on_ray(out: Out, kind: str, inputs: list[str], output: str | None, suffix: str, *, include, manifest,
               manifest_column, load: dict, opts, address, workers, cpus, gpus, job_manifest) -> dict:
    """Plan the inputs, run them on the cluster and print the summary (per node too)."""
    from .. import distributed as dist

    dist.require_ray()
    entries = dist.read_manifest(manifest, manifest_column) if manifest else []
    tasks, failed = dist.plan_tasks(inputs, output, suffix, manifest=entries, include=include or ())
    require_some(out, tasks, failed)
    job = dist.RayJob(tasks, dist.WorkSpec(kind, load, opts), dist.RayOptions(
        address=address, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
        manifest=job_manifest or dist.default_manifest(kind, output)))
    out.message(f"[dim]ray: {len(tasks)} file(s); manifest {job.opts.manifest}[/]")
    shown = [0.0]

    def nodes_note(progress) -> None:
        import time

        if time.perf_counter() - shown[0] < 2.0:
            return
        shown[0] = time.perf_counter()
        speeds = sorted(n["x_real_time"] or 0.0 for n in job.stats.node_rows() if n["files"])
        if speeds:
            progress.note(f"{len(job.workers)} workers on {len(job.stats.nodes)} nodes; per node "
                          f"{speeds[0]:,.1f}x (slowest) to {speeds[-1]:,.1f}x")

    summary = run_batch(out, f"{kind} (ray)", len(tasks), None, job.results, failed, extra=job.summary_extra,
                        on_file=nodes_note)
    if not out.json_mode:
        for n in summary["nodes"]:
            speed = f"{n['x_real_time']:,.1f}x real time" if n["x_real_time"] is not None else "-"
            out.message(f"  node {n['node']}: {n['workers']} worker(s), {n['files']} file(s), "
                        f"{n['audio_seconds'] / 3600:,.3f} h of audio, {speed}")
        if summary["worker_deaths"]:
            out.message(f"  {summary['worker_deaths']} worker(s) died; {summary['retried_files']} file(s) retried")
    return summary
