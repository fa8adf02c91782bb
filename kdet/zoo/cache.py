"""The kdet cache: where downloads, extracted archives and converted weights live.

Layout under ``$KDET_HOME`` (default ``~/.kdet``)::

    downloads/<file>            upstream checkpoints, exactly as published
    downloads/<file>.sha256     "<hex>  <file>", written after verification
    extracted/<archive stem>/   safely extracted tarballs (automl checkpoints)
    converted/<name>.weights.h5 kdet weights converted once from upstream
    converted/<name>.weights.h5.json  provenance + sha256 of the converted file

Every file is written to a temporary file in its final directory and moved into
place with ``os.replace`` (atomic on POSIX), under an exclusive ``fcntl.flock``
on ``<file>.lock``, so two processes filling the cache at once never see or
produce a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Iterator

try:  # POSIX only; elsewhere the atomic rename alone protects the cache.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_HASH_CHUNK = 1 << 20


def kdet_home() -> pathlib.Path:
    """Returns the cache root: ``$KDET_HOME``, or ``~/.kdet`` when unset."""
    home = os.environ.get("KDET_HOME")
    return pathlib.Path(home).expanduser() if home else pathlib.Path.home() / ".kdet"


def downloads_dir() -> pathlib.Path:
    """Directory holding upstream checkpoints (place files here to work offline)."""
    return kdet_home() / "downloads"


def extracted_dir() -> pathlib.Path:
    """Directory holding extracted archives."""
    return kdet_home() / "extracted"


def converted_dir() -> pathlib.Path:
    """Directory holding converted ``<name>.weights.h5`` files."""
    return kdet_home() / "converted"


def sha256_file(path: str | os.PathLike) -> str:
    """Returns the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: str | os.PathLike) -> pathlib.Path:
    """Returns ``<path>.sha256``, the sidecar recording a verified file's hash."""
    path = pathlib.Path(path)
    return path.with_name(path.name + ".sha256")


def read_sidecar(path: str | os.PathLike) -> str | None:
    """Returns the hash recorded next to ``path`` (``sha256sum`` format), or None."""
    try:
        text = sidecar_path(path).read_text().strip()
    except OSError:
        return None
    digest = text.split()[0].lower() if text else ""
    return digest if len(digest) == 64 else None


def write_sidecar(path: str | os.PathLike, digest: str) -> None:
    """Records ``digest`` next to ``path`` in ``sha256sum -c`` compatible form."""
    path = pathlib.Path(path)
    write_text_atomic(sidecar_path(path), f"{digest}  {path.name}\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes a small text file through a temporary file and ``os.replace``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(path) as tmp:
        tmp.write_text(text)
        os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict | None:
    """Returns the JSON object in ``path``, or None if missing or unreadable."""
    try:
        value = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def temporary_path(final: str | os.PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yields a fresh temporary path beside ``final``; removes it if still there.

    Being in the same directory makes the final ``os.replace`` an atomic rename
    on the same file system. The name keeps ``suffix`` (e.g. ``.weights.h5``)
    because Keras checks file extensions.
    """
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{suffix}", dir=final.parent)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            tmp.unlink()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive lock on ``<path>.lock`` for the duration of the block.

    Processes that fill the same cache entry serialise here; the second one then
    finds the first one's verified file and uses it instead of downloading again.
    The lock file itself is left in place (deleting it would race with waiters).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def discard(path: str | os.PathLike) -> None:
    """Removes a cached file and its sidecar (used for corrupt entries)."""
    path = pathlib.Path(path)
    for p in (path, sidecar_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
