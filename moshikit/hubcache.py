"""What is in the Hugging Face cache: listing catalog models, finding what a name means there,
verifying blobs against their hashes, and removing models.

Library functions only: they return dataclasses; the CLI (``moshikit/cli/download.py``)
renders them. Cache locations, plans and downloads are in ``download``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import catalog
from .catalog import Entry
from .download import (SHA1, SHA256, cache_dir, cache_write_error, hash_file, platform_or_here, read_json,
                       repo_dir, wanted_files)
from .errors import ModelError, UsageError
from .platform import PlatformInfo


# ---------------------------------------------------------------- listing


@dataclass
class ModelStatus:
    entry: Entry
    state: str  # "cached" | "partial" | "absent"
    size_on_disk: int
    path: Path | None  # the snapshot directory when anything is cached
    commit: str | None
    missing: list[str]
    picked: bool

    def to_json(self) -> dict:
        return {**self.entry.to_json(), "state": self.state, "cached": self.state == "cached",
                "size_on_disk": self.size_on_disk, "path": str(self.path) if self.path else None,
                "commit": self.commit, "missing_files": self.missing, "picked_here": self.picked}


def _scan(cache: Path | None = None) -> dict:
    """repo id -> CachedRepoInfo, from huggingface_hub's scan (empty when there is no cache yet)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache or cache_dir())
    except (CacheNotFound, ValueError):
        return {}
    return {r.repo_id: r for r in info.repos if r.repo_type == "model"}


def _revision(repo_info, revision: str = "main"):
    """The cached revision for ``revision`` (by ref or commit), else the newest one."""
    revs = sorted(repo_info.revisions, key=lambda r: r.last_modified, reverse=True)
    for r in revs:
        if revision in r.refs or r.commit_hash == revision:
            return r
    return revs[0] if revs else None


def _snapshot_files(rev) -> dict[str, object]:
    return {f.file_path.relative_to(rev.snapshot_path).as_posix(): f for f in rev.files}


def _partial_bytes(repo: str, cache: Path) -> int:
    blobs = repo_dir(repo, cache) / "blobs"
    return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0


def list_models(platform: PlatformInfo | None = None) -> list[ModelStatus]:
    """Every catalog entry: cached or not, its size on disk, and whether this machine would pick it."""
    plat = platform_or_here(platform)
    cache = cache_dir()
    scanned = _scan(cache)
    picked = set()
    for fam in catalog.FAMILIES:
        try:
            picked.add(catalog.choose(fam, plat).entry.id)
        except Exception:  # noqa: BLE001 - a family that fits nowhere is simply not marked
            pass
    out = []
    for e in catalog.ENTRIES:
        info = scanned.get(e.repo)
        rev = _revision(info) if info is not None else None
        files = _snapshot_files(rev) if rev is not None else {}
        config_path = files.get("config.json")
        config = read_json(config_path.file_path) if config_path is not None and e.kind != "codec" else None
        required, optional = wanted_files(e, config)
        present = [n for n in required + optional if n in files]
        missing = [n for n in required if n not in files]
        size = sum(files[n].size_on_disk for n in present)
        partial = _partial_bytes(e.repo, cache) if info is not None and missing else 0
        state = "absent"
        if not missing:
            state = "cached"
        elif present or partial:
            state = "partial"
        out.append(ModelStatus(e, state, size + partial, rev.snapshot_path if rev is not None and present else None,
                               rev.commit_hash if rev is not None else None, missing, e.id in picked))
    return out


# ---------------------------------------------------------------- targets in the cache


@dataclass
class Target:
    """A repository in the cache, whole (``files`` None) or some of its files."""

    repo: str
    files: tuple[str, ...] | None
    label: str


def cached_targets(names: Iterable[str], variant: str | None = None,
                   platform: PlatformInfo | None = None) -> list[Target]:
    """What ``names`` mean in the cache: every cached variant of an alias, a catalog entry, or a repo."""
    scanned = _scan()
    out: list[Target] = []
    for name in names:
        if catalog.is_repo_id(name) and catalog.by_repo(name) is None:
            if name not in scanned:
                raise ModelError(f"{name} is not in the Hugging Face cache ({cache_dir()})")
            out.append(Target(name, None, name))
            continue
        if catalog.family_of(name) is None and not catalog.is_repo_id(name):
            if Path(name).expanduser().exists():
                raise UsageError(f"{name} is a local path: moshikit only manages the Hugging Face cache")
            raise catalog.unknown(name)
        if variant or catalog.is_repo_id(name):
            ents = [catalog.choose(name, platform_or_here(platform), variant, any_platform=True).entry]
        else:
            ents = catalog.entries(catalog.family_of(name))
        found = [e for e in ents if e.repo in scanned and _entry_present(e, scanned[e.repo])]
        if not found:
            raise ModelError(f"nothing of {name} is in the Hugging Face cache ({cache_dir()})",
                             hint="see `moshikit models`")
        for e in found:
            whole = catalog.by_repo(e.repo) is e
            out.append(Target(e.repo, None if whole else e.files, f"{e.family} {e.variant}"))
    # A whole repository covers any part of it named too.
    wholes = {t.repo for t in out if t.files is None}
    merged: dict[tuple, Target] = {}
    for t in out:
        if t.files is not None and t.repo in wholes:
            continue
        merged.setdefault((t.repo, t.files), t)
    return list(merged.values())


def _entry_present(e: Entry, repo_info) -> bool:
    if catalog.by_repo(e.repo) is e:
        return True
    names = set()
    for rev in repo_info.revisions:
        names |= set(_snapshot_files(rev))
    return any(n in names for n in e.files)


# ---------------------------------------------------------------- removal


@dataclass
class Removal:
    targets: list[Target]
    paths: list[Path]  # files and directories to delete, in order
    freed: int
    also: list[str]  # other catalog entries that go with them (same repository)

    def to_json(self) -> dict:
        return {"targets": [{"repo": t.repo, "files": list(t.files) if t.files else None, "label": t.label}
                            for t in self.targets], "freed_bytes": self.freed, "also_removes": self.also,
                "paths": [str(p) for p in self.paths]}


def _disk_usage(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def plan_removal(names: Iterable[str], variant: str | None = None,
                 platform: PlatformInfo | None = None) -> Removal:
    """What removing ``names`` deletes and how much space it frees; nothing is deleted yet."""
    cache = cache_dir()
    targets = cached_targets(names, variant, platform)
    paths: list[Path] = []
    freed = 0
    also: list[str] = []
    for t in targets:
        rdir = repo_dir(t.repo, cache)
        if t.files is None:
            paths.append(rdir)
            locks = cache / ".locks" / rdir.name
            if locks.exists():
                paths.append(locks)
            freed += _disk_usage(rdir)
            for e in catalog.ENTRIES:
                if e.repo == t.repo and catalog.by_repo(e.repo) is not e and f"{e.family} {e.variant}" != t.label:
                    also.append(f"{e.family} ({e.repo} holds its files)")
            continue
        pointers = [p for snap in (rdir / "snapshots").glob("*") for p in (snap / n for n in t.files)
                    if p.is_symlink() or p.exists()]
        dropping = {Path(os.path.realpath(p)) for p in pointers}
        keep = {Path(os.path.realpath(p)) for p in (rdir / "snapshots").rglob("*")
                if (p.is_symlink() or p.is_file()) and p not in pointers}
        if not keep:  # nothing else left in the repository: remove it whole
            paths.append(rdir)
            freed += _disk_usage(rdir)
            continue
        paths += pointers
        for blob in sorted(dropping - keep):
            if blob.is_file():
                paths.append(blob)
                freed += blob.stat().st_size
    return Removal(targets, paths, freed, also)


def remove(r: Removal) -> int:
    """Delete what ``plan_removal`` listed; returns the bytes freed."""
    for p in r.paths:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError as exc:
            raise cache_write_error(exc, str(p)) from None
    return r.freed


# ---------------------------------------------------------------- verification


@dataclass
class Check:
    repo: str
    file: str
    commit: str
    size: int
    algorithm: str  # "sha256" | "git-sha1" | "partial" | "unknown"
    expected: str | None
    actual: str | None
    ok: bool
    problem: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def verify_cached(names: Iterable[str] | None = None, variant: str | None = None,
                  on_file: Callable[[str, int], None] | None = None,
                  on_bytes: Callable[[int], None] | None = None,
                  platform: PlatformInfo | None = None) -> list[Check]:
    """Re-hash cached files: a blob's name in the cache is its sha256 (LFS) or git blob id.

    ``names`` None: every catalog repository in the cache. Partial downloads are reported
    (not failed): the next ``moshikit download`` resumes them.
    """
    scanned = _scan()
    if names:
        targets = cached_targets(names, variant, platform)
    else:
        repos = sorted({e.repo for e in catalog.ENTRIES if e.repo in scanned})
        targets = [Target(r, None, r) for r in repos]
    checks: list[Check] = []
    seen: set[Path] = set()
    for t in targets:
        info = scanned.get(t.repo)
        if info is None:
            continue
        for rev in sorted(info.revisions, key=lambda r: r.commit_hash):
            for name, f in sorted(_snapshot_files(rev).items()):
                if t.files is not None and name not in t.files:
                    continue
                blob = Path(f.blob_path)
                if blob in seen:
                    continue
                seen.add(blob)
                checks.append(_check_blob(t.repo, name, rev.commit_hash, blob, on_file, on_bytes))
        blobs = repo_dir(t.repo) / "blobs"
        if t.files is None and blobs.is_dir():
            for part in sorted(blobs.glob("*.incomplete")):
                checks.append(Check(t.repo, part.name, "", part.stat().st_size, "partial", None, None, True,
                                    "an interrupted download: `moshikit download` resumes it"))
    return checks


def _check_blob(repo: str, name: str, commit: str, blob: Path, on_file, on_bytes) -> Check:
    try:
        size = blob.stat().st_size
    except OSError:
        return Check(repo, name, commit, 0, "unknown", None, None, False, "the cached blob is missing")
    if on_file is not None:
        on_file(name, size)
    if SHA256.fullmatch(blob.name):
        algorithm = "sha256"
    elif SHA1.fullmatch(blob.name):
        algorithm = "git-sha1"
    else:
        return Check(repo, name, commit, size, "unknown", None, None, True, "blob name is not a hash")
    actual = hash_file(blob, algorithm, on_bytes)
    ok = actual == blob.name
    return Check(repo, name, commit, size, algorithm, blob.name, actual, ok,
                 None if ok else f"{algorithm} mismatch: the file is corrupt")
