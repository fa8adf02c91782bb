"""The zoo's registry: named models as data, and nothing else.

A named model is one frozen ``ModelEntry``: the builder (an import path resolved
only when the model is built, so the registry imports without TensorFlow and
without architectures that are not installed), its keyword arguments, class
names, licence, reported metrics and a ``WeightsSource``: where the pretrained
weights come from, which converter turns them into kdet weights and which
layers are the classifier (timm's ``pretrained_cfg``).

The registry knows no loader: building, downloading, converting and changing
the class count happen in ``kdet.zoo.loader`` (which ``kdet.load`` calls), and
the built-in entries of ``kdet.zoo.entries`` register themselves when
``kdet.zoo`` is imported, as timm's ``@register_model`` modules do.

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
    >>> from kdet.zoo import registry
    >>> registry.get_entry("yolov3_darknet53_coco").weights.classifier[0]
    'yolo_head_p5_pred_conv'
    >>> "mtcnn" in registry.list_models(pretrained=True)
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re
import types
from typing import Any, Mapping, Sequence

from kdet.zoo import download
from kdet.zoo.locate import check_import_path, resolve

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_REGISTRY: dict[str, "ModelEntry"] = {}


def _frozen(mapping: Mapping | None) -> Mapping:
    return types.MappingProxyType(dict(mapping or {}))


def _layer_names(field: str, names: Sequence[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names) or not names:
        raise ValueError(f"{field} must be a non-empty sequence of layer names or None; received {names!r}.")
    return tuple(names)


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
        classifier: names of the layers whose shapes depend on the number of
            classes (timm's ``pretrained_cfg["classifier"]``).
            ``kdet.load(name, num_classes=n)`` builds the model with ``n``
            classes, copies every other weight and leaves these layers freshly
            initialised. None: unknown (the model class's ``classifier_layers``
            is used, else every variable whose shape still matches is copied).
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
    classifier: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "options", _frozen(self.options))
        object.__setattr__(self, "classifier", _layer_names("WeightsSource.classifier", self.classifier))
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
        check_import_path("WeightsSource.converter", self.converter)

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
        check_import_path("ModelEntry.builder", self.builder)
        object.__setattr__(self, "builder_kwargs", _frozen(self.builder_kwargs))
        object.__setattr__(self, "metrics", _frozen(self.metrics))
        if isinstance(self.class_names, (list, tuple)):
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        elif self.class_names is not None:
            check_import_path("ModelEntry.class_names", self.class_names)
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
    return sorted(n for n, e in _REGISTRY.items() if pretrained is None or e.pretrained == pretrained)


def get_entry(name: str) -> ModelEntry:
    """Returns the entry named ``name``; unknown names raise ``ValueError`` with suggestions."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.4)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise ValueError(f"Unknown model {name!r}.{hint} See kdet.list_models() (or `kdet models`) "
                     f"for the {len(_REGISTRY)} available names, or pass a path to a .keras "
                     f"file or a preset directory.")
