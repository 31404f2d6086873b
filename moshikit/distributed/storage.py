"""Where a distributed job's files live: local paths or fsspec URIs."""

from __future__ import annotations

import os
import posixpath

from ..errors import UsageError

INSTALL_HINT = 'pip install "moshikit[ray]"  (Ray and pyarrow, on the driver and every node)'
ATOMIC_PUT = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")  # stores whose put is atomic


def is_uri(name: str) -> bool:
    """``scheme://...`` (fsspec), but not Windows drive letters or plain paths."""
    head, sep, _ = name.partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


def filesystem(uri: str):
    """The fsspec filesystem and path of ``uri`` (one-line errors when it cannot be had)."""
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"{uri}: reading URIs needs fsspec", hint='pip install "moshikit[ray]" fsspec '
                         "plus the filesystem's package (s3fs, gcsfs, adlfs...)") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"{uri}: {str(exc).splitlines()[0]}") from None
    return fs, path


def join_path(root: str, rel: str) -> str:
    """``rel`` under ``root``, a URI or a local directory."""
    return posixpath.join(root.rstrip("/"), rel) if is_uri(root) else os.path.join(root, rel)


def with_suffix(name: str, suffix: str) -> str:
    """``name`` (path or URI) with its extension replaced by ``suffix``."""
    head, base = (name.rsplit("/", 1) if "/" in name else ("", name))
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return f"{head}/{stem}{suffix}" if head or name.startswith("/") else f"{stem}{suffix}"



def output_exists(path: str | None) -> bool:
    """Whether ``path`` (local or URI) exists; False for None."""
    if not path:
        return False
    if is_uri(path):
        fs, p = filesystem(path)
        return fs.exists(p)
    return os.path.exists(path)
