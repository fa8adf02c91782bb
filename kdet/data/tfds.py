"""TensorFlow Datasets readers mapped to kdet's convention.

Supported: ``voc/2007``, ``voc/2012``, ``coco/2017`` (and ``coco/2017_panoptic``),
``lvis`` and ``wider_face``. tfds boxes are ``rel_yxyx``
(``tfds.features.BBoxFeature``); kdet yields ``xyxy`` absolute pixels, labels
``0..C-1`` (tfds' own label ids, which are already contiguous), and leaves out
what the matching evaluation ignores unless asked: VOC ``is_difficult`` and
COCO ``is_crowd`` objects, WIDER FACE ``invalid`` faces. Images without
objects are kept.

Instance masks (``masks=True``, ``"masks"`` (n, H, W) uint8 row-aligned with
the boxes) exist where tfds stores them: ``coco/2017_panoptic`` (each
segment's pixels in the panoptic PNG, whose RGB encodes the segment id as
``R + 256 G + 256^2 B``; its 133 labels are the 80 COCO thing classes then the
53 stuff classes) and ``lvis`` (one mask image per object). tfds' ``coco/2017``
holds boxes only: read ``instances_*.json`` with :func:`kdet.data.coco`
(``masks=True``) for COCO instance masks.

Example:
    >>> ds = kdet.data.tfds("voc/2007", split="train", image_size=300, batch_size=16)  # doctest: +SKIP
"""

from __future__ import annotations

from kdet.data.records import DATASET_ARGS_DOC

#: name -> (objects feature, flag feature of ignored objects or None, fixed label or None)
TFDS_DATASETS = {
    "voc": ("objects", "is_difficult", None),
    "coco": ("objects", "is_crowd", None),
    "lvis": ("objects", None, None),
    "wider_face": ("faces", "invalid", 0),
}
#: COCO panoptic PNGs store the segment id as R + 256 G + 256^2 B (panopticapi's rgb2id).
_PANOPTIC_ID_WEIGHTS = (1, 256, 256 * 256)
_SPLITS = {"val": "validation"}


def _family(name: str) -> str:
    family = name.split("/")[0].split(":")[0]
    if family not in TFDS_DATASETS:
        raise ValueError(f"Unsupported tfds dataset {name!r}; expected one of voc/2007, voc/2012, "
                         "coco/2017, coco/2017_panoptic, lvis, wider_face.")
    return family


def _objects_key(name: str, family: str) -> str:
    return "panoptic_objects" if family == "coco" and "panoptic" in name else TFDS_DATASETS[family][0]


def _check_masks_available(name: str, family: str) -> None:
    if family == "lvis" or (family == "coco" and "panoptic" in name):
        return
    hint = (" tfds' coco/2017 stores boxes only; use coco/2017_panoptic, lvis, or the COCO json with "
            "kdet.data.coco(path, masks=True)." if family == "coco" else "")
    raise ValueError(f"masks=True needs instance masks, which tfds {name!r} does not have; datasets with masks: "
                     f"coco/2017_panoptic, lvis.{hint}")


def _instance_masks(example: dict, objects: dict, objects_key: str):
    """(n, H, W) uint8 masks of the objects of one example (panoptic PNG or per-object mask images)."""
    import tensorflow as tf

    if objects_key == "panoptic_objects":
        rgb = tf.cast(example["panoptic_image"], tf.int64)
        segment_ids = tf.reduce_sum(rgb * tf.constant(_PANOPTIC_ID_WEIGHTS, tf.int64), axis=-1)
        ids = tf.cast(tf.reshape(objects["id"], (-1,)), tf.int64)
        return tf.cast(tf.equal(segment_ids[None], ids[:, None, None]), tf.uint8)
    masks = objects["segmentation"]  # lvis: (n, H, W, 1), 255 inside
    shape = tf.shape(example["image"])
    return tf.cast(tf.reshape(masks, tf.stack([-1, shape[0], shape[1]])) > 0, tf.uint8)


def to_kdet(example: dict, family: str, keep_ignored: bool = False, masks: bool = False,
            objects_key: str | None = None):
    """Maps one tfds example to ``(image uint8, {"boxes": (n, 4) xyxy pixels, "labels": (n,) int32})``.

    With ``masks`` the targets add ``"masks"`` (n, H, W) uint8 (``coco/*_panoptic``
    and ``lvis``; ``objects_key`` is ``"panoptic_objects"`` for the former).
    """
    import tensorflow as tf

    from kdet.ops.boxes import convert_format

    default_key, flag_key, fixed_label = TFDS_DATASETS[family]
    objects_key = objects_key or default_key
    image = example["image"]
    objects = example[objects_key]
    shape = tf.shape(image)
    boxes = convert_format(tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4)), "rel_yxyx", "xyxy",
                           height=shape[0], width=shape[1])
    if fixed_label is None:
        labels = tf.cast(objects["label"], tf.int32)
    else:
        labels = tf.fill(tf.shape(boxes)[:1], tf.constant(fixed_label, tf.int32))
    targets = {"boxes": boxes, "labels": labels}
    if masks:
        targets["masks"] = _instance_masks(example, objects, objects_key)
    if flag_key is not None and not keep_ignored:
        keep = tf.logical_not(tf.cast(objects[flag_key], tf.bool))
        targets = {k: tf.boolean_mask(v, keep) for k, v in targets.items()}
    return image, targets


def class_names(name: str, builder=None) -> list[str]:
    """The class names of a supported tfds dataset (index = kdet label)."""
    family = _family(name)
    if family == "wider_face":
        return ["face"]
    if builder is None:
        import tensorflow_datasets as tfds_lib

        builder = tfds_lib.builder(name)
    return list(builder.info.features[_objects_key(name, family)]["label"].names)


def tfds(name: str, split: str = "train", *, data_dir: str | None = None, download: bool = False,
         keep_ignored: bool = False, masks: bool = False, image_size=None, batch_size: int | None = None,
         max_boxes: int | None = None, resize_mode: str = "letterbox", shuffle: bool = False, seed: int = 0,
         augmenter=None, repeat: bool = False):
    """A tfds detection dataset as ``tf.data.Dataset`` of ``(image, {"boxes", "labels"[, "masks"]})``.

    Args:
        name: "voc/2007", "voc/2012", "coco/2017", "coco/2017_panoptic", "lvis" or "wider_face".
        split: tfds split ("train", "validation" / "val", "test", slices like "train[:10%]").
        data_dir: tfds data folder (default ``~/tensorflow_datasets``).
        download: let tfds download and prepare the data (off by default: kdet
            never downloads behind your back; run ``tfds build`` or pass True).
        keep_ignored: keep difficult (VOC), crowd (COCO) and invalid (WIDER) objects.
        masks: add ``"masks"`` (n, H, W) uint8 instance masks (``coco/2017_panoptic``
            and ``lvis`` only; resized, padded and augmented with the boxes).
        {args}
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds_lib

    family = _family(name)
    if masks:
        _check_masks_available(name, family)
    objects_key = _objects_key(name, family)
    split = _SPLITS.get(split, split)
    ds = tfds_lib.load(name, split=split, data_dir=data_dir, download=download, shuffle_files=False)
    ds = ds.map(lambda ex: to_kdet(ex, family, keep_ignored, masks, objects_key),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if image_size is None and batch_size is None and not shuffle and augmenter is None and not repeat:
        return ds
    from kdet.data.pipeline import DEFAULT_MAX_BOXES, prepare

    return prepare(ds, image_size=image_size, batch_size=batch_size, max_boxes=max_boxes or DEFAULT_MAX_BOXES,
                   resize_mode=resize_mode, shuffle_buffer=1024 if shuffle else None, seed=seed,
                   augmenter=augmenter, repeat=repeat)


tfds.__doc__ = tfds.__doc__.replace("{args}", DATASET_ARGS_DOC)
