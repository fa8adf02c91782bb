"""Shared test helpers: a tiny anchor detector, learning checks, round trips."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kdet.backbones.tiny import tiny_backbone
from kdet.heads.dense import dense_head, prior_bias
from kdet.layers.anchor_generator import AnchorGenerator
from kdet.models.single_stage import SingleStageConfig, SingleStageDetector
from kdet.necks.fpn import fpn


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyAnchorConfig(SingleStageConfig):
    num_classes: int = 3
    width: int = 32

    def resolve(self):
        if self.image_size is None and self.fixed_canvas:
            self._set("image_size", (128, 128))


@keras.saving.register_keras_serializable(package="kdet_tests")
class TinyAnchorDetector(SingleStageDetector):
    """The minimal anchor-based detector of the foundation tests: tiny backbone, shared heads on P3-P5.

    A subclass written the way a user adds an architecture: a config class and ``build_network``.
    """

    config_class = TinyAnchorConfig
    classifier_layers = ("cls_pred",)

    def __init__(self, num_classes: int = 3, image_size=None, **settings):
        super().__init__(num_classes=num_classes, image_size=image_size, **settings)

    def build_network(self):
        cfg = self.config
        backbone = tiny_backbone(self.network_input_shape)
        inputs = keras.Input((*self.network_input_shape, 3))
        pyramid = fpn(backbone(inputs), min_level=3, max_level=5, width=cfg.width)
        levels = [pyramid["P3"], pyramid["P4"], pyramid["P5"]]
        anchors = AnchorGenerator(strides=(8, 16, 32), sizes=(16, 32, 64), scales=(1.0, 1.5),
                                  aspect_ratios=(0.5, 1.0, 2.0))
        n = anchors.num_anchors_per_location
        cls = dense_head(levels, n, self.head_classes, depth=2, width=cfg.width, final_bias=prior_bias(0.01),
                         name="cls")
        box = dense_head(levels, n, 4, depth=2, width=cfg.width, name="box")
        return keras.Model(inputs, {"box": box, "cls": cls}, name="network"), anchors


def coco_ap50(y_true: dict, y_pred: dict) -> float:
    """AP@0.5 via pycocotools (the oracle) for padded batch dicts."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import contextlib
    import io

    images, annotations, detections = [], [], []
    cats = sorted({int(c) for c in np.asarray(y_true["labels"]).ravel() if c >= 0})
    for i in range(len(y_true["boxes"])):
        images.append({"id": i})
        for b, lab in zip(y_true["boxes"][i], y_true["labels"][i]):
            if lab < 0:
                continue
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(lab),
                                "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
        for k in range(int(y_pred["num_detections"][i])):
            b = y_pred["boxes"][i][k]
            detections.append({"image_id": i, "category_id": int(y_pred["labels"][i][k]),
                               "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                               "score": float(y_pred["scores"][i][k])})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in cats]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not detections:
            return 0.0
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def fit_one_batch(model, x, y: dict, epochs: int):
    """``model.fit`` on the whole of ``(x, y)`` as one batch, ``epochs`` times (one step an epoch).

    The same training as ``fit(x, y, batch_size=len(x), epochs=epochs)`` (the order of the images inside the
    batch aside), through one dataset iterator: Keras builds a new iterator over array inputs every epoch,
    ~30 ms each on 2 cores, as long as a tiny model's step. ``history`` keeps one entry an epoch.
    """
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensors((x, y)).repeat()
    return model.fit(batches, epochs=epochs, steps_per_epoch=1, verbose=0)
