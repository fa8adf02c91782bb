"""Pascal VOC reader: ``Annotations/*.xml`` + ``JPEGImages/`` + ``ImageSets/Main/<split>.txt``.

VOC boxes are 1-based inclusive pixel indices (``xmin=1`` is the first
column); kdet boxes are pixel edges, so ``x1 = xmin - 1`` and ``x2 = xmax``
(the box covers columns ``xmin..xmax`` exactly). Objects marked ``difficult``
are left out unless ``include_difficult=True`` (VOC evaluation ignores them).

Reference: Everingham et al., "The Pascal Visual Object Classes (VOC)
Challenge", IJCV 2010.
"""

from __future__ import annotations

import os
import pathlib
import xml.etree.ElementTree as ET
from typing import Sequence

from kdet.data.records import (
    DATASET_ARGS_DOC, DetectionRecords, Problems, SPLIT_ALIASES, check_box, finish, image_exists,
    records_to_dataset,
)


def _voc_classes() -> list[str]:
    from kdet.zoo.voc_classes import VOC_CLASSES

    return list(VOC_CLASSES)


def _split_ids(root: pathlib.Path, split: str | None) -> list[str]:
    if split is None:
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    for alias in SPLIT_ALIASES.get(split, (split,)):
        listing = root / "ImageSets" / "Main" / f"{alias}.txt"
        if listing.is_file():
            return [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    raise FileNotFoundError(
        f"No split file for split {split!r} under {root}/ImageSets/Main (expected {split}.txt); "
        "pass split=None to read every xml in Annotations/."
    )


def _parse_object(obj, source, class_index, problems, include_difficult, width, height):
    name = (obj.findtext("name") or "").strip()
    if name not in class_index:
        problems.report(source, f"unknown class {name!r}; expected one of {sorted(class_index)}")
        return None
    if not include_difficult and (obj.findtext("difficult") or "0").strip() == "1":
        return "difficult"
    bnd = obj.find("bndbox")
    try:
        xmin, ymin, xmax, ymax = (float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, TypeError, ValueError):
        problems.report(source, f"object {name!r} has no numeric bndbox xmin/ymin/xmax/ymax")
        return None
    box = check_box(problems, source, [xmin - 1, ymin - 1, xmax, ymax], width, height)
    return None if box is None else (box, class_index[name])


def read_voc_xml(xml_file, image_dir, class_index: dict, problems: Problems, include_difficult: bool):
    """Parses one VOC xml -> (image path, boxes, labels), or None if the file is unusable (reported)."""
    try:
        tree = ET.parse(xml_file).getroot()
    except (ET.ParseError, OSError) as error:
        problems.report(xml_file, f"not a readable VOC xml ({error})")
        return None
    filename = tree.findtext("filename")
    if not filename:
        problems.report(xml_file, "has no <filename>")
        return None
    try:
        width = float(tree.findtext("size/width"))
        height = float(tree.findtext("size/height"))
    except (TypeError, ValueError):
        width = height = None  # clipping then happens later, in the pipeline
    boxes, labels = [], []
    for obj in tree.iter("object"):
        parsed = _parse_object(obj, xml_file, class_index, problems, include_difficult, width, height)
        if isinstance(parsed, tuple):
            boxes.append(parsed[0])
            labels.append(parsed[1])
    image = pathlib.Path(image_dir) / filename.strip()
    if not image_exists(problems, xml_file, image):
        return None
    return image, boxes, labels


def read_voc(root: str | os.PathLike, split: str | None = "train", class_names: Sequence[str] | None = None,
             on_error: str = "warn", include_difficult: bool = False) -> DetectionRecords:
    """Parses a VOC-format folder into :class:`~kdet.data.records.DetectionRecords`.

    Args:
        root: folder with ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/``
            (e.g. ``VOCdevkit/VOC2007``).
        split: name of the list in ``ImageSets/Main`` ("train", "val"/"validation",
            "trainval", "test"), or None for every xml in ``Annotations/``.
        class_names: class names, index = label; default the 20 VOC classes.
        on_error: ``"raise"``, ``"warn"`` or ``"skip"`` (see :mod:`kdet.data.records`).
        include_difficult: keep objects marked difficult.
    """
    root = pathlib.Path(root)
    if not (root / "Annotations").is_dir():
        raise FileNotFoundError(f"{root} is not a VOC folder: {root / 'Annotations'} does not exist.")
    class_names = _voc_classes() if class_names is None else [str(c) for c in class_names]
    class_index = {name: i for i, name in enumerate(class_names)}
    problems = Problems(on_error)
    paths, boxes, labels = [], [], []
    for image_id in _split_ids(root, split):
        xml_file = root / "Annotations" / f"{image_id}.xml"
        if not xml_file.is_file():
            problems.report(xml_file, "listed in the split file but missing")
            continue
        parsed = read_voc_xml(xml_file, root / "JPEGImages", class_index, problems, include_difficult)
        if parsed is not None:
            paths.append(parsed[0])
            boxes.append(parsed[1])
            labels.append(parsed[2])
    return finish(paths, boxes, labels, class_names, problems)


def voc(path: str | os.PathLike, split: str | None = "train", *, class_names: Sequence[str] | None = None,
        on_error: str = "warn", include_difficult: bool = False, image_size=None, batch_size: int | None = None,
        max_boxes: int | None = None, resize_mode: str = "letterbox", shuffle: bool = False, seed: int = 0,
        augmenter=None, repeat: bool = False):
    """A Pascal VOC-format folder as ``tf.data.Dataset`` of ``(image, {"boxes", "labels"})``.

    Args:
        path: the VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``).
        split, class_names, on_error, include_difficult: as :func:`read_voc`.
        {args}

    Example:
        >>> ds = voc("VOCdevkit/VOC2007", split="trainval", image_size=300, batch_size=32)  # doctest: +SKIP
    """
    records = read_voc(path, split, class_names, on_error, include_difficult)
    return records_to_dataset(records, image_size, batch_size, max_boxes, resize_mode, shuffle, seed,
                              augmenter, repeat)


voc.__doc__ = voc.__doc__.replace("{args}", DATASET_ARGS_DOC)
