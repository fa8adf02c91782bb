"""Building a zoo entry's architecture: the builder named by the entry, with its arguments.

Used by ``kdet.zoo.loader`` (every load) and ``kdet.zoo.converted`` (the
model a checkpoint is converted into once, with the entry's own arguments).

Example:
    >>> from kdet.zoo import build, registry
    >>> model = build.build(registry.get_entry("yolov3_darknet53"), num_classes=3,
    ...                     backbone="tiny", image_size=128)     # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from kdet.zoo.locate import resolve
from kdet.zoo.registry import ModelEntry


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def build(entry: ModelEntry, **kwargs: Any):
    """Builds ``entry``'s architecture with ``kwargs`` over its ``builder_kwargs``.

    The entry's class names are passed as ``class_names`` (the ``kdet.Detector``
    argument) when the builder takes it and the number of classes is unchanged;
    with another ``num_classes`` the old names no longer fit and none are passed.

    Args:
        entry: the zoo entry.
        **kwargs: builder arguments replacing the entry's (``num_classes``,
            ``image_size``, thresholds...).

    Returns:
        The model the builder returns (a ``kdet.Detector``), randomly initialised.

    Raises:
        ImportError: the builder's module is not part of this installation.
    """
    builder = resolve(entry.builder)
    kwargs = {**entry.builder_kwargs, **kwargs}
    names = entry.get_class_names()
    if (names and "class_names" not in kwargs and kwargs.get("num_classes", len(names)) == len(names)
            and _accepts(builder, "class_names")):
        kwargs["class_names"] = list(names)
    return builder(**kwargs)
