"""The Ray runner: input planning and manifests without Ray, then jobs on a real
two-node Ray cluster on loopback (head + one worker node, 1 CPU each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from moshikit import distributed as dist
from moshikit.errors import UsageError
from moshikit.cli.app import main
from moshikit.codec import EncodeOptions

import pyarrow as pa  # noqa: E402  (the test extra: installed with the tests, never skipped)
import pyarrow.parquet as pq  # noqa: E402


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".parquet")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, speech, write_wav):
    """9 readable inputs (one longer than a 10 s batch, one stereo at 44.1 kHz) and one corrupt."""
    root = tmp_path_factory.mktemp("ray-in")
    for i in range(8):
        write_wav(root / f"{'sub/' if i % 2 else ''}clip{i}.wav", speech[i * 7000 : i * 7000 + 24000 * (1 + i % 3)])
    write_wav(root / "long.wav", speech[: 24000 * 12])
    sf.write(root / "sub/stereo.flac", np.stack([speech[:44100], speech[44100:88200]], 1), 44100)
    (root / "sub/corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk that is not audio")
    return root


# ---------------------------------------------------------------- without Ray


def test_read_manifest_text_csv_parquet(tmp_path):
    (tmp_path / "list.txt").write_text("# inputs\na.wav\n\n  s3://b/x.flac \n")
    assert dist.read_manifest(str(tmp_path / "list.txt")) == ["a.wav", "s3://b/x.flac"]
    (tmp_path / "m.csv").write_text("id,audio,text\n1,a.wav,hi\n2,b.wav,yo\n")
    assert dist.read_manifest(str(tmp_path / "m.csv")) == ["a.wav", "b.wav"]
    assert dist.read_manifest(str(tmp_path / "m.csv"), "text") == ["hi", "yo"]
    pq.write_table(pa.table({"n": [1, 2], "path": ["c.wav", "d.wav"]}), tmp_path / "m.parquet")
    assert dist.read_manifest(str(tmp_path / "m.parquet")) == ["c.wav", "d.wav"]
    with pytest.raises(UsageError, match="no column 'nope' \\(columns: n, path\\)"):
        dist.read_manifest(str(tmp_path / "m.parquet"), "nope")
    with pytest.raises(UsageError, match="no such manifest"):
        dist.read_manifest(str(tmp_path / "missing.txt"))


def test_plan_matches_the_local_planner_and_mirrors_manifests(tree, tmp_path):
    from moshikit.filejobs import plan

    tasks, failed = dist.plan_tasks([str(tree)], str(tmp_path / "out"), ".mimi")
    jobs, _ = plan([str(tree)], str(tmp_path / "out"), ".mimi")
    assert [(t.source, t.output) for t in tasks] == [(str(j.source), str(j.output)) for j in jobs]
    assert not failed and len(tasks) == 11
    # A manifest mirrors its entries' common directory; URIs are walked with fsspec.
    entries = [str(tree / "clip0.wav"), str(tree / "sub/clip1.wav")]
    tasks, _ = dist.plan_tasks([], "s3://bucket/tok", ".mimi", manifest=entries)
    assert [t.output for t in tasks] == ["s3://bucket/tok/clip0.mimi", "s3://bucket/tok/sub/clip1.mimi"]
    tasks, failed = dist.plan_tasks([f"file://{tree}/sub", f"file://{tree}/nothing.wav"], str(tmp_path / "o"), ".txt")
    assert sorted(Path(t.output).name for t in tasks) == ["clip1.txt", "clip3.txt", "clip5.txt", "clip7.txt",
                                                          "corrupt.txt", "stereo.txt"]
    assert tasks[0].source.startswith("file://") and "no such file" in failed[0].error


def test_worker_function_stages_uris_and_records_failures(tree, tmp_path, torch_codec):
    """What each actor runs, in-process: file:// inputs fetched, outputs uploaded, a corrupt
    input failed alone, and the outputs equal the local encode's."""
    spec = dist.WorkSpec("encode", {}, EncodeOptions())
    names = ["clip0.wav", "sub/corrupt.wav", "sub/clip1.wav"]
    tasks = [dist.Task(f"file://{tree}/{n}", f"file://{tmp_path}/uri/{Path(n).with_suffix('.mimi')}") for n in names]
    rows = dist.run_tasks(spec, torch_codec, tasks, node="n1")
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert "not a readable audio file" in rows[1]["error"] and rows[0]["frames"] == 13 and rows[0]["node"] == "n1"
    local = dist.run_tasks(spec, torch_codec, [dist.Task(str(tree / n), str(tmp_path / "loc" / Path(n).with_suffix(".mimi")))
                                               for n in names])
    assert [r["status"] for r in local] == ["done", "failed", "done"]
    assert files_of(tmp_path / "uri") == files_of(tmp_path / "loc")
    assert [r["status"] for r in dist.run_tasks(spec, torch_codec, tasks)] == ["skipped", "failed", "skipped"]


def test_batch_groups_follow_the_local_batching():
    spec = dist.WorkSpec("encode", {}, EncodeOptions(batch_size=2))
    tasks = [dist.Task(str(i), str(i)) for i in range(6)]
    short, long_, bad = {"frames": 24000, "channels": 1, "error": None}, {"frames": 10**7, "channels": 1, "error": None}, \
        {"frames": None, "channels": None, "error": "x"}
    groups = dist.batch_groups(spec, tasks, [short, long_, short, bad, short, short])
    # short+long+short share a batch (the long one streams meanwhile); bad stands alone.
    assert [[t.source for t in g] for g in groups] == [["0", "1", "2"], ["3"], ["4", "5"]]


def test_ray_flag_without_ray_says_how_to_install(tree, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = run(capsys, "encode", str(tree), "--ray")
    assert code == 2 and "--ray needs Ray" in err and 'pip install "moshikit[ray]"' in err


def test_manifest_without_ray_runs_locally(tree, tmp_path, capsys, mimi_weights):
    (tmp_path / "list.txt").write_text(f"{tree}/clip0.wav\n{tree}/sub/clip1.wav\n")
    code, out, err = run(capsys, "encode", "--manifest", str(tmp_path / "list.txt"), "-o", str(tmp_path / "t"),
                         "--mimi-weight", str(mimi_weights), "--json")
    assert code == 0, err
    assert sorted(files_of(tmp_path / "t")) == ["clip0.mimi", "sub/clip1.mimi"]


# ---------------------------------------------------------------- on a Ray cluster


@pytest.fixture(scope="module")
def cluster(mimi_weights):
    ray = pytest.importorskip("ray")
    from moshikit.testing.ray_cluster import LocalCluster

    from moshikit.synthetic.stt import ensure_synthetic_stt

    ensure_synthetic_stt()  # written once here, not raced by two workers
    with LocalCluster(workers=1, cpus=1, object_store_mb=200) as c:
        yield c
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture()
def one_thread():
    """Ray gives an actor as many torch threads as CPUs it reserves (1 here); the local
    reference runs the same way, since the thread count changes float summation order."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_encode_on_ray_equals_local_fails_corrupt_and_resumes(cluster, tree, tmp_path, capsys, mimi_weights,
                                                              one_thread):
    w = str(mimi_weights)
    code, _, err = run(capsys, "encode", str(tree), "-o", str(tmp_path / "local"), "--mimi-weight", w,
                       "--batch-size", "3")
    assert code == 1 and "corrupt.wav" in err
    # Interrupted midway: the job is dropped after 4 files (as on Ctrl-C).
    tasks, _ = dist.plan_tasks([str(tree)], str(tmp_path / "ray"), ".mimi")
    spec = dist.WorkSpec("encode", {"mimi_weight": w}, EncodeOptions(batch_size=3))
    manifest = str(tmp_path / "ray" / "moshikit-encode.parquet")
    job = dist.RayJob(tasks, spec, dist.RayOptions(address=cluster.address, shard_size=1, manifest=manifest))
    results = job.results()
    first = [next(results) for _ in range(4)]
    results.close()
    done_first = {r.source: os.stat(r.output).st_mtime_ns for r in first if r.status == "done"}
    assert len(done_first) >= 3 and len(pq.read_table(manifest)) >= 4
    # long.wav's row after the rerun: what the interrupted run left decides it (a worker may
    # have finished it after the last manifest write: then the rerun finds it and skips it).
    listed = {Path(r["source"]).name: r["status"] for r in pq.read_table(manifest).to_pylist()}
    long_status = "skipped" if listed.get("long.wav") != "done" and (tmp_path / "ray" / "long.mimi").exists() \
        else "done"

    code, out, err = run(capsys, "encode", str(tree), "-o", str(tmp_path / "ray"), "--mimi-weight", w,
                         "--batch-size", "3", "--ray-address", cluster.address, "--json")
    assert code == 1, err  # the corrupt input
    summary = json.loads(out)
    assert (summary["done"] + summary["skipped"], summary["failed"]) == (10, 1)
    assert summary["skipped"] >= len(done_first) and summary["probed_audio_seconds"] > 0
    # Two nodes, one worker each; on a loaded machine the second worker may report in only after the
    # few files left were done by the first (the summary lists the workers that reported).
    assert 1 <= len(summary["nodes"]) <= 2 and summary["workers"] == sum(n["workers"] for n in summary["nodes"])
    assert sum(n["files"] for n in summary["nodes"]) == summary["done"]
    for src, mtime in done_first.items():  # not redone
        assert os.stat(tmp_path / "ray" / Path(src).relative_to(tree).with_suffix(".mimi")).st_mtime_ns == mtime
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "local")  # byte for byte

    rows = {Path(r["source"]).name: r for r in pq.read_table(manifest).to_pylist()}
    assert set(rows) == {p.name for p in tree.rglob("*") if p.is_file()}
    assert rows["corrupt.wav"]["status"] == "failed" and "not a readable audio file" in rows["corrupt.wav"]["error"]
    assert rows["long.wav"]["status"] == long_status
    if long_status == "done":  # measured by the run that encoded it
        assert rows["long.wav"]["frames"] == 150 and rows["long.wav"]["duration"] == pytest.approx(12.0)
    assert any(r["status"] == "done" and r["frames"] and r["duration"] for r in rows.values())


def test_transcribe_on_ray_equals_local(cluster, tree, tmp_path, capsys, one_thread):
    (tmp_path / "list.csv").write_text("path,text\n" + "".join(
        f"{tree / n},x\n" for n in ["clip0.wav", "sub/clip1.wav", "clip2.wav", "sub/corrupt.wav"]))
    common = ["--manifest", str(tmp_path / "list.csv"), "--model", "synthetic", "--backend", "torch",
              "--device", "cpu", "--batch-size", "2", "-f", "txt,json", "--json"]
    code, out, err = run(capsys, "transcribe", "-o", str(tmp_path / "local"), *common)
    assert code == 1 and json.loads(out)["done"] == 3 and "corrupt.wav" in err
    # One worker (the encode test covers two): an STT model load less on this 2-core machine.
    code, out, err = run(capsys, "transcribe", "-o", str(tmp_path / "ray"), *common, "--ray-address",
                         cluster.address, "--ray-workers", "1")
    summary = json.loads(out)
    assert code == 1 and (summary["done"], summary["failed"]) == (3, 1), err
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "local")
    assert sorted(files_of(tmp_path / "ray")) == ["clip0.json", "clip0.txt", "clip2.json", "clip2.txt",
                                                  "sub/clip1.json", "sub/clip1.txt"]
    rows = pq.read_table(tmp_path / "ray" / "moshikit-transcribe.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["done"] * 3 + ["failed"]


def test_a_killed_worker_has_its_files_retried(cluster, tree, tmp_path, mimi_weights):
    tasks, _ = dist.plan_tasks([str(tree)], str(tmp_path / "ray"), ".mimi")
    spec = dist.WorkSpec("encode", {"mimi_weight": str(mimi_weights)}, EncodeOptions(batch_size=1))
    job = dist.RayJob(tasks, spec, dist.RayOptions(address=cluster.address, shard_size=1,
                                                   manifest=str(tmp_path / "m.parquet")))
    results = []
    killed = None
    for r in job.results():
        results.append(r)
        if killed is None and r.status == "done":
            # SIGKILL the worker process that did not just finish: it is mid-shard.
            victim = next(w for w in job.workers if f"/{w['node_id'][:8]}" not in r.node) \
                if len(job.workers) > 1 else job.workers[0]
            os.kill(victim["pid"], signal.SIGKILL)
            killed = victim
    assert killed is not None and job.stats.worker_deaths == 1
    status = {Path(r.source).name: r.status for r in results}
    assert status.pop("corrupt.wav") == "failed"
    # "skipped": a file the killed worker finished (its output written atomically) before it died,
    # kept by the resume rule when its shard is retried; every output is complete either way
    assert set(status.values()) <= {"done", "skipped"} and "done" in status.values() and len(status) == 10
    from moshikit.tokens import is_complete

    assert all(is_complete(Path(r.output)) for r in results if r.status in ("done", "skipped"))
    assert job.stats.retried_files >= 1


# ---------------------------------------------------------------- token authentication


@pytest.fixture(scope="module")
def token_home(tmp_path_factory):
    """A home where an earlier `--ray-address local` left Ray's token (~/.ray/auth_token)."""
    home = tmp_path_factory.mktemp("ray-home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("a" * 64)
    return home


def test_token_detection_follows_rays_own_sources(token_home, tmp_path):
    assert dist.ray_token_available({"HOME": str(token_home)})
    assert not dist.ray_token_available({"HOME": str(tmp_path)})
    assert dist.ray_token_available({"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "t"})
    assert dist.ray_token_available({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(token_home / ".ray" /
                                                                                          "auth_token")})
    assert not dist.ray_token_available({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})


@pytest.fixture(scope="module")
def token_cluster(token_home, mimi_weights):
    """A one-node cluster that found the token and turned token authentication on."""
    pytest.importorskip("ray")
    from moshikit.testing.ray_cluster import LocalCluster

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    with LocalCluster(workers=0, cpus=1, object_store_mb=100, env={**env, "HOME": str(token_home)}) as c:
        c.env.pop("RAY_AUTH_MODE", None)  # what the user's shell has: nothing set
        yield c


def _encode_on(cluster, tree, out, mimi_weights, **env):
    base = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run([sys.executable, "-m", "moshikit", "encode", str(tree / "clip0.wav"), "-o", str(out),
                           "--mimi-weight", str(mimi_weights), "--ray-address", cluster.address, "--json"],
                          env={**base, **env}, capture_output=True, text=True, timeout=300)


def test_a_token_cluster_runs_with_nothing_set(token_cluster, tree, tmp_path, mimi_weights):
    """The issue's user: ~/.ray/auth_token exists, the cluster uses it, RAY_AUTH_MODE is unset."""
    r = _encode_on(token_cluster, tree, tmp_path / "out", mimi_weights)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == 1 and (tmp_path / "out" / "clip0.mimi").is_file()


def test_a_token_cluster_refusing_this_client_says_what_to_set(token_cluster, tree, tmp_path, mimi_weights):
    r = _encode_on(token_cluster, tree, tmp_path / "out", mimi_weights, RAY_AUTH_MODE="disabled")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    mine = [line for line in r.stderr.splitlines() if not line.startswith("[")]  # Ray's own log lines start "[date"
    assert any("set RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line for line in mine), r.stderr
    assert not (tmp_path / "out" / "clip0.mimi").exists()
