"""TensorFlow Datasets readers mapped to kdet's convention.

Supported: ``voc/2007``, ``voc/2012``, ``coco/2017`` and ``wider_face``. tfds
boxes are ``rel_yxyx`` (``tfds.features.BBoxFeature``); kdet yields ``xyxy``
absolute pixels, labels ``0..C-1`` (tfds' own label ids, which are already
contiguous), and leaves out what the matching evaluation ignores unless asked:
VOC ``is_difficult`` and COCO ``is_crowd`` objects, WIDER FACE ``invalid``
faces. Images without objects are kept.

Example:
    >>> ds = kdet.data.tfds("voc/2007", split="train", image_size=300, batch_size=16)  # doctest: +SKIP
"""

from __future__ import annotations

from kdet.data.records import DATASET_ARGS_DOC

#: name -> (objects feature, flag feature of ignored objects or None, fixed label or None)
TFDS_DATASETS = {
    "voc": ("objects", "is_difficult", None),
    "coco": ("objects", "is_crowd", None),
    "wider_face": ("faces", "invalid", 0),
}
_SPLITS = {"val": "validation"}


def _family(name: str) -> str:
    family = name.split("/")[0].split(":")[0]
    if family not in TFDS_DATASETS:
        raise ValueError(f"Unsupported tfds dataset {name!r}; expected one of voc/2007, voc/2012, "
                         "coco/2017, wider_face.")
    return family


def to_kdet(example: dict, family: str, keep_ignored: bool = False):
    """Maps one tfds example to ``(image uint8, {"boxes": (n, 4) xyxy pixels, "labels": (n,) int32})``."""
    import tensorflow as tf

    from kdet.ops.boxes import convert_format

    objects_key, flag_key, fixed_label = TFDS_DATASETS[family]
    image = example["image"]
    objects = example[objects_key]
    shape = tf.shape(image)
    boxes = convert_format(tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4)), "rel_yxyx", "xyxy",
                           height=shape[0], width=shape[1])
    if fixed_label is None:
        labels = tf.cast(objects["label"], tf.int32)
    else:
        labels = tf.fill(tf.shape(boxes)[:1], tf.constant(fixed_label, tf.int32))
    if flag_key is not None and not keep_ignored:
        keep = tf.logical_not(tf.cast(objects[flag_key], tf.bool))
        boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
    return image, {"boxes": boxes, "labels": labels}


def class_names(name: str, builder=None) -> list[str]:
    """The class names of a supported tfds dataset (index = kdet label)."""
    family = _family(name)
    if family == "wider_face":
        return ["face"]
    if builder is None:
        import tensorflow_datasets as tfds_lib

        builder = tfds_lib.builder(name)
    return list(builder.info.features[TFDS_DATASETS[family][0]]["label"].names)


def tfds(name: str, split: str = "train", *, data_dir: str | None = None, download: bool = False,
         keep_ignored: bool = False, image_size=None, batch_size: int | None = None, max_boxes: int | None = None,
         resize_mode: str = "letterbox", shuffle: bool = False, seed: int = 0, augmenter=None,
         repeat: bool = False):
    """A tfds detection dataset as ``tf.data.Dataset`` of ``(image, {"boxes", "labels"})``.

    Args:
        name: "voc/2007", "voc/2012", "coco/2017" or "wider_face".
        split: tfds split ("train", "validation" / "val", "test", slices like "train[:10%]").
        data_dir: tfds data folder (default ``~/tensorflow_datasets``).
        download: let tfds download and prepare the data (off by default: kdet
            never downloads behind your back; run ``tfds build`` or pass True).
        keep_ignored: keep difficult (VOC), crowd (COCO) and invalid (WIDER) objects.
        {args}
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds_lib

    family = _family(name)
    split = _SPLITS.get(split, split)
    ds = tfds_lib.load(name, split=split, data_dir=data_dir, download=download, shuffle_files=False)
    ds = ds.map(lambda ex: to_kdet(ex, family, keep_ignored), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    if image_size is None and batch_size is None and not shuffle and augmenter is None and not repeat:
        return ds
    from kdet.data.pipeline import DEFAULT_MAX_BOXES, prepare

    return prepare(ds, image_size=image_size, batch_size=batch_size, max_boxes=max_boxes or DEFAULT_MAX_BOXES,
                   resize_mode=resize_mode, shuffle_buffer=1024 if shuffle else None, seed=seed,
                   augmenter=augmenter, repeat=repeat)


tfds.__doc__ = tfds.__doc__.replace("{args}", DATASET_ARGS_DOC)
