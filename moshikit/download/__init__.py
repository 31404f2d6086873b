"""Planning and downloading models into the Hugging Face cache (listing, verifying and removing
what is there: ``hubcache``).

Library functions only: they return dataclasses and report progress through
callbacks; the CLI (``moshikit/cli/download.py``) renders them.

Everything goes through ``huggingface_hub``'s public API (``HfApi.model_info``,
``hf_hub_download``, ``try_to_load_from_cache``, ``scan_cache_dir``) and its cache
layout, so ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and
``HF_ENDPOINT`` apply and the files are shared with ``moshi`` and ``moshi_mlx``.
Interrupted downloads resume from the cache's ``blobs/<etag>.incomplete`` file.
Downloaded files are checked for size and, where the hub gives one, sha256 (LFS
files) or git blob id (small files); in the cache a blob's name *is* that hash,
which is what ``verify`` re-checks.
"""

from .fetch import (Download, FileResult, Progress, ProgressFn, check_space, check_writable, download, hash_file)
from .hubapi import HubUnreachable, cache_write_error, hub_error
from .paths import (DEFAULT_NAMES, SHA1, SHA256, cache_dir, download_command, endpoint, human_size, offline,
                    read_json, repo_dir)
from .plan import (Plan, PlannedFile, is_other_repo_ref, plan, platform_or_here, resolve_target, slot_of,
                   split_ref, wanted_files)

__all__ = ["DEFAULT_NAMES", "SHA1", "SHA256", "Download", "FileResult", "HubUnreachable", "Plan", "PlannedFile",
           "Progress", "ProgressFn", "cache_dir", "cache_write_error", "check_space", "check_writable",
           "download", "download_command", "endpoint", "hash_file", "hub_error", "human_size", "is_other_repo_ref",
           "offline", "plan", "platform_or_here", "read_json", "repo_dir", "resolve_target", "slot_of",
           "split_ref", "wanted_files"]
