"""Finding things inside the kdet installation: import paths and packaged files.

Zoo entries name their builders, converters and class lists as import paths
(``"package.module:attribute"``) so that listing the zoo imports neither
TensorFlow nor any architecture; ``resolve`` imports them on use. Files that
ship inside the wheel (Darknet cfgs, MTCNN weights) are found with
``package_file``. This module imports nothing from the rest of kdet.

Example:
    >>> resolve("kdet.zoo.coco_classes:COCO_CLASSES")[0]
    'person'
"""

from __future__ import annotations

import importlib
import importlib.resources
import pathlib
import re
from typing import Any

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def check_import_path(field: str, value: str | None) -> None:
    """Raises ``ValueError`` unless ``value`` is None or ``"package.module:attribute"``."""
    if value is not None and not (isinstance(value, str) and _IMPORT_PATH.match(value)):
        raise ValueError(f"{field} must be an import path 'package.module:attribute'; received {value!r}.")


def resolve(import_path: str) -> Any:
    """Imports ``"package.module:attr.sub"`` and returns the attribute.

    Args:
        import_path: ``"package.module:attribute"``; the attribute may be dotted.

    Returns:
        The attribute (a builder, a converter, a list of class names...).

    Raises:
        ValueError: ``import_path`` is not of that form.
        ImportError: the module is not part of this kdet installation (e.g. an
            architecture not written yet) or lacks the attribute; the message
            names it.

    Example:
        >>> resolve("kdet.zoo.voc_classes:VOC_CLASSES")[:2]
        ('aeroplane', 'bicycle')
    """
    check_import_path("import path", import_path)
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


def package_file(relative: str) -> pathlib.Path:
    """Returns the path of a file shipped inside the ``kdet`` package.

    Args:
        relative: the path inside the package, e.g. ``"assets/darknet/yolov3.cfg"``.

    Returns:
        The file's absolute path.

    Raises:
        FileNotFoundError: the file is not in this installation.

    Example:
        >>> package_file("assets/darknet/yolov3.cfg").name
        'yolov3.cfg'
    """
    path = pathlib.Path(str(importlib.resources.files("kdet").joinpath(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"kdet package file {relative!r} is missing (looked at {path}); "
                                f"the installation is incomplete, reinstall kdet.")
    return path
