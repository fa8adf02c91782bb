"""Copying weights between two builds of one architecture (fine-tuning to new classes).

``transfer_all_but_classifier`` is the rule ``kdet.load(..., num_classes=n)``
applies: every variable is copied except those of the named classifier layers,
and any other difference is an error. ``transfer_matching_weights`` is the
lenient public helper: it copies whatever matches by path and shape and reports
the rest; kdet falls back on it only for models that name no classifier.

Example:
    >>> import kdet
    >>> coco = kdet.models.RetinaNet(80, backbone="tiny", image_size=128)   # doctest: +SKIP
    >>> mine = kdet.models.RetinaNet(3, backbone="tiny", image_size=128)    # doctest: +SKIP
    >>> transfer_all_but_classifier(coco, mine, ("cls_pred",))            # doctest: +SKIP
    ['cls_pred/kernel', 'cls_pred/bias']
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # only for hints: importing kdet.zoo must stay light
    import keras

# Mismatches quoted in an error message (the rest are counted).
_QUOTED = 5


def _canonical(path: str) -> str:
    # Auto-generated Keras names carry a per-session counter ("conv2d_17"); two
    # builds of the same architecture differ only in those suffixes.
    return "/".join(re.sub(r"_\d+$", "", part) for part in path.split("/"))


def transfer_matching_weights(source: keras.Model, target: keras.Model) -> list[str]:
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

    Raises:
        ValueError: no variable matches (the models are different architectures).

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


def classifier_variables(model: keras.Model, classifier: Sequence[str]) -> list:
    """The variables of the layers named in ``classifier``, found anywhere in ``model``.

    Args:
        model: a Keras model; nested models (backbone, heads) are searched too.
        classifier: layer names.

    Returns:
        The variables of those layers, in ``model.weights`` order.

    Raises:
        ValueError: a name is no layer of ``model``.
    """
    wanted, found = set(classifier), {}
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if layer.name in wanted:
            found[layer.name] = layer
        else:
            stack.extend(getattr(layer, "layers", []))
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{type(model).__name__} {model.name!r} has no layer named {missing}; the classifier "
                         f"layers {tuple(classifier)} must name layers of the model.")
    ids = {id(v) for layer in found.values() for v in layer.weights}
    return [v for v in model.weights if id(v) in ids]


def transfer_all_but_classifier(source: keras.Model, target: keras.Model,
                                classifier: Sequence[str]) -> list[str]:
    """Copies every variable of ``source`` into ``target`` except the classifier layers'.

    ``source`` and ``target`` are two builds of one architecture that differ
    only in the number of classes: outside the classifier layers, the variables
    pair up one to one, in order, with the same path (up to Keras'
    auto-numbering) and shape. Anything else is an error, so a silently
    half-loaded model cannot come out.

    Args:
        source: the model holding the weights (e.g. the checkpoint's 80 classes).
        target: the freshly built model with the new number of classes.
        classifier: names of the layers whose variables depend on the number
            of classes; they keep ``target``'s initialisation.

    Returns:
        The paths of ``target``'s variables left freshly initialised (the classifier's).

    Raises:
        ValueError: a classifier name is no layer of a model, or a variable
            outside the classifier layers differs in count, path or shape.

    Example:
        >>> transfer_all_but_classifier(coco_model, three_class_model, ("cls_pred",))  # doctest: +SKIP
        ['cls_pred/kernel', 'cls_pred/bias']
    """
    skipped_source = {id(v) for v in classifier_variables(source, classifier)}
    fresh = classifier_variables(target, classifier)
    skipped_target = {id(v) for v in fresh}
    pairs = list(zip([v for v in source.weights if id(v) not in skipped_source],
                     [v for v in target.weights if id(v) not in skipped_target]))
    kept_source = len(source.weights) - len(skipped_source)
    kept_target = len(target.weights) - len(skipped_target)
    problems = [f"{a.path} {tuple(a.shape)} vs {b.path} {tuple(b.shape)}" for a, b in pairs
                if _canonical(a.path) != _canonical(b.path) or tuple(a.shape) != tuple(b.shape)]
    if kept_source != kept_target or problems:
        raise ValueError(
            f"Cannot change the number of classes by re-initialising only {tuple(classifier)}: outside them "
            f"the source has {kept_source} variables and the new model {kept_target}, and "
            f"{len(problems)} differ in path or shape (source vs new: {'; '.join(problems[:_QUOTED])}). "
            f"The classifier layers must list every layer whose shape depends on num_classes.")
    for src, dst in pairs:
        dst.assign(src.value)
    return [v.path for v in fresh]
