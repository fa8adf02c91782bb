"""Parsed annotation records shared by the file readers (COCO json, VOC xml, YOLO txt).

Readers parse every annotation file in Python first, into
:class:`DetectionRecords` (image paths + boxes + labels); only then do images
get decoded, lazily, inside ``tf.data``. Parsing problems (a malformed file, a
box with x2 <= x1, an unknown class, an image file that does not exist) are
handled per the reader's ``on_error`` option:

- ``"raise"``: ``ValueError`` naming the file and the entry;
- ``"warn"`` (default): a ``UserWarning`` per problem, the entry is skipped;
- ``"skip"``: the entry is skipped and the problem logged at INFO level on the
  ``kdet.data`` logger.

Whatever the option, every problem is also kept in ``records.problems``, so
nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import warnings

import numpy as np

logger = logging.getLogger("kdet.data")
ON_ERROR = ("raise", "warn", "skip")


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}; received {on_error!r}.")
    return on_error


class Problems(list):
    """The problems met while parsing; :meth:`report` applies the ``on_error`` policy."""

    def __init__(self, on_error: str):
        super().__init__()
        self.on_error = check_on_error(on_error)

    def report(self, source, message: str) -> None:
        text = f"{source}: {message}"
        if self.on_error == "raise":
            raise ValueError(text + " (pass on_error='warn' or 'skip' to skip such entries)")
        self.append(text)
        if self.on_error == "warn":
            warnings.warn(f"kdet.data: skipped {text}", UserWarning, stacklevel=3)
        else:
            logger.info("kdet.data: skipped %s", text)


@dataclasses.dataclass
class DetectionRecords:
    """Parsed annotations of one split.

    Attributes:
        image_paths: one path per image.
        boxes: one (n_i, 4) float32 array per image; ``xyxy`` absolute pixels,
            or ``rel_xyxy`` when ``relative`` is True (YOLO txt: the image size
            is only known once decoded).
        labels: one (n_i,) int32 array per image, in ``0..len(class_names)-1``.
        class_names: the class names, index = label.
        problems: every skipped entry, as ``"file: message"``.
        relative: whether boxes are relative to the image size.
        segmentations: None, or one list per image holding one COCO
            ``segmentation`` (polygons or RLE, already checked) per box: the
            dataset then decodes them into ``"masks"`` (n, H, W) uint8.
    """

    image_paths: list[str]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    class_names: list[str]
    problems: list[str] = dataclasses.field(default_factory=list)
    relative: bool = False
    segmentations: list[list] | None = None

    def __len__(self) -> int:
        return len(self.image_paths)

    def to_dataset(self):
        """``tf.data.Dataset`` of ``(image uint8 (H, W, 3), {"boxes": (n, 4) xyxy pixels, "labels": (n,)})``.

        With ``segmentations`` the targets also hold ``"masks"`` (n, H, W)
        uint8, decoded per image when it is read (COCO masks of a whole split
        would not fit in memory).
        """
        import tensorflow as tf

        if not self.image_paths:
            raise ValueError("No images to read: the annotations list no usable image.")
        counts = [len(b) for b in self.boxes]
        flat_boxes = np.concatenate([np.reshape(b, (-1, 4)) for b in self.boxes]).astype(np.float32)
        flat_labels = np.concatenate([np.reshape(lab, (-1,)) for lab in self.labels]).astype(np.int32)
        boxes = tf.RaggedTensor.from_row_lengths(flat_boxes, counts)
        labels = tf.RaggedTensor.from_row_lengths(flat_labels, counts)
        relative = self.relative
        segmentations = self.segmentations

        def load(path, boxes, labels, index):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            image = tf.ensure_shape(image, (None, None, 3))
            boxes = tf.reshape(boxes, (-1, 4))
            shape = tf.shape(image)
            if relative:
                size = tf.cast(shape, tf.float32)
                boxes = boxes * tf.stack([size[1], size[0], size[1], size[0]])
            targets = {"boxes": boxes, "labels": labels}
            if segmentations is not None:
                masks = tf.numpy_function(
                    lambda i, h, w, p: _decode_masks(segmentations[int(i)], int(h), int(w), p),
                    [index, shape[0], shape[1], path], tf.uint8, stateful=False)
                targets["masks"] = tf.reshape(masks, tf.stack([-1, shape[0], shape[1]]))
            return image, targets

        indices = np.arange(len(self.image_paths), dtype=np.int64)
        ds = tf.data.Dataset.from_tensor_slices((self.image_paths, boxes, labels, indices))
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _decode_masks(segmentations: list, height: int, width: int, path) -> np.ndarray:
    """One image's segmentations -> (n, height, width) uint8 (runs inside ``tf.numpy_function``)."""
    from kdet.data.segmentation import decode_segmentation

    masks = np.zeros((len(segmentations), height, width), np.uint8)
    for i, segmentation in enumerate(segmentations):
        try:
            masks[i] = decode_segmentation(segmentation, height, width)
        except ValueError as error:  # e.g. the image file is not the size the json says
            name = path.decode() if isinstance(path, bytes) else path
            raise ValueError(f"{name}: mask {i} cannot be decoded at the image size ({height}, {width}): "
                             f"{error}") from None
    return masks


def check_box(problems: Problems, source, box, width=None, height=None):
    """Validates one xyxy box; clips it to the image. Returns the box or None (reported)."""
    box = np.asarray(box, np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        problems.report(source, f"box {box.tolist()} is not 4 finite numbers")
        return None
    if width is not None and height is not None:
        box = np.clip(box, 0, [width, height, width, height])
    if box[2] <= box[0] or box[3] <= box[1]:
        problems.report(source, f"degenerate box {box.tolist()} (xyxy, after clipping to the image); "
                                "expected x2 > x1 and y2 > y1")
        return None
    return box


def finish(image_paths, boxes, labels, class_names, problems, relative=False,
           segmentations=None) -> DetectionRecords:
    """Packs per-image lists into :class:`DetectionRecords` (arrays of the right dtypes)."""
    return DetectionRecords(
        image_paths=[str(p) for p in image_paths],
        boxes=[np.asarray(b, np.float32).reshape(-1, 4) for b in boxes],
        labels=[np.asarray(lab, np.int32).reshape(-1) for lab in labels],
        class_names=list(class_names), problems=list(problems), relative=relative,
        segmentations=None if segmentations is None else [list(s) for s in segmentations],
    )


def image_exists(problems: Problems, source, path: pathlib.Path) -> bool:
    if path.is_file():
        return True
    problems.report(source, f"image file {path} does not exist")
    return False


SPLIT_ALIASES = {"validation": ("val", "validation"), "val": ("val", "validation"), "train": ("train",),
                 "test": ("test",), "trainval": ("trainval",)}


def records_to_dataset(records: DetectionRecords, image_size=None, batch_size: int | None = None,
                       max_boxes: int | None = None, resize_mode: str = "letterbox", shuffle: bool = False,
                       seed: int = 0, augmenter=None, repeat: bool = False):
    """The readers' common tail: the example stream, or padded batches via ``kdet.data.prepare``."""
    from kdet.data.pipeline import DEFAULT_MAX_BOXES, prepare

    ds = records.to_dataset()
    if image_size is None and batch_size is None and not shuffle and augmenter is None and not repeat:
        return ds
    return prepare(ds, image_size=image_size, batch_size=batch_size, max_boxes=max_boxes or DEFAULT_MAX_BOXES,
                   resize_mode=resize_mode, shuffle_buffer=len(records) if shuffle else None, seed=seed,
                   augmenter=augmenter, repeat=repeat)


DATASET_ARGS_DOC = """image_size: int or (height, width): resize (``resize_mode``) every image.
        batch_size: batch with boxes padded to ``max_boxes`` rows (see
            ``kdet.data.prepare``); None yields single examples.
        max_boxes: box rows per image when batching (default 100; truncation reported).
        resize_mode: ``"letterbox"`` or ``"stretch"``.
        shuffle: shuffle the images (seeded by ``seed``) every epoch.
        augmenter: a ``kdet.data.Augmenter`` applied to batches.
        repeat: repeat forever."""
