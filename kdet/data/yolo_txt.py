"""YOLO txt reader (Darknet / Ultralytics layout).

Layout: ``images/<split>/*.jpg`` with ``labels/<split>/<same stem>.txt``
(or flat ``images/`` + ``labels/``); each label line is
``class x_center y_center width height`` relative to the image size (0..1).
An image without a label file has no objects (the YOLO convention). Class
names come from ``class_names=``, else ``classes.txt`` / ``obj.names`` in the
root (one name per line), else ``data.yaml``'s ``names`` list.

Reference: Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Sequence

import numpy as np

from kdet.data.records import DATASET_ARGS_DOC, DetectionRecords, Problems, SPLIT_ALIASES, finish, records_to_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _class_names(root: pathlib.Path) -> list[str] | None:
    for name in ("classes.txt", "obj.names"):
        if (root / name).is_file():
            return [line.strip() for line in (root / name).read_text().splitlines() if line.strip()]
    yaml = root / "data.yaml"
    if yaml.is_file():  # a tiny parser for `names: [a, b]` to avoid a YAML dependency
        match = re.search(r"^names:\s*\[(.*)\]", yaml.read_text(), re.M)
        if match:
            return [n.strip().strip("'\"") for n in match.group(1).split(",") if n.strip()]
    return None


def _split_dirs(root: pathlib.Path, split: str | None):
    if split is not None:
        for alias in SPLIT_ALIASES.get(split, (split,)):
            if (root / "images" / alias).is_dir():
                return root / "images" / alias, root / "labels" / alias
        raise FileNotFoundError(f"No images/{split} folder under {root}.")
    if (root / "images").is_dir():
        return root / "images", root / "labels"
    return root, root


def _parse_label_file(path: pathlib.Path, num_classes: int, problems: Problems):
    boxes, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        fields = line.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.report(source, f"line {line!r} holds non-numbers")
            continue
        if len(values) != 5:
            problems.report(source, f"expected 'class x_center y_center width height'; received {line!r}")
            continue
        cls, cx, cy, w, h = values
        if cls != int(cls) or not 0 <= cls < num_classes:
            problems.report(source, f"class {fields[0]} is not an integer in [0, {num_classes})")
            continue
        box = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0.0, 1.0)
        if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            problems.report(source, f"degenerate or non-finite box in {line!r}")
            continue
        boxes.append(box)
        labels.append(int(cls))
    return boxes, labels


def read_yolo_txt(root: str | os.PathLike, split: str | None = "train", class_names: Sequence[str] | None = None,
                  on_error: str = "warn") -> DetectionRecords:
    """Parses a YOLO txt folder into :class:`~kdet.data.records.DetectionRecords` (relative boxes).

    Args:
        root: the dataset folder.
        split: sub-folder of ``images/`` and ``labels/`` ("train", "val"/"validation", ...),
            or None for flat ``images/`` + ``labels/``.
        class_names: names, index = class id; default read from the folder.
        on_error: ``"raise"``, ``"warn"`` or ``"skip"`` for malformed lines
            (reported as ``file:line``).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"YOLO dataset folder not found: {root}")
    names = list(class_names) if class_names is not None else _class_names(root)
    if not names:
        raise ValueError(f"{root}: no class names; pass class_names= or add classes.txt / obj.names / data.yaml.")
    image_dir, label_dir = _split_dirs(root, split)
    problems = Problems(on_error)
    paths, boxes, labels = [], [], []
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label_file = label_dir / f"{image.stem}.txt"
        b, lab = _parse_label_file(label_file, len(names), problems) if label_file.is_file() else ([], [])
        paths.append(image)
        boxes.append(b)
        labels.append(lab)
    return finish(paths, boxes, labels, names, problems, relative=True)


def yolo_txt(path: str | os.PathLike, split: str | None = "train", *, class_names: Sequence[str] | None = None,
             on_error: str = "warn", image_size=None, batch_size: int | None = None, max_boxes: int | None = None,
             resize_mode: str = "letterbox", shuffle: bool = False, seed: int = 0, augmenter=None,
             repeat: bool = False):
    """A YOLO txt folder as ``tf.data.Dataset`` of ``(image, {"boxes", "labels"})`` (xyxy pixels).

    Args:
        path, split, class_names, on_error: as :func:`read_yolo_txt`.
        {args}
    """
    records = read_yolo_txt(path, split, class_names, on_error)
    return records_to_dataset(records, image_size, batch_size, max_boxes, resize_mode, shuffle, seed,
                              augmenter, repeat)


yolo_txt.__doc__ = yolo_txt.__doc__.replace("{args}", DATASET_ARGS_DOC)
