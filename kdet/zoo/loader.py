"""``kdet.load``: name -> entry -> build -> fetch -> convert -> class-count change.

Each step is one call, in that order, from this module alone; the modules it
calls never call back:

- ``registry``: the entry (data only);
- ``build``: the entry's architecture, with the checkpoint's classes;
- ``converted``: the verified download, converted once into the cache (or a
  user's checkpoint converted on the fly);
- ``change_num_classes``: a model with the new classes, every weight copied but
  the classifier layers' (named by the entry's ``WeightsSource.classifier``,
  else by the model class's ``classifier_layers``), except their
  class-independent outputs (``Detector.inherit_classifier_outputs``), and
  marked ``fine_tune``.

Paths (a ``.keras`` file or a preset directory) skip the first steps: ``preset``
loads them, and the class count changes the same way.

Example:
    >>> import kdet
    >>> model = kdet.load("yolov3_darknet53_coco", num_classes=3)   # doctest: +SKIP
    >>> model.num_classes                                             # doctest: +SKIP
    3
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any, Callable, Sequence

from kdet.validation import check_positive_int
from kdet.zoo import converted, preset, registry
from kdet.zoo.build import build
from kdet.zoo.registry import ModelEntry
from kdet.zoo.transfer import transfer_all_but_classifier, transfer_matching_weights


def load(name: str | os.PathLike, weights: str | os.PathLike | None = "default",
         num_classes: int | None = None, **overrides: Any):
    """Loads a named zoo model, a ``.keras`` file or a preset directory.

    Args:
        name: a name from ``kdet.list_models()``, a path to a ``.keras`` file
            saved with ``model.save`` (loaded with ``safe_mode=True``), or a
            preset directory (``config.json`` + ``model.weights.h5``, see
            ``kdet.zoo.preset``).
        weights: ``"default"``: the entry's pretrained weights (downloaded,
            verified, converted and cached on first use; architecture-only
            entries stay randomly initialised). None: architecture only. A path:
            a kdet ``.weights.h5`` file, or an upstream checkpoint (Darknet
            ``.weights``, ``.pth``, automl directory or tarball) converted on
            the fly without any download. For entries whose builder loads
            packaged weights itself (MTCNN), ``weights`` is passed to the builder.
        num_classes: number of object classes. When it differs from the
            checkpoint's, the model is loaded with the checkpoint's classes,
            then a model with ``num_classes`` is built and receives every
            weight but the classifier layers' (fine-tuning). That model has
            ``fine_tune=True`` (unless ``fine_tune=False`` is passed): its
            batch norms keep the pretrained statistics and ``compile()``
            uses the fine-tuning recipe (docs/training.md, "Fine-tuning to new classes").
        **overrides: builder arguments replacing the entry's (e.g.
            ``image_size``, ``score_threshold``, ``precision``).

    Precision: a pretrained model loaded with its own classes computes in
    bfloat16 where that is faster (``Detector.bfloat16_pays``: native bfloat16
    hardware, and on CPU dense convolutions; decoding, scores and NMS stay
    float32); every float32 detection scoring >= 0.3 is kept, same class, IoU
    >= 0.9 (tested on the real yolov3-tiny weights). ``precision="float32"``
    gives float32 parity with upstream; ``precision=None`` follows the global
    Keras policy, as do models loaded to be trained (``weights=None`` or
    another ``num_classes``) and ``.keras`` files (their saved precision).

    Returns:
        A ``kdet.Detector`` (a ``keras.Model``).

    Raises:
        ValueError: unknown name (with the closest names) or bad arguments.
        FileNotFoundError: ``name`` or ``weights`` is a path that does not exist.
        kdet.WeightsUnavailableError: weights must be downloaded but cannot be.

    Example:
        >>> import kdet
        >>> kdet.load("retinanet_resnet50_fpn", num_classes=3, weights=None)   # doctest: +SKIP
    """
    if num_classes is not None:
        num_classes = check_positive_int("num_classes", num_classes)
    if isinstance(name, os.PathLike) or (isinstance(name, str) and _looks_like_path(name)):
        # fine_tune applies to the model rebuilt with new classes (a saved .keras model takes no overrides).
        fine_tune = overrides.pop("fine_tune", True) if num_classes is not None else True
        model = preset.load_path(pathlib.Path(name), weights=weights, **overrides)
        return change_num_classes(model, num_classes, lambda n: _rebuilt_with_classes(model, n, fine_tune),
                                  getattr(model, "classifier_layers", None))
    if not isinstance(name, str):
        raise ValueError(f"name must be a model name or a path; received {type(name).__name__}.")
    return load_entry(registry.get_entry(name), weights=weights, num_classes=num_classes, **overrides)


def _looks_like_path(name: str) -> bool:
    if name in registry.list_models():
        return False
    return os.path.exists(name) or "/" in name or os.sep in name or name.endswith(".keras")


def load_entry(entry: ModelEntry, weights: str | os.PathLike | None = "default",
               num_classes: int | None = None, **overrides: Any):
    """``load`` for a registry entry (see ``load``)."""
    if num_classes is not None and "num_classes" not in entry.builder_kwargs:
        raise ValueError(f"Model {entry.name!r} takes no num_classes; received num_classes={num_classes}.")
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if weights is not None and not isinstance(weights, str):
        raise ValueError(f"weights must be 'default', None or a path; received {weights!r}.")
    if entry.weights is not None and entry.weights.loaded_by_builder:  # MTCNN: the builder loads them
        model = build(entry, **overrides, weights=weights)
        return model if weights is None else _at_inference_precision(model, overrides)
    default = weights == "default"
    if weights is None or (default and not entry.pretrained):  # architecture only: no weights to keep
        return build(entry, **overrides, **({"num_classes": num_classes} if num_classes else {}))
    if not default and weights.endswith(".weights.h5"):
        model, classes = _load_weights_file(entry, pathlib.Path(weights), num_classes, overrides)
    else:
        model, classes = build(entry, **overrides), entry.num_classes
        if default:
            model.load_weights(os.fspath(converted.pretrained_weights(entry)))
        else:
            converted.convert_local(entry, model, pathlib.Path(weights))
    if num_classes is None or num_classes == classes:
        return _at_inference_precision(model, overrides)
    # The new model is marked fine_tune (pretrained features, fresh classifier) where its config has the setting.
    marked = {"fine_tune": True} if _has_setting(model, "fine_tune") else {}
    return change_num_classes(model, num_classes, lambda n: build(entry, **{**marked, **overrides}, num_classes=n),
                              _classifier_of(entry, model))


def _at_inference_precision(model, overrides: dict[str, Any]):
    """A pretrained model loaded as it is (for inference) computes in bfloat16 where that is faster.

    That is where ``model.bfloat16_pays()`` (native bfloat16 hardware, dense
    convolutions on CPU), unless ``precision`` is passed (None: the global Keras
    policy) or the global Keras policy is not float32. Models trained from here
    (another ``num_classes``, ``weights=None``) keep the global policy.
    """
    import keras

    if ("precision" in overrides or keras.config.dtype_policy().name != "float32"
            or not hasattr(model, "bfloat16_pays") or not model.bfloat16_pays()):
        return model
    return model.with_settings(precision="bfloat16")


def _load_weights_file(entry: ModelEntry, path: pathlib.Path, num_classes: int | None,
                       overrides: dict[str, Any]):
    """A kdet ``.weights.h5`` file: the checkpoint's classes, or ``num_classes`` (a fine-tuned file).

    Returns:
        ``(model, its number of classes)``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
    model = build(entry, **overrides)
    changing = num_classes is not None and num_classes != entry.num_classes
    try:
        with warnings.catch_warnings():
            if changing:  # a mismatch is possible here; Keras warns before raising
                warnings.simplefilter("ignore")
            model.load_weights(os.fspath(path))
        return model, entry.num_classes
    except ValueError:
        if not changing:
            raise
    # Not the checkpoint's classes: a file saved from a model fine-tuned to num_classes.
    model = build(entry, **overrides, num_classes=num_classes)
    model.load_weights(os.fspath(path))
    return model, num_classes


def _has_setting(model, name: str) -> bool:
    """Whether ``model`` is a ``kdet.Detector`` whose config holds the setting ``name``."""
    return name in getattr(getattr(model, "config", None), "__dataclass_fields__", {})


def _classifier_of(entry: ModelEntry, model) -> tuple[str, ...] | None:
    named = entry.weights.classifier if entry.weights is not None else None
    return named or getattr(model, "classifier_layers", None)


def _rebuilt_with_classes(model, num_classes: int, fine_tune: bool = True):
    """A new model like ``model`` (from its config) with ``num_classes``, fresh weights and ``fine_tune``."""
    config = model.get_config()
    if "num_classes" not in config:
        raise ValueError(f"{type(model).__name__} has no num_classes in its config; cannot "
                         f"change it to {num_classes}.")
    config = {**config, "num_classes": num_classes}
    if _has_setting(model, "fine_tune"):  # pretrained features, a fresh classifier
        config["fine_tune"] = bool(fine_tune)
    # The old names and the head's output of each old label no longer fit: the new classifier has one
    # output per new class (head_output_ids of a converted 91-output COCO head, see kdet.zoo.torchvision).
    for key in ("class_names", "head_output_ids"):
        if config.get(key) is not None:
            config[key] = None
    return type(model).from_config(config)


def change_num_classes(model, num_classes: int | None, build_with_classes: Callable[[int], Any],
                       classifier: Sequence[str] | None):
    """Returns ``model`` with ``num_classes``, every weight kept but the classifier's.

    The one routine behind ``kdet.load(..., num_classes=n)``: build the model
    again with ``n`` classes, copy every variable except those of the
    classifier layers, and fail if anything else differs. Then the new model's
    ``inherit_classifier_outputs`` copies what its classifier layers predict
    independently of the classes (YOLO's boxes and objectness).

    Args:
        model: the loaded model (the checkpoint's classes).
        num_classes: the new number of classes; None or the model's own
            returns ``model`` unchanged.
        build_with_classes: builds the same architecture with a given number of classes.
        classifier: the layers whose shapes depend on the classes. None: the
            model names none; then every variable whose path and shape still
            match is copied (``transfer_matching_weights``).

    Returns:
        The new model (or ``model`` itself if the classes do not change).

    Raises:
        ValueError: a classifier name is no layer of the model, or a variable
            outside the classifier differs between the two builds.
    """
    if num_classes is None or getattr(model, "num_classes", None) == num_classes:
        return model
    target = build_with_classes(num_classes)
    if classifier:
        transfer_all_but_classifier(model, target, classifier)
    else:
        transfer_matching_weights(model, target)
    inherit = getattr(target, "inherit_classifier_outputs", None)
    if callable(inherit) and type(target) is type(model):
        inherit(model)  # e.g. YOLO's box and objectness outputs, which do not depend on the classes
    return target
