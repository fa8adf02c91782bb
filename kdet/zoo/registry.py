"""The model registry: named models, their pretrained weights and ``kdet.load``.

A named model is one frozen ``ModelEntry``: the builder (an import path resolved
only when the model is built, so the registry imports without TensorFlow and
without architectures that are not installed), its keyword arguments, class
names, licence, reported metrics and a ``WeightsSource`` saying where the
pretrained weights come from and which converter turns them into kdet weights.

Adding a pretrained model is one entry in ``kdet/zoo/entries.py`` plus one
converter function. A converter is called as ``converter(model, path, entry)``
(or ``converter(model, path)``) where ``model`` is built from the entry's
``builder_kwargs`` and ``path`` is the verified download (the extracted
directory for archives). It either sets the weights on ``model`` and returns
None, or returns them: a ``{variable.path: array}`` dict, a list in
``model.weights`` order, or the path of a ``.weights.h5`` file. kdet saves the
result once as ``$KDET_HOME/converted/<name>.weights.h5`` and loads that file
from then on, offline.

Example:
    >>> import kdet
    >>> kdet.list_models()[:2]                                   # doctest: +SKIP
    ['efficientdet_d0', 'fasterrcnn_resnet50_fpn']
    >>> model = kdet.load("yolov3_darknet53_coco")               # doctest: +SKIP
    >>> tuned = kdet.load("yolov3_darknet53_coco", num_classes=3)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.resources
import inspect
import os
import pathlib
import re
import types
from typing import Any, Callable, Mapping, Sequence

from kdet.zoo import download

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_REGISTRY: dict[str, "ModelEntry"] = {}
_BUILTINS_LOADED = False


def _frozen(mapping: Mapping | None) -> Mapping:
    return types.MappingProxyType(dict(mapping or {}))


def _check_import_path(field: str, value: str | None) -> None:
    if value is not None and not (isinstance(value, str) and _IMPORT_PATH.match(value)):
        raise ValueError(f"{field} must be an import path 'package.module:attribute'; received {value!r}.")


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where a named model's pretrained weights come from.

    Args:
        kind: ``"url"`` (downloaded into ``$KDET_HOME/downloads``) or
            ``"package"`` (a file shipped inside the kdet package, no download).
        url: download URL (https; see ``kdet.zoo.download.check_url``).
        filename: cached file name (default: the URL's last path segment).
        sha256: full hex sha256 of the upstream file, or None where unpublished
            (the hash is then recorded after the first download and enforced).
        sha256_prefix: leading hex digits of the sha256 (torchvision names
            carry 8 of them), checked when the full hash is unknown.
        size: file size in bytes, or None.
        converter: ``"module:function"`` turning the upstream file into kdet
            weights (see the module docstring); None if the file already is a
            kdet ``.weights.h5``.
        archive: None, or ``"tar"`` to extract the download safely first and
            hand the converter the extracted directory.
        package_path: for ``kind="package"``, a ``.weights.h5`` file's path
            inside the ``kdet`` package (e.g. ``"assets/foo.weights.h5"``), or
            None when the builder loads its packaged weights itself through its
            ``weights`` argument (MTCNN): ``kdet.load`` then forwards
            ``weights`` (``"default"``, None or a path) to the builder.
        options: converter-specific settings (Darknet cfg, label maps, ...).
    """

    kind: str = "url"
    url: str | None = None
    filename: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    converter: str | None = None
    archive: str | None = None
    package_path: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", _frozen(self.options))
        if self.kind not in ("url", "package"):
            raise ValueError(f"WeightsSource.kind must be 'url' or 'package'; received {self.kind!r}.")
        if self.kind == "url":
            if not self.url:
                raise ValueError("WeightsSource(kind='url') needs a url.")
            download.check_url(self.url)
        for field, length in (("sha256", 64), ("sha256_prefix", None)):
            value = getattr(self, field)
            if value is not None and not (re.fullmatch(r"[0-9a-fA-F]+", value) and
                                          (length is None or len(value) == length)):
                raise ValueError(f"WeightsSource.{field} must be hex digits; received {value!r}.")
        if self.archive not in (None, "tar"):
            raise ValueError(f"WeightsSource.archive must be None or 'tar'; received {self.archive!r}.")
        _check_import_path("WeightsSource.converter", self.converter)

    @property
    def loaded_by_builder(self) -> bool:
        """Whether the builder loads these (packaged) weights through its ``weights`` argument."""
        return self.kind == "package" and self.package_path is None

    @property
    def local_name(self) -> str:
        """The file name the download is cached under."""
        if self.filename:
            return self.filename
        return pathlib.PurePosixPath(self.url or self.package_path or "").name


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One named model of the zoo.

    Args:
        name: the name ``kdet.load`` takes, ``<arch>_<backbone>_<dataset>``.
        builder: ``"module:callable"`` returning a ``kdet.Detector``; imported
            only when the model is built.
        builder_kwargs: arguments of the builder for this model (the
            checkpoint's ``num_classes`` included).
        description: one line for ``kdet models``.
        input_size: ``(height, width)`` the weights were trained at, or None.
        class_names: the label names, or ``"module:attribute"`` naming them.
        weights: the pretrained weights, or None for an architecture only.
        license: licence of the weights (or of the code, without weights).
        metrics: reported numbers, e.g. ``{"coco_box_AP": 36.4}``.
        metrics_source: where ``metrics`` come from (paper table, upstream page).
        model_card: the model card's path in the repository (``zoo/<name>.md``).
    """

    name: str
    builder: str
    builder_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    input_size: tuple[int, int] | None = None
    class_names: tuple[str, ...] | str | None = None
    weights: WeightsSource | None = None
    license: str | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    metrics_source: str | None = None
    model_card: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"ModelEntry.name must be lower-case letters, digits and '_'; "
                             f"received {self.name!r}.")
        _check_import_path("ModelEntry.builder", self.builder)
        object.__setattr__(self, "builder_kwargs", _frozen(self.builder_kwargs))
        object.__setattr__(self, "metrics", _frozen(self.metrics))
        if isinstance(self.class_names, (list, tuple)):
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        elif self.class_names is not None:
            _check_import_path("ModelEntry.class_names", self.class_names)
        if self.input_size is not None:
            object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        if self.weights is not None and not isinstance(self.weights, WeightsSource):
            raise ValueError(f"ModelEntry.weights must be a WeightsSource or None; "
                             f"received {type(self.weights).__name__}.")

    @property
    def pretrained(self) -> bool:
        """Whether ``kdet.load(name)`` loads pretrained weights."""
        return self.weights is not None

    @property
    def num_classes(self) -> int | None:
        """The checkpoint's number of classes (None for class-free models like MTCNN)."""
        if "num_classes" in self.builder_kwargs:
            return int(self.builder_kwargs["num_classes"])
        names = self.get_class_names()
        return len(names) if names else None

    def get_class_names(self) -> tuple[str, ...] | None:
        """Returns the class names, resolving an import path if needed."""
        names = self.class_names
        if isinstance(names, str):
            names = resolve(names)
            names = names() if callable(names) else names
        return tuple(names) if names is not None else None


def resolve(import_path: str) -> Any:
    """Imports ``"package.module:attr.sub"`` and returns the attribute.

    Raises:
        ImportError: the module is not part of this kdet installation (e.g. an
            architecture not written yet); the message names it.
    """
    _check_import_path("import path", import_path)
    module_name, attr = import_path.split(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ImportError(f"{import_path!r} is not available: module {module_name!r} is not "
                              f"part of this kdet installation.", name=module_name) from e
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"{import_path!r} is not available: {module_name!r} has no "
                              f"attribute {attr!r}.", name=module_name) from None
    return obj


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("kdet.zoo.entries")


def register(entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
    """Adds ``entry`` to the zoo; raises ``ValueError`` if the name is taken."""
    if not isinstance(entry, ModelEntry):
        raise ValueError(f"register() takes a ModelEntry; received {type(entry).__name__}.")
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(f"A model named {entry.name!r} is already registered; pass overwrite=True "
                         f"to replace it.")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Removes a named model (tests and plugins); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def list_models(pretrained: bool | None = None) -> list[str]:
    """Returns every registered name, sorted.

    Args:
        pretrained: True for names with pretrained weights only, False for
            architecture-only names only, None for all.
    """
    _ensure_builtins()
    return sorted(n for n, e in _REGISTRY.items() if pretrained is None or e.pretrained == pretrained)


def get_entry(name: str) -> ModelEntry:
    """Returns the entry named ``name``; unknown names raise ``ValueError`` with suggestions."""
    _ensure_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.4)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise ValueError(f"Unknown model {name!r}.{hint} See kdet.list_models() (or `kdet models`) "
                     f"for the {len(_REGISTRY)} available names, or pass a path to a .keras "
                     f"file or a preset directory.")


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def build(entry: ModelEntry, **kwargs: Any):
    """Builds ``entry``'s architecture with ``kwargs`` over its defaults.

    The entry's class names are passed as ``class_names`` (the ``kdet.Detector``
    argument) when the builder takes it and the number of classes is unchanged.
    """
    builder = resolve(entry.builder)
    kwargs = {**entry.builder_kwargs, **kwargs}
    names = entry.get_class_names()
    if (names and "class_names" not in kwargs and kwargs.get("num_classes", len(names)) == len(names)
            and _accepts(builder, "class_names")):
        kwargs["class_names"] = list(names)
    return ensure_built(builder(**kwargs))


def ensure_built(model):
    """Marks a kdet Detector built so ``save_weights``/``load_weights`` accept it.

    Detectors assemble their networks (and so create every variable) in
    ``__init__``, but Keras only sets ``built`` in ``build()``, which Keras'
    weight saving requires.
    """
    if not getattr(model, "built", True):
        from kdet.detector import Detector

        if isinstance(model, Detector):
            model.build()
    return model


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


def package_file(relative: str) -> pathlib.Path:
    """Returns the path of a file shipped inside the ``kdet`` package."""
    path = pathlib.Path(str(importlib.resources.files("kdet").joinpath(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"kdet package file {relative!r} is missing (looked at {path}); "
                                f"the installation is incomplete, reinstall kdet.")
    return path


def load(name: str | os.PathLike, weights: str | os.PathLike | None = "default",
         num_classes: int | None = None, **overrides: Any):
    """Loads a named zoo model, a ``.keras`` file or a preset directory.

    Args:
        name: a name from ``list_models()``, a path to a ``.keras`` file saved
            with ``model.save`` (loaded with ``safe_mode=True``), or a preset
            directory (``config.json`` + ``model.weights.h5``, see
            ``kdet.zoo.preset``).
        weights: ``"default"``: the entry's pretrained weights (downloaded,
            verified, converted and cached on first use; architecture-only
            entries stay randomly initialised). None: architecture only. A path:
            a kdet ``.weights.h5`` file, or an upstream checkpoint (Darknet
            ``.weights``, ``.pth``, automl directory or tarball) converted on
            the fly without any download. For entries whose builder loads
            packaged weights itself (MTCNN), ``weights`` is passed to the builder.
        num_classes: number of object classes. When it differs from the
            checkpoint's, the model is built with the checkpoint's classes,
            the weights are loaded, and every variable whose path and shape
            match is copied into a model built with ``num_classes``: everything
            but the class head keeps its pretrained values (fine-tuning).
        **overrides: builder arguments replacing the entry's (e.g.
            ``image_size``, ``score_threshold``).

    Returns:
        A ``kdet.Detector`` (a ``keras.Model``).

    Raises:
        ValueError: unknown name (with the closest names) or bad arguments.
        FileNotFoundError: ``name`` or ``weights`` is a path that does not exist.
        kdet.WeightsUnavailableError: weights must be downloaded but cannot be.
    """
    if num_classes is not None:
        from kdet.validation import check_positive_int

        num_classes = check_positive_int("num_classes", num_classes)
    if isinstance(name, os.PathLike) or (isinstance(name, str) and _looks_like_path(name)):
        from kdet.zoo import preset

        return preset.load_path(pathlib.Path(name), weights=weights, num_classes=num_classes,
                                **overrides)
    if not isinstance(name, str):
        raise ValueError(f"name must be a model name or a path; received {type(name).__name__}.")
    return load_entry(get_entry(name), weights=weights, num_classes=num_classes, **overrides)


def _looks_like_path(name: str) -> bool:
    _ensure_builtins()
    if name in _REGISTRY:
        return False
    return os.path.exists(name) or "/" in name or os.sep in name or name.endswith(".keras")


def load_entry(entry: ModelEntry, weights: str | os.PathLike | None = "default",
               num_classes: int | None = None, **overrides: Any):
    """``load`` for a registry entry (see ``load``)."""
    from kdet.zoo import converted

    ckpt_classes = entry.num_classes
    if num_classes is not None and "num_classes" not in entry.builder_kwargs:
        raise ValueError(f"Model {entry.name!r} takes no num_classes; received num_classes={num_classes}.")
    swap = num_classes is not None and num_classes != ckpt_classes
    if entry.weights is not None and entry.weights.loaded_by_builder:
        if isinstance(weights, os.PathLike):
            weights = os.fspath(weights)
        model = build(entry, **overrides, weights=weights)
        if swap:
            raise ValueError(f"Model {entry.name!r} cannot change num_classes.")
        return model
    if weights is None or (isinstance(weights, str) and weights == "default" and not entry.pretrained):
        extra = {"num_classes": num_classes} if num_classes is not None else {}
        return build(entry, **overrides, **extra)
    if isinstance(weights, str) and weights == "default":
        model = build(entry, **overrides)
        model.load_weights(os.fspath(converted.pretrained_weights(entry)))
    elif isinstance(weights, (str, os.PathLike)):
        model, swap = converted.load_local_weights(entry, pathlib.Path(weights), num_classes, overrides)
    else:
        raise ValueError(f"weights must be 'default', None or a path; received {weights!r}.")
    if swap:
        target = build(entry, **overrides, num_classes=num_classes)
        transfer_matching_weights(model, target)
        model = target
    return model


def _canonical(path: str) -> str:
    # Auto-generated Keras names carry a per-session counter ("conv2d_17"); two
    # builds of the same architecture differ only in those suffixes.
    return "/".join(re.sub(r"_\d+$", "", part) for part in path.split("/"))


def transfer_matching_weights(source, target) -> list[str]:
    """Copies every variable of ``source`` into ``target`` whose path and shape match.

    Paths are compared without Keras' auto-numbering suffixes, pairing variables
    of the same canonical path in creation order, so two builds of one
    architecture match even when built in the same session. Variables whose
    shape differs (the class head after changing ``num_classes``) keep
    ``target``'s fresh initialisation.

    Args:
        source: the model holding the weights (e.g. pretrained on COCO).
        target: the model to fill (e.g. the same architecture, new classes).

    Returns:
        The paths of ``target``'s variables that were not copied.

    Example:
        >>> skipped = transfer_matching_weights(coco_model, three_class_model)  # doctest: +SKIP
    """
    queues: dict[str, list] = {}
    for var in source.weights:
        queues.setdefault(_canonical(var.path), []).append(var)
    skipped = []
    for var in target.weights:
        queue = queues.get(_canonical(var.path))
        src = queue.pop(0) if queue else None
        if src is not None and tuple(src.shape) == tuple(var.shape):
            var.assign(src.value)
        else:
            skipped.append(var.path)
    if target.weights and len(skipped) == len(target.weights):
        raise ValueError("transfer_matching_weights: no variable of the source matches the "
                         "target; are they the same architecture?")
    return skipped
