"""kdet.zoo: named models, verified downloads, weight conversion and caching.

Importing it needs no TensorFlow; builders and converters load on use. The
modules depend on each other in one direction (``tests/test_imports.py``
checks it)::

    loader -> registry (entries as data)      <- entries (the built-in models)
           -> build -> locate (import paths, packaged files)
           -> converted (fetch + convert + cache) -> download -> cache
           -> preset (.keras files, preset directories)
           -> transfer (weights between two builds: new classes)

Importing the package registers the built-in entries (``kdet.zoo.entries``),
as timm's model modules register themselves on import.

Example:
    >>> from kdet import zoo
    >>> "mtcnn" in zoo.list_models()
    True
"""

from kdet.errors import WeightsUnavailableError
from kdet.zoo import entries as _entries  # noqa: F401 - registers the built-in models
from kdet.zoo.cache import kdet_home
from kdet.zoo.darknet import convert_darknet, load_darknet_weights
from kdet.zoo.download import extract_tar_safely, fetch
from kdet.zoo.loader import load
from kdet.zoo.preset import save_preset
from kdet.zoo.registry import ModelEntry, WeightsSource, get_entry, list_models, register, unregister
from kdet.zoo.transfer import transfer_matching_weights

__all__ = [
    "ModelEntry", "WeightsSource", "WeightsUnavailableError", "convert_darknet", "extract_tar_safely", "fetch",
    "get_entry", "kdet_home", "list_models", "load", "load_darknet_weights", "register", "save_preset",
    "transfer_matching_weights", "unregister",
]
