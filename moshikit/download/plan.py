"""What a download will fetch: the catalog's choice for this machine, the files it needs
(read from the hub, or from the cache when offline) and what is already cached."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import catalog
from ..catalog import Choice, Entry
from ..errors import ModelError, UsageError
from ..platform import PlatformInfo
from .paths import (DEFAULT_NAMES, SHA1, SHA256, cache_dir, download_command, is_other_repo_ref, offline, read_json,
                    repo_dir, split_ref)
from .hubapi import fetch_file, model_info


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
    info = model_info(repo, revision)
    p.commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    if files:
        required, optional = list(files), []
    elif choice is None:
        required, optional = [n for n in siblings if n != ".gitattributes"], []
    else:
        required, optional = wanted_files(choice.entry, None)
        if any(n not in siblings for n in required) and "config.json" in siblings:
            required, optional = wanted_files(choice.entry, read_json(fetch_file(repo, "config.json", revision)))
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
        s = {x.rfilename: x for x in model_info(other, "main").siblings or []}.get(name)
        if s is None:
            raise ModelError(f"{other} has no file {name} (named by {repo}'s config.json as {ref})")
        f = PlannedFile(ref, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id, other_repo=other, other_name=name)
        if f.etag:
            blob = repo_dir(other) / "blobs" / f.etag
            f.cached = blob.is_file() and (f.size is None or blob.stat().st_size == f.size)
        p.files.append(f)
    return p


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
