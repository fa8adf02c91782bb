"""Pretrained weights of registry entries: download, extract, convert (once), cache.

The fetch and convert steps of ``kdet.zoo.loader``; nothing here loads a model
for the user or changes its classes.

``pretrained_weights(entry)`` returns a kdet ``.weights.h5`` file for an entry:
the shipped file for package weights, or ``$KDET_HOME/converted/<name>.weights.h5``
converted from the verified upstream download on first use. A JSON record
beside the converted file (``<name>.weights.h5.json``) holds its sha256 and the
source and converter it came from; a converted file that fails that check
(corrupt, or converted from another source or kdet version) is reported and
converted again. Once converted, loading needs neither the network nor the
upstream file. ``convert_local(entry, model, path)`` converts a user's own
upstream checkpoint into a model on the fly, caching nothing.

Example:
    >>> from kdet.zoo import converted, registry
    >>> path = converted.pretrained_weights(registry.get_entry("yolov3_tiny_coco"))  # doctest: +SKIP
    >>> path.name                                                                     # doctest: +SKIP
    'yolov3_tiny_coco.weights.h5'
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import warnings
from typing import Any, Callable, Mapping, Sequence

from kdet.version import __version__
from kdet.zoo import cache, download
from kdet.zoo.build import build
from kdet.zoo.locate import package_file, resolve
from kdet.zoo.registry import ModelEntry, WeightsSource

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")


def converted_path(entry: ModelEntry) -> pathlib.Path:
    """Returns ``$KDET_HOME/converted/<name>.weights.h5``."""
    return cache.converted_dir() / f"{entry.name}.weights.h5"


def _record_path(target: pathlib.Path) -> pathlib.Path:
    return target.with_name(target.name + ".json")


def _provenance(entry: ModelEntry) -> dict:
    """What the converted file depends on; any change triggers a new conversion."""
    src = entry.weights
    fields = {f: getattr(src, f) for f in ("kind", "url", "package_path", "filename", "sha256",
                                          "sha256_prefix", "size", "converter", "archive")}
    fields["options"] = json.loads(json.dumps(dict(src.options), sort_keys=True, default=str))
    return {"name": entry.name, "builder": entry.builder,
            "builder_kwargs": json.loads(json.dumps(dict(entry.builder_kwargs), sort_keys=True,
                                                    default=str)),
            "source": fields, "kdet_version": __version__}


def _converted_problem(target: pathlib.Path, entry: ModelEntry) -> str | None:
    record = cache.read_json(_record_path(target))
    if record is None:
        return "it has no provenance record"
    if record.get("provenance") != _provenance(entry):
        return "it was converted from another source, converter or kdet version"
    digest = cache.sha256_file(target)
    if digest != record.get("sha256"):
        return f"sha256 {digest}, expected {record.get('sha256')} recorded at conversion"
    return None


def pretrained_weights(entry: ModelEntry) -> pathlib.Path:
    """Returns a verified kdet ``.weights.h5`` file holding ``entry``'s pretrained weights.

    Downloads, extracts and converts on first use (under a file lock, so
    concurrent processes convert once and never see a partial file).

    Raises:
        ValueError: the entry has no pretrained weights.
        kdet.WeightsUnavailableError: a download is needed and fails.
    """
    src = entry.weights
    if src is None:
        raise ValueError(f"Model {entry.name!r} has no pretrained weights (architecture only).")
    if src.converter is None and src.archive is None:  # already kdet weights
        if src.kind == "package":
            return package_file(src.package_path)
        return _fetch(src)
    target = converted_path(entry)
    with cache.file_lock(target):
        if target.is_file():
            problem = _converted_problem(target, entry)
            if problem is None:
                return target
            warnings.warn(f"kdet: converted weights {target} are not usable ({problem}); "
                          f"converting them again.", stacklevel=2)
            cache.discard(target)
        _convert(entry, _upstream(src), target)
    return target


def _fetch(src: WeightsSource) -> pathlib.Path:
    return download.fetch(src.url, sha256=src.sha256, size=src.size, sha256_prefix=src.sha256_prefix,
                          filename=src.local_name)


def _upstream(src: WeightsSource) -> pathlib.Path:
    """The verified upstream file (or extracted directory) to convert."""
    path = package_file(src.package_path) if src.kind == "package" else _fetch(src)
    return extracted(path) if src.archive == "tar" else path


def _archive_stem(name: str) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def extracted(archive: pathlib.Path) -> pathlib.Path:
    """Extracts a verified archive once into ``$KDET_HOME/extracted/<stem>/``.

    The directory is tied to the archive's sha256 (``<stem>.sha256`` beside it):
    a new archive replaces a stale extraction.
    """
    dest = cache.extracted_dir() / _archive_stem(archive.name)
    digest = cache.read_sidecar(archive) or cache.sha256_file(archive)
    with cache.file_lock(dest):
        if dest.is_dir() and cache.read_sidecar(dest) == digest:
            return dest
        if dest.exists():
            shutil.rmtree(dest)
        download.extract_tar_safely(archive, dest)
        cache.write_sidecar(dest, digest)
    return dest


def _convert(entry: ModelEntry, upstream: pathlib.Path, target: pathlib.Path) -> None:
    """Converts ``upstream`` with the entry's converter and saves it atomically at ``target``."""
    model = build(entry)  # the entry's own arguments: the cache must not depend on a caller's overrides
    call_converter(entry, model, upstream)
    with cache.temporary_path(target, suffix=".weights.h5") as tmp:
        model.save_weights(os.fspath(tmp))
        record = {"provenance": _provenance(entry), "sha256": cache.sha256_file(tmp),
                  "upstream_sha256": cache.read_sidecar(upstream)}
        cache.write_text_atomic(_record_path(target), json.dumps(record, indent=1) + "\n")
        os.replace(tmp, target)


def convert_local(entry: ModelEntry, model, path: pathlib.Path) -> None:
    """Converts the user's upstream checkpoint ``path`` into ``model`` with the entry's converter.

    Tarballs are extracted to a temporary directory first. Nothing is
    downloaded or cached.

    Args:
        entry: the zoo entry naming the converter.
        model: the entry's architecture with the checkpoint's classes.
        path: a Darknet ``.weights``, ``.pth``, automl directory or tarball...

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the entry has no converter.
    """
    if not path.exists():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
    if path.is_file() and entry.weights is not None and entry.weights.archive == "tar" \
            and tarfile.is_tarfile(path):
        with tempfile.TemporaryDirectory(prefix="kdet-") as tmp:
            unpacked = download.extract_tar_safely(path, pathlib.Path(tmp) / "checkpoint")
            call_converter(entry, model, unpacked)
    else:
        call_converter(entry, model, path)


def call_converter(entry: ModelEntry, model, path: str | os.PathLike) -> None:
    """Runs ``entry``'s converter on ``path`` and puts the weights into ``model``."""
    if entry.weights is None or entry.weights.converter is None:
        raise ValueError(f"Model {entry.name!r} has no weight converter; pass a kdet "
                         f".weights.h5 file instead of {str(path)!r}.")
    fn: Callable = resolve(entry.weights.converter)
    args = (model, path, entry)
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:  # a converter that takes (model, path) only
        args = (model, path)
    except ValueError:  # no introspectable signature (builtins): use the full form
        pass
    result = fn(*args)
    set_weights_from(model, result, source=entry.weights.converter)


def set_weights_from(model, weights: Any, *, source: str = "weights") -> None:
    """Puts converter output into ``model``: None (already set), a dict, a list or an h5 path."""
    if weights is None:
        return
    if isinstance(weights, (str, os.PathLike)):
        model.load_weights(os.fspath(weights))
    elif isinstance(weights, Mapping):
        variables = {v.path: v for v in model.weights}
        missing = sorted(set(variables) - set(weights))
        unknown = sorted(set(weights) - set(variables))
        if missing or unknown:
            raise ValueError(f"{source} returned weights that do not match the model: missing "
                             f"{missing[:5]} ({len(missing)}), unknown {unknown[:5]} ({len(unknown)}).")
        for path, var in variables.items():
            var.assign(weights[path])
    elif isinstance(weights, Sequence):
        model.set_weights(list(weights))
    else:
        raise TypeError(f"{source} must return None, a dict, a list of arrays or a .weights.h5 "
                        f"path; received {type(weights).__name__}.")
