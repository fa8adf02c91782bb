"""kdet: a Keras 3 / TensorFlow object-detection model zoo.

Importing ``kdet`` is cheap: TensorFlow and the model code load on first use of
``kdet.models``, ``kdet.ops``, ``kdet.Detector`` and friends.

Example:
    >>> import kdet
    >>> model = kdet.load("mtcnn")                     # doctest: +SKIP
    >>> model.detect("photo.jpg")["boxes"]             # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from kdet.errors import MissingExtraError, WeightsUnavailableError
from kdet.version import __version__

_SUBMODULES = (
    "ops", "layers", "backbones", "necks", "heads", "targets", "losses",
    "models", "data", "metrics", "export", "zoo", "visualization", "optimizers",
)


def load(name: str, **kwargs):
    """Loads a named zoo model, a saved ``.keras`` file or a preset directory.

    See ``kdet.zoo.loader.load`` for the arguments: ``weights``,
    ``num_classes`` and builder overrides.
    """
    from kdet.zoo import loader

    return loader.load(name, **kwargs)


def list_models(pretrained: bool | None = None) -> list[str]:
    """Returns every name ``kdet.load`` accepts, sorted.

    Args:
        pretrained: True for names with pretrained weights only, False for
            architecture-only names, None (default) for all.
    """
    from kdet.zoo import registry

    return registry.list_models(pretrained=pretrained)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"kdet.{name}")
    if name == "Detector":
        from kdet.detector import Detector

        return Detector
    raise AttributeError(f"module 'kdet' has no attribute {name!r}")


__all__ = ["load", "list_models", "Detector", "MissingExtraError", "WeightsUnavailableError", *_SUBMODULES]
