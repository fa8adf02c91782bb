"""Verified, atomic, concurrency-safe downloads into the kdet cache.

``fetch`` downloads a file once into ``$KDET_HOME/downloads`` (see
``kdet.zoo.cache``), checks its size and sha256 *before* moving it into place,
and re-checks a cached copy every time it is used: a corrupt, truncated or
mismatched file is reported (a ``UserWarning``), deleted and fetched again,
never used. ``extract_tar_safely`` unpacks archives without path traversal.

URL policy (``check_url``): only ``https://`` goes over the network. Plain
``http://`` is accepted for loopback hosts only (``LOOPBACK_HOSTS``: tests and
local mirrors, where nothing crosses a network), and ``file://`` for local
files. Redirects are checked against the same policy.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

from kdet.errors import WeightsUnavailableError
from kdet.zoo import cache

# Hosts for which plain http:// is allowed: the request never leaves the machine.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 16


class DownloadVerificationError(WeightsUnavailableError):
    """A downloaded file did not match its published size or sha256; it was not kept."""


def check_url(url: str) -> str:
    """Returns ``url`` if the download policy allows it, else raises ``ValueError``.

    Allowed: ``https://`` anywhere, ``http://`` on ``LOOPBACK_HOSTS`` only, and
    ``file://``.
    """
    parts = urllib.parse.urlsplit(str(url))
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme == "https" and host:
        return url
    if scheme == "file":
        return url
    if scheme == "http" and host in LOOPBACK_HOSTS:
        return url
    raise ValueError(
        f"Refusing to download {url!r}: kdet only downloads over https:// (http:// is "
        f"allowed for {sorted(LOOPBACK_HOSTS)} only, and file:// for local files)."
    )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to URLs that ``check_url`` allows (no https -> http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Progress:
    """A minimal progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, label: str, total: int | None, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and (not self.tty or now - self.last < 0.2)):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6) / 1e6
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            text = f"{self.label} [{bar}] {100 * frac:5.1f}% {done / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        else:
            text = f"{self.label} {done / 1e6:.1f} MB"
        end = "\n" if final else ""
        sys.stderr.write(("\r" if self.tty else "") + f"{text} {rate:.1f} MB/s" + end)
        sys.stderr.flush()


def _problem(nbytes: int, digest: str, size: int | None, sha256: str | None,
             sha256_prefix: str | None, recorded: str | None) -> str | None:
    """Describes why a file fails verification, or returns None if it passes."""
    if size is not None and nbytes != size:
        return f"{nbytes} bytes, expected {size}"
    if sha256 is not None and digest != sha256.lower():
        return f"sha256 {digest}, expected {sha256.lower()}"
    if sha256_prefix is not None and not digest.startswith(sha256_prefix.lower()):
        return f"sha256 {digest} does not start with the published prefix {sha256_prefix.lower()}"
    if recorded is not None and digest != recorded:
        return f"sha256 {digest} differs from {recorded}, recorded when it was first verified"
    return None


def verify_file(path: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
                sha256_prefix: str | None = None) -> str | None:
    """Re-hashes a cached file and checks it; returns the problem found, or None.

    Checks the size, the full sha256 and/or its published prefix, and the hash
    recorded in the ``.sha256`` sidecar when the file was first verified (which
    is what protects files whose upstream publishes no sha256). A file that
    passes and has no sidecar yet (e.g. placed by hand) gets one.
    """
    path = pathlib.Path(path)
    nbytes = path.stat().st_size
    if size is not None and nbytes != size:  # cheap check before hashing
        return f"{nbytes} bytes, expected {size}"
    digest = cache.sha256_file(path)
    recorded = cache.read_sidecar(path)
    problem = _problem(nbytes, digest, size, sha256, sha256_prefix, recorded)
    if problem is None and recorded is None:
        cache.write_sidecar(path, digest)
    return problem


def unavailable_message(url: str, target: pathlib.Path, reason: object, *,
                        sha256: str | None = None, size: int | None = None) -> str:
    """One line saying what failed and which file to place where to work offline."""
    expect = [f"{size} bytes" if size is not None else None,
              f"sha256 {sha256}" if sha256 else None]
    expect_text = ", ".join(e for e in expect if e)
    return (
        f"Cannot download {url} ({reason}). Download it on a machine with network access "
        f"and place it as '{target.name}' in the directory '{target.parent}'"
        + (f" (expected {expect_text})" if expect_text else "")
        + "; the next call then works without network."
    )


def _filename_from(url: str, filename: str | None) -> str:
    name = filename or pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"Cannot derive a plain file name from url={url!r}, filename={filename!r}.")
    return name


def fetch(url: str, *, sha256: str | None = None, size: int | None = None,
          sha256_prefix: str | None = None, filename: str | None = None,
          cache_dir: str | os.PathLike | None = None, progress: bool = True,
          timeout: float = DEFAULT_TIMEOUT_S) -> pathlib.Path:
    """Returns the local path of ``url``'s file, downloading and verifying it once.

    Args:
        url: where to download from; see ``check_url`` for the allowed schemes.
        sha256: the file's full hex sha256, or None where upstream publishes none.
        size: the file's size in bytes, or None if unknown.
        sha256_prefix: leading hex digits of the sha256 (e.g. torchvision's
            ``-eeacb38b`` file-name suffix), checked when the full hash is unknown.
        filename: the cached file's name (default: the URL's last path segment).
        cache_dir: directory to cache into (default ``$KDET_HOME/downloads``).
        progress: show a progress bar on stderr.
        timeout: socket timeout in seconds.

    Returns:
        The path of the verified file, ``cache_dir / filename``.

    Raises:
        kdet.WeightsUnavailableError: the file is not cached and cannot be
            downloaded; the message says where to place it by hand.
        DownloadVerificationError: the download does not match size/sha256.

    Example:
        >>> path = fetch("https://pjreddie.com/media/files/yolov3-tiny.weights",
        ...              size=35434956)                  # doctest: +SKIP
    """
    check_url(url)
    target = pathlib.Path(cache_dir or cache.downloads_dir()) / _filename_from(url, filename)
    with cache.file_lock(target):
        if target.is_file():
            problem = verify_file(target, sha256=sha256, size=size, sha256_prefix=sha256_prefix)
            if problem is None:
                return target
            warnings.warn(f"kdet: cached file {target} is corrupt ({problem}); deleting it and "
                          f"downloading it again.", stacklevel=2)
            cache.discard(target)
        _download(url, target, sha256=sha256, size=size, sha256_prefix=sha256_prefix,
                  progress=progress, timeout=timeout)
    return target


def _download(url: str, target: pathlib.Path, *, sha256, size, sha256_prefix, progress, timeout):
    """Streams ``url`` into a temporary file, verifies it, then renames it to ``target``."""
    digest, nbytes = hashlib.sha256(), 0
    opener = urllib.request.build_opener(_CheckedRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": "kdet"})
    with cache.temporary_path(target) as tmp:
        try:
            with opener.open(request, timeout=timeout) as response, open(tmp, "wb") as out:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else size
                bar = _Progress(f"Downloading {target.name}", total, progress)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    nbytes += len(chunk)
                    bar.update(nbytes)
                bar.update(nbytes, final=True)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise WeightsUnavailableError(
                unavailable_message(url, target, reason, sha256=sha256, size=size)) from e
        problem = _problem(nbytes, digest.hexdigest(), size, sha256, sha256_prefix, None)
        if problem is not None:
            raise DownloadVerificationError(unavailable_message(
                url, target, f"the downloaded file failed verification: {problem}; it was not kept",
                sha256=sha256, size=size))
        # The sidecar goes first: a reader that sees the file also sees its hash.
        cache.write_sidecar(target, digest.hexdigest())
        os.replace(tmp, target)


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _check_member(member: tarfile.TarInfo, root: str) -> str | None:
    """Returns why ``member`` is unsafe to extract under ``root``, or None."""
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in pathlib.PurePosixPath(name.replace("\\", "/")).parts:
        return "contains '..'"
    path = os.path.normpath(os.path.join(root, name))
    if not _inside(root, path):
        return "points outside the destination"
    if member.issym():
        if os.path.isabs(member.linkname):
            return f"is a symlink to the absolute path {member.linkname!r}"
        if not _inside(root, os.path.normpath(os.path.join(os.path.dirname(path), member.linkname))):
            return f"is a symlink to {member.linkname!r}, outside the destination"
    elif member.islnk():
        if os.path.isabs(member.linkname) or not _inside(
                root, os.path.normpath(os.path.join(root, member.linkname))):
            return f"is a hard link to {member.linkname!r}, outside the destination"
    elif not (member.isfile() or member.isdir()):
        return "is a device, FIFO or other special file"
    return None


def extract_tar_safely(archive: str | os.PathLike, dest: str | os.PathLike) -> pathlib.Path:
    """Extracts a tarball into ``dest`` refusing anything that could escape it.

    Every member is checked first: no absolute paths, no ``..``, no symlink or
    hard link pointing outside ``dest``, no device files. Extraction then runs
    with ``tarfile``'s ``"data"`` filter where Python provides it (3.12, 3.11.4+)
    as a second line of defence, into a temporary directory that is renamed to
    ``dest`` only once complete.

    Args:
        archive: path of a ``.tar``, ``.tar.gz``, ``.tgz`` or ``.tar.bz2`` file.
        dest: directory to create; must not exist yet (or be empty).

    Returns:
        ``dest`` as a ``pathlib.Path``.

    Raises:
        ValueError: a member is unsafe; nothing is written to ``dest``.

    Example:
        >>> extract_tar_safely("efficientdet-d0.tar.gz", "/tmp/d0")  # doctest: +SKIP
    """
    dest = pathlib.Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"extract_tar_safely: {dest} already exists and is not an empty directory.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        root = os.path.realpath(tmp)
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _check_member(member, root)
                if reason is not None:
                    raise ValueError(f"Refusing to extract {archive}: member {member.name!r} {reason}.")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tar.extractall(tmp, members=members)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
