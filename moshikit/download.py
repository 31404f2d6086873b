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

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import catalog
from .catalog import Choice, Entry
from .errors import ModelError, UsageError
from .platform import PlatformInfo

SHA256 = re.compile(r"[0-9a-f]{64}")
SHA1 = re.compile(r"[0-9a-f]{40}")
DEFAULT_NAMES = {"moshi_name": "model.safetensors", "mimi_name": catalog.MIMI_FILE,
                 "tokenizer_name": catalog.MOSHI_TOKENIZER}


# ---------------------------------------------------------------- cache locations


def cache_dir() -> Path:
    """The hub cache, read when called (``HF_HUB_CACHE``, else ``HF_HOME``/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def repo_dir(repo: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / ("models--" + repo.replace("/", "--"))


def download_command(asked: str, *, variant: str | None = None, revision: str | None = None,
                     files: Sequence[str] | None = None) -> str:
    """The exact ``moshikit download ...`` line that fetches what was asked."""
    parts = ["moshikit", "download", asked]
    if variant:
        parts += ["--variant", variant]
    if revision and revision != "main":
        parts += ["--revision", revision]
    for f in files or ():
        parts += ["--file", f]
    return " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------- plans


@dataclass
class PlannedFile:
    name: str
    size: int | None  # bytes; None when the hub could not be asked and the file is not cached
    sha256: str | None = None  # LFS files: the hub's sha256
    blob_id: str | None = None  # git object id (of the LFS pointer for LFS files)
    cached: bool = False
    partial: int = 0  # bytes already in a .incomplete file
    #: For an ``hf://org/repo/file`` reference (``name``): the repo and file it names (fetched
    #: at that repo's main). None: a file of the plan's own repo.
    other_repo: str | None = None
    other_name: str | None = None

    def where(self, plan: "Plan") -> tuple[str, str, str | None]:
        """(repo, file name, revision) to fetch this file from."""
        if self.other_repo:
            return self.other_repo, self.other_name or self.name, "main"
        return plan.repo, self.name, plan.revision

    @property
    def etag(self) -> str | None:
        """The name huggingface_hub gives the blob in the cache."""
        return self.sha256 or self.blob_id

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "cached": self.cached,
                "partial_bytes": self.partial}


@dataclass
class Plan:
    """What ``download`` would fetch: the repository, revision and files, with sizes."""

    asked: str
    repo: str
    revision: str
    commit: str | None
    files: list[PlannedFile]
    choice: Choice | None = None
    exact: bool = True  # sizes from the hub; False: offline, sizes from the catalog/cache
    variant: str | None = None
    only_files: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)

    @property
    def entry(self) -> Entry | None:
        return self.choice.entry if self.choice else None

    @property
    def total_size(self) -> int | None:
        if all(f.size is not None for f in self.files):
            return sum(f.size or 0 for f in self.files)
        if self.entry is not None:
            return int(self.entry.size_gb * 1e9)
        return None

    @property
    def missing_size(self) -> int | None:
        if any(f.size is None for f in self.files if not f.cached):
            return None
        return sum((f.size or 0) - f.partial for f in self.files if not f.cached)

    @property
    def complete(self) -> bool:
        return all(f.cached for f in self.files)

    @property
    def command(self) -> str:
        return download_command(self.asked, variant=self.variant, revision=self.revision,
                                files=self.only_files)

    def to_json(self) -> dict:
        return {"model": self.asked, "repo": self.repo, "revision": self.revision, "commit": self.commit,
                "variant": self.entry.variant if self.entry else None,
                "backend": self.entry.backend if self.entry else None,
                "precision": self.entry.precision if self.entry else None,
                "files": [f.to_json() for f in self.files], "total_size": self.total_size,
                "to_download": self.missing_size, "sizes_exact": self.exact,
                "reasons": self.choice.reasons if self.choice else [], "warnings": self.warnings}


def platform_or_here(plat: PlatformInfo | None) -> PlatformInfo:
    """``plat``, else this machine (``MOSHIKIT_PLATFORM`` if set)."""
    return plat if plat is not None else catalog.current_platform()


def resolve_target(model: str, variant: str | None, plat: PlatformInfo | None, any_platform: bool
                   ) -> tuple[str, Choice | None]:
    """(repo id, catalog choice or None) for a name; local paths are refused here."""
    if Path(model).expanduser().exists() and not catalog.family_of(model):
        raise UsageError(f"{model} is a local path: there is nothing to download",
                         hint="commands take local paths directly with --model")
    if catalog.family_of(model) is None and not catalog.is_repo_id(model):
        raise catalog.unknown(model)
    if catalog.is_repo_id(model) and catalog.by_repo(model) is None:
        if variant:
            raise UsageError(f"--variant applies to catalog names, not to {model}",
                             hint="name the variant's repository directly, or drop --variant")
        return model, None
    choice = catalog.choose(model, platform_or_here(plat), variant, any_platform=any_platform)
    return choice.entry.repo, choice


def wanted_files(entry: Entry | None, config: dict | None) -> tuple[list[str], list[str]]:
    """(required, optional) file names a run needs: config.json's names win over the catalog's."""
    if entry is None:
        if config is None:
            return [], []
        names = [config.get(k) or v for k, v in DEFAULT_NAMES.items()]
        return ["config.json", *names], []
    required = list(entry.files)
    if config is not None and entry.kind != "codec":
        keys = {"moshi_name": "model", "mimi_name": "mimi", "tokenizer_name": "tokenizer"}
        for key in keys:
            name = config.get(key)
            if not name or name in required:
                continue
            old = slot_of(required, key)
            if old is not None:
                required[required.index(old)] = name
    optional = [f for f in entry.optional if f not in required]
    return required, optional


def slot_of(names: list[str], key: str) -> str | None:
    """Which of the catalog's names plays the role of config key ``key``."""
    for n in names:
        if key == "tokenizer_name" and n.endswith(".model"):
            return n
        if key == "mimi_name" and (n.startswith("tokenizer-") or "mimi" in n) and n.endswith(".safetensors"):
            return n
        if key == "moshi_name" and n.startswith("model") and not n.endswith(".model"):
            return n
    return None


def plan(model: str, *, variant: str | None = None, revision: str | None = None,
         files: Sequence[str] | None = None, platform: PlatformInfo | None = None,
         any_platform: bool = False) -> Plan:
    """What downloading ``model`` means here: asks the hub for sizes, or (offline) the cache and catalog."""
    repo, choice = resolve_target(model, variant, platform, any_platform)
    revision = revision or "main"
    p = Plan(model, repo, revision, None, [], choice, variant=variant, only_files=tuple(files or ()))
    if choice is not None:
        p.warnings += choice.warnings
    if offline():
        return _plan_from_cache(p, files)
    info = _model_info(repo, revision)
    p.commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    if files:
        required, optional = list(files), []
    elif choice is None:
        required, optional = [n for n in siblings if n != ".gitattributes"], []
    else:
        required, optional = wanted_files(choice.entry, None)
        if any(n not in siblings for n in required) and "config.json" in siblings:
            required, optional = wanted_files(choice.entry, read_json(_fetch(repo, "config.json", revision)))
    refs = [n for n in required if is_other_repo_ref(n)]
    required = [n for n in required if n not in refs]
    missing = [n for n in required if n not in siblings]
    if missing:
        raise ModelError(f"{repo}@{revision} has no file {missing[0]}"
                         + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else ""),
                         hint="files there: " + (", ".join(sorted(siblings)[:12]) or "none"))
    blobs = repo_dir(repo) / "blobs"
    for name in required + [n for n in optional if n in siblings]:
        s = siblings[name]
        f = PlannedFile(name, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
        if f.etag:
            blob = blobs / f.etag
            f.cached = blob.is_file() and (f.size is None or blob.stat().st_size == f.size)
            partial = blobs / (f.etag + ".incomplete")
            f.partial = partial.stat().st_size if partial.is_file() and not f.cached else 0
        p.files.append(f)
    for ref in refs:  # files config.json names in another repo (the -q8 repos' Mimi and tokenizer)
        other, name = split_ref(ref)
        s = {x.rfilename: x for x in _model_info(other, "main").siblings or []}.get(name)
        if s is None:
            raise ModelError(f"{other} has no file {name} (named by {repo}'s config.json as {ref})")
        f = PlannedFile(ref, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id, other_repo=other, other_name=name)
        if f.etag:
            blob = repo_dir(other) / "blobs" / f.etag
            f.cached = blob.is_file() and (f.size is None or blob.stat().st_size == f.size)
        p.files.append(f)
    return p


def is_other_repo_ref(name: str) -> bool:
    from .backends.lm_repo import is_other_repo_ref as check

    return check(name)


def split_ref(name: str) -> tuple[str, str]:
    from .backends.lm_repo import split_ref as split

    return split(name)


def _ref_file(name: str, **kw) -> "PlannedFile":
    other, path = split_ref(name)
    return PlannedFile(name, other_repo=other, other_name=path, **kw)


def _plan_from_cache(p: Plan, files: Sequence[str] | None) -> Plan:
    """Offline: the files named by the catalog (or config.json, if cached), sizes where cached."""
    from huggingface_hub import try_to_load_from_cache

    p.exact = False
    cache = cache_dir()
    ref = repo_dir(p.repo, cache) / "refs" / p.revision
    p.commit = ref.read_text().strip() if ref.is_file() else (p.revision if SHA1.fullmatch(p.revision) else None)
    config_path = try_to_load_from_cache(p.repo, "config.json", cache_dir=cache, revision=p.revision)
    config = read_json(Path(config_path)) if isinstance(config_path, str) else None
    if files:
        names = list(files)
    elif p.entry is not None or config is not None:
        required, optional = wanted_files(p.entry, config)
        names = required + [n for n in optional if isinstance(
            try_to_load_from_cache(p.repo, n, cache_dir=cache, revision=p.revision), str)]
    else:
        names = _cached_names(p.repo, p.commit)
    for name in names:
        f = _ref_file(name, size=None) if is_other_repo_ref(name) else PlannedFile(name, None)
        repo, file, revision = f.where(p)
        path = try_to_load_from_cache(repo, file, cache_dir=cache, revision=revision)
        if isinstance(path, str):
            real = Path(os.path.realpath(path))
            blob = real.name
            f.size, f.cached = real.stat().st_size, True
            f.sha256 = blob if SHA256.fullmatch(blob) else None
            f.blob_id = blob if SHA1.fullmatch(blob) else None
        p.files.append(f)
    return p


def _cached_names(repo: str, commit: str | None) -> list[str]:
    if commit is None:
        return []
    snap = repo_dir(repo) / "snapshots" / commit
    return sorted(q.relative_to(snap).as_posix() for q in snap.rglob("*") if not q.is_dir()) if snap.is_dir() else []


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- hub errors


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


def _model_info(repo: str, revision: str):
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise hub_error(exc, repo, revision) from None


def _fetch(repo: str, name: str, revision: str | None, **kw) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir(), **kw))
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise hub_error(exc, repo, revision, name) from None


# ---------------------------------------------------------------- download


@dataclass
class Progress:
    """One progress report: the current file and the whole plan, in bytes."""

    file: str
    index: int  # 0-based position of ``file`` in the plan
    count: int
    file_done: int
    file_size: int | None
    done: int
    total: int | None
    phase: str  # "start" | "download" | "verify" | "done"
    resumed_from: int = 0


ProgressFn = Callable[[Progress], None]


@dataclass
class FileResult:
    name: str
    path: Path
    size: int
    downloaded: bool  # False: it was already in the cache
    resumed_from: int = 0
    check: str = "cached"  # "sha256" | "git-sha1" | "size" | "cached"

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "size": self.size, "downloaded": self.downloaded,
                "resumed_from": self.resumed_from, "verified": self.check}


@dataclass
class Download:
    plan: Plan
    path: Path  # the snapshot directory
    files: list[FileResult]

    @property
    def downloaded_bytes(self) -> int:
        return sum(f.size - f.resumed_from for f in self.files if f.downloaded)

    @property
    def result_path(self) -> Path:
        """What ``--quiet`` prints: the one file when the plan has one, else the snapshot directory."""
        return self.files[0].path if len(self.files) == 1 else self.path

    def to_json(self) -> dict:
        return {**self.plan.to_json(), "path": str(self.path), "result": str(self.result_path),
                "downloaded_bytes": self.downloaded_bytes, "files": [f.to_json() for f in self.files]}


def check_writable(cache: Path) -> None:
    """Fail with one line when the cache cannot be written (read-only disk, permissions, a file in the way)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".moshikit-probe-"):
            pass
    except OSError as exc:
        raise ModelError(f"cannot write to the Hugging Face cache at {cache} ({exc.strerror or exc})",
                         hint="set HF_HUB_CACHE (or HF_HOME) to a writable directory") from None


def check_space(cache: Path, needed: int | None) -> None:
    if not needed:
        return
    free = shutil.disk_usage(cache).free
    if free < needed:
        raise ModelError(f"not enough disk space in {cache}: {human_size(needed)} to download, "
                         f"{human_size(free)} free", hint="free some space, or set HF_HUB_CACHE to a bigger disk")


class _Watcher:
    """Polls the ``.incomplete`` file huggingface_hub writes and reports its growth."""

    def __init__(self, report: Callable[[int], None], incomplete: Path | None, interval: float = 0.1) -> None:
        self._report = report
        self._path = incomplete
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="moshikit-progress")

    def _run(self) -> None:
        last = -1
        while not self._stop.wait(self._interval):
            try:
                size = self._path.stat().st_size if self._path is not None else -1
            except OSError:
                continue
            if size != last and size >= 0:
                last = size
                try:
                    self._report(size)
                except Exception:  # noqa: BLE001 - a display problem must not stop a download
                    pass

    def __enter__(self) -> "_Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _label(p: Plan) -> str:
    return p.repo if p.asked == p.repo else f"{p.asked} ({p.repo})"


def download(p: Plan, *, on_progress: ProgressFn | None = None, verify: bool = True,
             force: bool = False) -> Download:
    """Fetch every file of ``p`` into the cache (resuming partial files), then check what was fetched."""
    if p.complete and not force:
        return _from_cache(p)
    if offline():
        raise ModelError(f"{_label(p)} is not fully in the Hugging Face cache and HF_HUB_OFFLINE is set",
                         hint=f"unset HF_HUB_OFFLINE and run `{p.command}`")
    if not p.exact:
        raise ModelError(f"{p.repo}: the plan was made offline; make it again online")
    cache = cache_dir()
    check_writable(cache)
    check_space(cache, p.missing_size if not force else p.total_size)
    total = p.total_size
    done_before = sum(f.size or 0 for f in p.files if f.cached and not force)
    results: list[FileResult] = []
    with _quiet_hf_bars(on_progress is not None):
        for i, f in enumerate(p.files):
            size = f.size or 0
            repo, name, revision = f.where(p)
            if f.cached and not force:
                results.append(FileResult(f.name, _fetch(repo, name, revision), size, False))
                continue
            blobs = repo_dir(repo, cache) / "blobs"
            incomplete = blobs / f"{f.etag}.incomplete" if f.etag else None
            resumed = 0 if force else (incomplete.stat().st_size if incomplete and incomplete.is_file() else 0)

            def report(n: int, phase: str = "download", i=i, f=f, resumed=resumed) -> None:
                if on_progress is not None:
                    on_progress(Progress(f.name, i, len(p.files), n, f.size, done_before + n, total, phase, resumed))

            report(resumed, "start")
            with _Watcher(report, incomplete) if on_progress is not None else _nullcontext():
                path = _fetch(repo, name, revision, force_download=force)
            check = _verify_download(path, f, p) if verify else "size"
            report(size, "done")
            done_before += size
            results.append(FileResult(f.name, path, size, True, resumed, check))
    return Download(p, _snapshot_dir(p, results, cache), results)


def _snapshot_dir(p: Plan, results: list["FileResult"], cache: Path) -> Path:
    own = [r for r, f in zip(results, p.files) if not f.other_repo]
    return _snapshot_of(own[0]) if own else repo_dir(p.repo, cache)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class _quiet_hf_bars:
    """huggingface_hub's own tqdm bars off while we draw ours."""

    NAME = "huggingface_hub.http_get"

    def __init__(self, active: bool) -> None:
        self.active = active
        self.was_disabled = True

    def __enter__(self):
        if self.active:
            from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

            self.was_disabled = are_progress_bars_disabled(self.NAME)
            disable_progress_bars(self.NAME)
        return self

    def __exit__(self, *exc):
        if self.active and not self.was_disabled:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars(self.NAME)


def _snapshot_of(r: FileResult) -> Path:
    path = r.path
    for _ in r.name.split("/"):
        path = path.parent
    return path


def _from_cache(p: Plan) -> Download:
    """Everything is cached: resolve the pointers without downloading (works offline too)."""
    from huggingface_hub import try_to_load_from_cache

    cache = cache_dir()
    results = []
    for f in p.files:
        repo, name, revision = f.where(p)
        path = try_to_load_from_cache(repo, name, cache_dir=cache,
                                      revision=revision if f.other_repo else p.commit or p.revision)
        if not isinstance(path, str):
            path = str(_fetch(repo, name, revision))
        results.append(FileResult(f.name, Path(path), f.size or Path(path).stat().st_size, False))
    return Download(p, _snapshot_dir(p, results, cache), results)


def _verify_download(path: Path, f: PlannedFile, p: Plan) -> str:
    """Size, then sha256 (LFS) or git blob id (small files), against the hub's metadata."""
    real = Path(os.path.realpath(path))
    size = real.stat().st_size
    problem = None
    check = "size"
    if f.size is not None and size != f.size:
        problem = f"size {size} instead of {f.size}"
    elif f.sha256:
        check = "sha256"
        got = hash_file(real, "sha256")
        problem = None if got == f.sha256 else f"sha256 {got[:12]}... instead of {f.sha256[:12]}..."
    elif f.blob_id:
        check = "git-sha1"
        got = hash_file(real, "git-sha1")
        problem = None if got == f.blob_id else f"git blob id {got[:12]}... instead of {f.blob_id[:12]}..."
    if problem:
        for q in (Path(path), real):
            try:
                q.unlink()
            except OSError:
                pass
        raise ModelError(f"{p.repo}/{f.name}: downloaded file is corrupt ({problem}); it was removed",
                         hint=f"run `{p.command}` again")
    return check


def hash_file(path: Path, algorithm: str, on_bytes: Callable[[int], None] | None = None) -> str:
    """sha256, or git's blob id (``git-sha1``), of a file."""
    path = Path(path)
    if algorithm == "git-sha1":
        h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return h.hexdigest()


# ---------------------------------------------------------------- sizes


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
