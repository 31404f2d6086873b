"""Talking to the hub: its errors in one line with what to do, model info and single files."""

from __future__ import annotations

import errno
from pathlib import Path

from ..errors import ModelError
from .paths import cache_dir, endpoint, offline


class HubUnreachable(ModelError):
    """No network, the hub down, or HF_HUB_OFFLINE: the cache is all there is."""


def hub_error(exc: BaseException, repo: str, revision: str | None, what: str | None = None) -> ModelError:
    """One line for anything huggingface_hub or requests raised about ``repo``."""
    import requests
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    rev = revision or "main"
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):  # before EntryNotFoundError, its base
        return HubUnreachable(f"{repo}: not in the cache and the hub cannot be reached"
                              + (" (HF_HUB_OFFLINE is set)" if offline() else ""))
    if isinstance(exc, GatedRepoError):
        return ModelError(f"{repo} is gated: accept its conditions on the hub and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelError(f"{repo}: no such repository on the hub (or it is private: set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return ModelError(f"{repo} has no revision {rev!r}", hint="give a branch, tag or commit that exists "
                                                                  "(the default is main)")
    if isinstance(exc, EntryNotFoundError):
        return ModelError(f"{repo}@{rev} has no file {what or ''}".rstrip())
    # hf_hub_download turns connection errors of its HEAD request into LocalEntryNotFoundError
    # (above), so one that escapes it was raised while the file itself streamed in.
    streaming = isinstance(exc, requests.ConnectionError) and what is not None and not isinstance(
        exc, (requests.exceptions.SSLError, requests.exceptions.ProxyError))
    if streaming or isinstance(exc, (requests.exceptions.ChunkedEncodingError,
                                     requests.exceptions.ContentDecodingError)):
        return ModelError(f"connection lost while downloading {repo}/{what or ''}".rstrip("/")
                          + ": the part received is kept in the cache",
                          hint="run the same command again to resume")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return HubUnreachable(f"cannot reach the hub at {endpoint()} ({type(exc).__name__})",
                              hint="check the network, or set HF_HUB_OFFLINE=1 to use only the cache")
    if isinstance(exc, HfHubHTTPError):
        return ModelError(f"{repo}: {str(exc).strip().splitlines()[0]}")
    if isinstance(exc, OSError):
        return cache_write_error(exc, what or repo)
    return ModelError(f"{repo}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")


def cache_write_error(exc: OSError, what: str) -> ModelError:
    """One line for an OS error met while writing (or removing) ``what`` in the cache."""
    cache = cache_dir()
    if exc.errno == errno.ENOSPC:
        return ModelError(f"disk full while writing {what} in {cache}",
                          hint="free some space and run the same command again: the download resumes")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST):
        return ModelError(f"cannot write to the Hugging Face cache at {cache} ({exc.strerror or exc})",
                          hint="set HF_HUB_CACHE (or HF_HOME) to a writable directory")
    return ModelError(f"{what}: {exc.strerror or exc}")


def model_info(repo: str, revision: str):
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise hub_error(exc, repo, revision) from None


def fetch_file(repo: str, name: str, revision: str | None, **kw) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir(), **kw))
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise hub_error(exc, repo, revision, name) from None
