"""``encode`` and ``transcribe`` over a Ray cluster.

The work is the same as the local commands': each worker runs the library function
(``codec.encode_files`` or ``stt.transcribe_files``) on a shard of files, so outputs are
byte for byte what the local command writes. What this module adds is around it:

* inputs: local paths and trees (mapped exactly as the local command maps them),
  manifest files (one path or URI a line, or a CSV/Parquet column) and fsspec URIs;
* a pool of Ray actors, each loading the model once and reusing it for every shard it is
  given; a worker's inputs on remote storage are fetched (and its outputs uploaded) in a
  second thread while the model works on the previous shard;
* scheduling: shards go to whichever actor is free (at most two queued per actor), so
  fast nodes take more; an actor that dies has its unfinished shards split into single
  files and retried on the others (a replacement actor is started), and a file that
  kills its worker ``max_attempts`` times is recorded as failed instead of looping;
* a Parquet manifest (source, output, duration, frames, status, error, node, ...) written
  atomically every few seconds and at the end: a rerun skips what it lists as done (and
  the worker skips complete outputs that it does not list yet).

Why actors and not Ray Data: the local library already streams long inputs in bounded
memory and batches short ones (STT refills batch slots as files end). Ray Data's
row/batch model would ship whole decoded files through the object store (an hour of
24 kHz float32 audio is 345 MB) and cut the slot refill at every batch boundary, and its
per-row results do not map onto per-file outcomes with retries as directly as a shard
call that returns one record per file.
"""

from .cluster import RAY_TOKEN_HINT, connect, enable_ray_token_auth, ray_token_available, require_ray
from .job import JobStats, NodeStats, RayJob, RayOptions, RayResult
from .manifest import (MANIFEST_COLUMNS, Task, default_manifest, jobs_of, plan_tasks, read_manifest,
                       read_result_manifest, write_result_manifest)
from .storage import INSTALL_HINT, is_uri
from .work import Worker, WorkSpec, batch_groups, load_model, probe, run_tasks, stage, upload

__all__ = ["INSTALL_HINT", "MANIFEST_COLUMNS", "RAY_TOKEN_HINT", "JobStats", "NodeStats", "RayJob", "RayOptions",
           "RayResult", "Task", "WorkSpec", "Worker", "batch_groups", "connect", "default_manifest",
           "enable_ray_token_auth", "is_uri", "jobs_of", "load_model", "plan_tasks", "probe", "ray_token_available",
           "read_manifest", "read_result_manifest", "require_ray", "run_tasks", "stage", "upload",
           "write_result_manifest"]
