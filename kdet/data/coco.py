"""COCO "instances" json reader (``instances_train2017.json`` + an image folder).

COCO ``bbox`` is ``[x, y, width, height]`` in absolute pixels; kdet yields
``xyxy``. Category ids (1..90 with gaps in COCO 2017) map to contiguous labels
``0..C-1`` in increasing id order, so ``class_names[label]`` is the category
name. Crowd annotations (``iscrowd=1``) are left out unless
``include_crowd=True`` (COCO evaluation ignores them; they are counted in the
log). Images without annotations are kept, with no boxes.

With ``masks=True`` every box comes with its instance mask, decoded from the
annotation's ``segmentation`` (polygons, uncompressed or compressed RLE)
exactly as pycocotools' ``COCO.annToMask`` does (:mod:`kdet.data.segmentation`),
when the image is read: ``"masks"`` (n, H, W) uint8 row-aligned with the boxes.
An annotation without a usable segmentation is then a reported problem (and
skipped, with its box, under ``on_error="warn"``/``"skip"``).

Reference: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

from kdet.data.records import (
    DATASET_ARGS_DOC, DetectionRecords, Problems, SPLIT_ALIASES, check_box, finish, image_exists,
    records_to_dataset,
)
from kdet.data.segmentation import segmentation_problem

logger = logging.getLogger("kdet.data")


def read_coco(annotation_file: str | os.PathLike, image_dir: str | os.PathLike | None = None,
              on_error: str = "warn", include_crowd: bool = False, masks: bool = False) -> DetectionRecords:
    """Parses a COCO instances json into :class:`~kdet.data.records.DetectionRecords`.

    Args:
        annotation_file: path of the json file.
        image_dir: folder of the images (``file_name`` is relative to it);
            default: ``<root>/<split>`` for ``<root>/annotations/instances_<split>.json``
            if that folder exists, else the json's folder.
        on_error: ``"raise"``, ``"warn"`` or ``"skip"`` for malformed entries
            (see :mod:`kdet.data.records`). A file that is not valid json always raises.
        include_crowd: keep ``iscrowd=1`` boxes.
        masks: keep each annotation's ``segmentation`` (checked here, decoded
            when the dataset reads the image) in ``records.segmentations``.

    Returns:
        ``DetectionRecords`` with xyxy absolute boxes.
    """
    path = pathlib.Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid COCO json file ({error}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise ValueError(f"{path}: expected a COCO instances json with 'images' and 'categories' lists.")
    image_dir = _default_image_dir(path) if image_dir is None else pathlib.Path(image_dir)
    problems = Problems(on_error)
    categories = {}
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            problems.report(path, f"category {cat!r} has no integer 'id'")
            continue
        categories[cat["id"]] = str(cat.get("name", cat["id"]))
    ids = sorted(categories)
    label_of = {cid: i for i, cid in enumerate(ids)}
    images = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            problems.report(path, f"image entry {str(img)[:80]} lacks 'id' or 'file_name'")
            continue
        images[img["id"]] = img
    per_image = {i: ([], [], []) for i in images}
    crowd = 0
    for ann in data.get("annotations", []):
        crowd += _add_annotation(ann, path, images, label_of, per_image, problems, include_crowd, masks)
    if crowd:
        logger.info("kdet.data: %s: left out %d crowd annotations (include_crowd=False).", path, crowd)
    paths, boxes, labels, segmentations = [], [], [], []
    for image_id, img in images.items():
        file = image_dir / img["file_name"]
        if not image_exists(problems, f"{path} (image id {image_id})", file):
            continue
        paths.append(file)
        boxes.append(per_image[image_id][0])
        labels.append(per_image[image_id][1])
        segmentations.append(per_image[image_id][2])
    return finish(paths, boxes, labels, [categories[c] for c in ids], problems,
                  segmentations=segmentations if masks else None)


def _add_annotation(ann, path, images, label_of, per_image, problems, include_crowd, masks=False) -> int:
    """Adds one annotation to ``per_image``; returns 1 if it was a left-out crowd box."""
    source = f"{path} (annotation id {ann.get('id') if isinstance(ann, dict) else '?'})"
    if not isinstance(ann, dict):
        problems.report(source, f"annotation {ann!r} is not an object")
        return 0
    if ann.get("image_id") not in images:
        problems.report(source, f"image_id {ann.get('image_id')!r} is not in 'images'")
        return 0
    if ann.get("category_id") not in label_of:
        problems.report(source, f"category_id {ann.get('category_id')!r} is not in 'categories'")
        return 0
    if ann.get("iscrowd", 0) and not include_crowd:
        return 1
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        problems.report(source, f"bbox {bbox!r} is not [x, y, width, height]")
        return 0
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        problems.report(source, f"bbox {bbox!r} holds non-numbers")
        return 0
    img = images[ann["image_id"]]
    if masks:
        problem = segmentation_problem(ann.get("segmentation"), img.get("height"), img.get("width"))
        if problem is not None:
            problems.report(source, problem)
            return 0
    box = check_box(problems, source, [x, y, x + w, y + h], img.get("width"), img.get("height"))
    if box is not None:
        per_image[ann["image_id"]][0].append(box)
        per_image[ann["image_id"]][1].append(label_of[ann["category_id"]])
        per_image[ann["image_id"]][2].append(ann.get("segmentation"))
    return 0


def _default_image_dir(json_path: pathlib.Path) -> pathlib.Path:
    stem = json_path.stem.split("_", 1)[-1]  # instances_val2017 -> val2017
    for candidate in (json_path.parent.parent / stem, json_path.parent / stem, json_path.parent / "images"):
        if candidate.is_dir():
            return candidate
    return json_path.parent


def find_coco_annotations(root: str | os.PathLike, split: str = "train") -> pathlib.Path:
    """Finds ``annotations/instances_<split>*.json`` under a COCO folder ("validation" matches "val")."""
    root = pathlib.Path(root)
    for alias in SPLIT_ALIASES.get(split, (split,)):
        found = sorted((root / "annotations").glob(f"instances_{alias}*.json")) + \
            sorted(root.glob(f"instances_{alias}*.json"))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"No COCO annotations for split {split!r} under {root}: expected annotations/instances_{split}*.json."
    )


def coco(path: str | os.PathLike, split: str = "train", *, image_dir=None, on_error: str = "warn",
         include_crowd: bool = False, masks: bool = False, image_size=None, batch_size: int | None = None,
         max_boxes: int | None = None, resize_mode: str = "letterbox", shuffle: bool = False, seed: int = 0,
         augmenter=None, repeat: bool = False):
    """A COCO-format dataset as ``tf.data.Dataset`` of ``(image, {"boxes", "labels"})``.

    Args:
        path: a COCO instances json file, or a COCO folder holding
            ``annotations/instances_<split>*.json`` and ``<split>2017/`` images.
        split: "train", "validation"/"val", ... (folders only).
        image_dir, on_error, include_crowd: as :func:`read_coco`.
        masks: add ``"masks"`` (n, H, W) uint8 instance masks decoded from
            the segmentations (resized, padded and augmented with the boxes).
        {args}

    Returns:
        Single examples (uint8 image, xyxy pixel boxes (n, 4), int32 labels
        (n,)[, uint8 masks (n, H, W)]), or padded batches when ``batch_size`` is given.

    Example:
        >>> ds = coco("data/coco", split="validation", image_size=512, batch_size=8)  # doctest: +SKIP
    """
    path = pathlib.Path(path)
    annotation_file = path if path.is_file() else find_coco_annotations(path, split)
    records = read_coco(annotation_file, image_dir, on_error=on_error, include_crowd=include_crowd, masks=masks)
    return records_to_dataset(records, image_size, batch_size, max_boxes, resize_mode, shuffle, seed,
                              augmenter, repeat)


coco.__doc__ = coco.__doc__.replace("{args}", DATASET_ARGS_DOC)
