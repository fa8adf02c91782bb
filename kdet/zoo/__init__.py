"""kdet.zoo: named models, verified downloads, weight conversion and caching.

Importing it needs no TensorFlow; builders and converters load on use.

Example:
    >>> from kdet import zoo
    >>> "mtcnn" in zoo.list_models()
    True
"""

from kdet.errors import WeightsUnavailableError
from kdet.zoo.cache import kdet_home
from kdet.zoo.download import extract_tar_safely, fetch
from kdet.zoo.preset import save_preset
from kdet.zoo.registry import (
    ModelEntry,
    WeightsSource,
    get_entry,
    list_models,
    load,
    register,
    transfer_matching_weights,
    unregister,
)

__all__ = [
    "ModelEntry", "WeightsSource", "WeightsUnavailableError", "extract_tar_safely", "fetch",
    "get_entry", "kdet_home", "list_models", "load", "register", "save_preset",
    "transfer_matching_weights", "unregister",
]
from kdet.zoo.darknet import convert_darknet, load_darknet_weights  # noqa: E402
