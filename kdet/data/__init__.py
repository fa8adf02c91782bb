"""Data: image loading, the synthetic dataset, dataset readers, pipelines and augmentation.

Readers (``coco``, ``voc``, ``yolo_txt``, ``tfds``) yield
``(image uint8 (H, W, 3), {"boxes": (n, 4) xyxy pixels, "labels": (n,) int32})``
examples, or padded batches when given ``batch_size``; see ``docs/data.md``.
"""

from kdet.data.images import load_image
from kdet.data.synthetic import synthetic, synthetic_arrays

# The reader functions shadow their modules' names (as `synthetic` does): import
# the modules themselves with `from kdet.data.coco import read_coco` or importlib.
from kdet.data.coco import coco, read_coco  # noqa: E402  (no TensorFlow at import)
from kdet.data.voc import read_voc, voc
from kdet.data.yolo_txt import read_yolo_txt, yolo_txt
from kdet.data.tfds import tfds

_LAZY = {
    "prepare": ("kdet.data.pipeline", "prepare"), "pad_targets": ("kdet.data.pipeline", "pad_targets"),
    "resize": ("kdet.data.pipeline", "resize"), "sanitize_boxes": ("kdet.data.pipeline", "sanitize_boxes"),
    "truncation_stats": ("kdet.data.pipeline", "truncation_stats"),
    "Augmenter": ("kdet.data.augment", "Augmenter"),
    "DetectionRecords": ("kdet.data.records", "DetectionRecords"),
}


def __getattr__(name: str):
    # Pipelines and augmentation load TensorFlow/Keras on first use: `import kdet.data` stays cheap.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kdet.data' has no attribute {name!r}")


__all__ = ["load_image", "synthetic", "synthetic_arrays", "coco", "read_coco", "voc", "read_voc",
           "yolo_txt", "read_yolo_txt", "tfds", *_LAZY]
