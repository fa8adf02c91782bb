"""EfficientDet's automl post-processing against automl's ``postprocess_global``, redone with TF ops.

The oracle follows google/automl ``efficientdet/tf2/postprocess.py`` with its
inference defaults (``hparams_config.py`` ``nms_configs``: method "gaussian",
score_thresh 0 -> 0.001, sigma None -> 0.5, max_nms_inputs 0, max_output_size
100), written here with plain TensorFlow ops on the model's raw head outputs:

* ``pre_nms`` / ``topk_class_boxes``: with ``max_nms_inputs=0`` each anchor
  keeps its best class ("max_reduce"); with ``max_nms_inputs > 0`` (automl's
  eval.py sets ``MAX_DETECTION_POINTS = 5000``) the best (anchor, class)
  pairs over all levels; sigmoid scores; ``anchors.decode_box_outputs``;
* ``nms``: one ``tf.raw_ops.NonMaxSuppressionV5`` per image over all classes,
  iou_thresh 1.0, ``soft_nms_sigma = 0.5 / 2``, 100 outputs;
* ``postprocess_global``: boxes clipped to the image after NMS.

The model post-processes head outputs shaped as its own (i.i.d. values, so
that no candidates tie) for an image of its canvas size, so network and input
pixels coincide and its detections compare directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kdet.models import EfficientDet
from kdet.zoo.automl import AUTOML_POSTPROCESS

SIZE = 128
NUM_CLASSES = 3
# automl hparams_config.py nms_configs through postprocess.nms(): method "gaussian".
AUTOML_SCORE_THRESH, AUTOML_SIGMA, AUTOML_MAX_OUTPUT = 0.001, 0.5, 100


def automl_global(raw_box, raw_cls, anchors_xyxy, max_nms_inputs: int):
    """automl ``postprocess_global`` of one image: (boxes xyxy, scores, classes) of its valid detections."""
    # kdet's head emits (tx, ty, tw, th) per anchor; automl's (ty, tx, th, tw) (kdet/zoo/automl.py).
    codes = tf.gather(tf.constant(raw_box, tf.float32), [1, 0, 3, 2], axis=-1)
    anchors = tf.gather(tf.constant(anchors_xyxy, tf.float32), [1, 0, 3, 2], axis=-1)  # yxyx as automl
    logits = tf.constant(raw_cls, tf.float32)
    if max_nms_inputs > 0:  # topk_class_boxes, max_nms_inputs > 0
        _, flat = tf.math.top_k(tf.reshape(logits, [-1]), k=max_nms_inputs, sorted=False)
        indices, classes = flat // NUM_CLASSES, flat % NUM_CLASSES
        logits = tf.gather_nd(logits, tf.stack([indices, classes], axis=1))
        codes = tf.gather(codes, indices)
        anchors = tf.gather(anchors, indices)
    else:  # topk_class_boxes, "max_reduce"
        classes = tf.math.argmax(logits, axis=-1, output_type=tf.int32)
        logits = tf.reduce_max(logits, axis=-1)
    # anchors.decode_box_outputs
    ycenter_a, xcenter_a = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ty, tx, th, tw = tf.unstack(codes, axis=1)
    w, h = tf.math.exp(tw) * wa, tf.math.exp(th) * ha
    ycenter, xcenter = ty * ha + ycenter_a, tx * wa + xcenter_a
    boxes = tf.stack([ycenter - h / 2, xcenter - w / 2, ycenter + h / 2, xcenter + w / 2], axis=1)
    scores = tf.math.sigmoid(logits)
    top, nms_scores, valid = tf.raw_ops.NonMaxSuppressionV5(
        boxes=boxes, scores=scores, max_output_size=AUTOML_MAX_OUTPUT, iou_threshold=1.0,
        score_threshold=AUTOML_SCORE_THRESH, soft_nms_sigma=AUTOML_SIGMA / 2, pad_to_max_output_size=True)
    n = int(valid)
    nms_boxes = tf.clip_by_value(tf.gather(boxes, top[:n]), 0.0, float(SIZE))  # clip_boxes
    return (tf.gather(nms_boxes, [1, 0, 3, 2], axis=-1).numpy(), nms_scores[:n].numpy(),
            tf.gather(classes, top[:n]).numpy())


def head_outputs(num_anchors: int, seed: int) -> dict:
    """Raw head outputs of one image: i.i.d. logits and box codes, so no two candidates tie.

    (A freshly built tiny EfficientDet's head outputs barely vary over the image: its small head
    kernels leave the prior bias, and its candidates tie exactly, which makes any NMS's order
    arbitrary.)
    """
    rng = np.random.default_rng(seed)
    cls = rng.normal(-6.0, 1.5, (1, num_anchors, NUM_CLASSES))
    # A few anchors confident in every class: their second classes (decayed by exp(-0.5 / 0.25) when
    # the first is selected) still outrank the 100th detection, unless each anchor keeps one class.
    for anchor in rng.choice(num_anchors, 12, replace=False):
        cls[0, anchor] = rng.permutation([4.0, 3.6, 3.2]) + rng.uniform(0, 0.1)  # no ties between anchors
    return {"box": tf.constant(rng.normal(0, 0.3, (1, num_anchors, 4)), tf.float32),
            "cls": tf.constant(cls, tf.float32)}


@pytest.mark.parametrize("max_nms_inputs", [0, 5000], ids=["inference_max_reduce", "eval_top5000_pairs"])
def test_matches_automl_postprocess_global(max_nms_inputs):
    settings = dict(AUTOML_POSTPROCESS)
    if max_nms_inputs:  # automl eval.py: max_nms_inputs = MAX_DETECTION_POINTS, pairs over all levels
        settings.update(top_k_rule="pair", pre_nms_top_k=max_nms_inputs, top_k_per_level=False)
    model = EfficientDet(NUM_CLASSES, backbone="tiny", image_size=SIZE, resize="pad", **settings)
    image = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")
    network_raw = model.raw_outputs(image)
    raw = head_outputs(int(network_raw["cls"].shape[1]), seed=3)
    assert raw["cls"].shape == network_raw["cls"].shape and raw["box"].shape == network_raw["box"].shape
    assert raw["cls"].shape[1] * NUM_CLASSES > 5000  # the top 5000 pairs select
    boxes, scores, classes = automl_global(raw["box"][0], raw["cls"][0], model.anchors, max_nms_inputs)
    # A real test: 100 detections, soft-NMS decayed scores (not simply the 100 best raw scores), and
    # boxes crossing the image border (clipping after NMS, not before, makes those equal).
    best_raw = np.sort(tf.math.sigmoid(raw["cls"]).numpy().ravel())[::-1][:AUTOML_MAX_OUTPUT]
    assert len(scores) == AUTOML_MAX_OUTPUT and not np.allclose(scores, best_raw, atol=1e-3)
    assert (boxes == 0).any() and (boxes == SIZE).any()

    # The image is the canvas size: network pixels are input pixels.
    out = tf.nest.map_structure(np.asarray, model.detections_to_input(
        tf.function(model.postprocess)(raw, model.frame_of(image)), model.frame_of(image)))
    n = int(out["num_detections"][0])
    assert n == len(scores)
    np.testing.assert_array_equal(out["labels"][0, :n], classes)
    np.testing.assert_allclose(out["scores"][0, :n], scores, atol=1e-5)
    np.testing.assert_allclose(out["boxes"][0, :n], boxes, atol=1e-4)
