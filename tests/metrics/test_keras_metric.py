"""COCOMeanAveragePrecision / COCOEvaluationCallback against kdet.metrics.coco_map."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.metrics import COCOEvaluationCallback, COCOMeanAveragePrecision, coco_map, evaluate_coco


def _batch(rng, b=3, m=5, k=8, classes=3):
    """A padded GT batch and a detector output dict (jittered GT + noise)."""
    xy = rng.uniform(0, 100, (b, m, 2))
    gt = np.concatenate([xy, xy + rng.uniform(4, 80, (b, m, 2))], -1).astype(np.float32)
    labels = rng.integers(0, classes, (b, m)).astype(np.int32)
    labels[rng.random((b, m)) < 0.3] = -1
    src = rng.integers(0, m, (b, k))
    boxes = (np.take_along_axis(gt, src[..., None], 1) + rng.normal(0, 4, (b, k, 4))).astype(np.float32)
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2])
    det_labels = np.where(rng.random((b, k)) < 0.8, np.maximum(np.take_along_axis(labels, src, 1), 0),
                          rng.integers(0, classes, (b, k))).astype(np.int32)
    num = rng.integers(0, k + 1, b).astype(np.int32)
    det_labels[np.arange(k)[None] >= num[:, None]] = -1
    y_true = {"boxes": gt, "labels": labels}
    y_pred = {"boxes": boxes, "scores": rng.random((b, k)).astype(np.float32), "labels": det_labels,
              "num_detections": num}
    return y_true, y_pred


def _concat(batches):
    """Per-image lists over all batches, for a single coco_map call."""
    gt = {"boxes": [], "labels": []}
    dt = {"boxes": [], "scores": [], "labels": []}
    for y_true, y_pred in batches:
        for i in range(len(y_true["labels"])):
            keep = y_true["labels"][i] >= 0
            gt["boxes"].append(y_true["boxes"][i][keep]), gt["labels"].append(y_true["labels"][i][keep])
            n = y_pred["num_detections"][i]
            for key in dt:
                dt[key].append(y_pred[key][i][:n])
    return gt, dt


def test_eager_and_traced_updates_match_coco_map():
    rng = np.random.default_rng(0)
    batches = [_batch(rng) for _ in range(4)]
    want = coco_map(*_concat(batches))
    assert 0 < want["AP"] < 1
    eager = COCOMeanAveragePrecision(return_dict=True)
    traced = COCOMeanAveragePrecision()

    @tf.function
    def step(y_true, y_pred):
        traced.update_state(y_true, y_pred)
        return traced.result()

    for y_true, y_pred in batches:
        eager.update_state(y_true, y_pred)
        ragged = {"boxes": tf.RaggedTensor.from_tensor(y_true["boxes"], lengths=[5] * 3),
                  "labels": tf.RaggedTensor.from_tensor(y_true["labels"], lengths=[5] * 3)}
        in_graph = step(ragged, {k: tf.constant(v) for k, v in y_pred.items()})
    # Traced result() returns the last evaluation (none yet: -1) instead of
    # re-evaluating everything at every batch.
    assert float(in_graph) == -1.0
    got = eager.result()
    assert set(got) == set(want)
    for key in want:
        assert float(got[key]) == pytest.approx(want[key], abs=1e-6)
    assert float(traced.result()) == pytest.approx(want["AP"], abs=1e-6)
    # Once evaluated eagerly, traced calls return that value.
    assert float(tf.function(traced.result)()) == pytest.approx(want["AP"], abs=1e-6)
    traced.reset_state()
    assert float(traced.result()) == -1.0


def test_compute_in_graph_and_config_round_trip():
    rng = np.random.default_rng(1)
    y_true, y_pred = _batch(rng)
    metric = COCOMeanAveragePrecision(bounding_box_format="xyxy", compute_in_graph=True, name="map")
    fn = tf.function(lambda yt, yp: (metric.update_state(yt, yp), metric.result())[1])
    assert float(fn(y_true, y_pred)) == pytest.approx(coco_map(y_true, y_pred)["AP"], abs=1e-6)
    clone = COCOMeanAveragePrecision.from_config(metric.get_config())
    assert clone.name == "map" and clone.compute_in_graph and clone.max_detections == (1, 10, 100)
    with pytest.raises(ValueError, match="keys"):
        metric.update_state({"boxes": y_true["boxes"]}, y_pred)
    with pytest.raises(ValueError, match="bounding_box_format"):
        COCOMeanAveragePrecision(bounding_box_format="bad")


class EchoDetector(keras.Model):
    """Its "images" are the detections themselves: (B, K, 6) = box, score, label."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.coco = COCOMeanAveragePrecision()
        self.scale = keras.layers.Rescaling(1.0)

    def call(self, x, training=False):
        x = self.scale(x)
        labels = tf.cast(x[..., 5], tf.int32)
        return {"boxes": x[..., :4], "scores": x[..., 4], "labels": labels,
                "num_detections": tf.reduce_sum(tf.cast(labels >= 0, tf.int32), -1)}

    def test_step(self, data):
        x, y = data
        self.coco.update_state(y, self(x))
        return {self.coco.name: self.coco.result()}

    @property
    def metrics(self):
        return [self.coco]


def _echo_dataset(batches):
    def pack(y_pred):
        valid = np.arange(y_pred["labels"].shape[1])[None] < y_pred["num_detections"][:, None]
        labels = np.where(valid, y_pred["labels"], -1)
        return np.concatenate([y_pred["boxes"], y_pred["scores"][..., None], labels[..., None]], -1)
    x = np.concatenate([pack(p) for _, p in batches]).astype(np.float32)
    y = {k: np.concatenate([t[k] for t, _ in batches]) for k in ("boxes", "labels")}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(3)


def test_model_evaluate_and_callback_report_coco_map():
    rng = np.random.default_rng(2)
    batches = [_batch(rng) for _ in range(3)]
    want = coco_map(*_concat(batches))
    model = EchoDetector()
    model.compile(jit_compile=False)
    ds = _echo_dataset(batches)
    for _ in range(2):  # the second run must not see the first run's batches
        logs = model.evaluate(ds, return_dict=True, verbose=0)
        assert logs["coco_map"] == pytest.approx(want["AP"], abs=1e-6)
    assert evaluate_coco(model, ds) == pytest.approx(want, abs=1e-6)
    callback = COCOEvaluationCallback(ds, keys=("AP", "AP50"), frequency=2)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs == {}
    callback.on_epoch_end(1, logs)
    assert logs == pytest.approx({"val_AP": want["AP"], "val_AP50": want["AP50"]}, abs=1e-6)
    with pytest.raises(ValueError, match="keys"):
        COCOEvaluationCallback(ds, keys=("mAP",))


# ------------------------------------------------------------------ masks
SIZE = 120


def _mask_batch(rng, b=3, m=4, k=6):
    """A padded GT batch with masks and detections with 28 x 28 probability grids (a detector's output)."""
    y_true, y_pred = _batch(rng, b, m, k)
    y_true["boxes"] = np.clip(np.round(y_true["boxes"] * 0.6), 0, SIZE).astype(np.float32)
    y_true["boxes"][..., 2:] = np.maximum(y_true["boxes"][..., 2:], y_true["boxes"][..., :2] + 2)
    masks = np.zeros((b, m, SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(b):
        for j, (x1, y1, x2, y2) in enumerate(y_true["boxes"][i].astype(int)):
            # ellipses inscribed in the boxes, some touching the image border
            masks[i, j] = (((xx + 0.5 - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2
                           + ((yy + 0.5 - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 <= 1)
    y_true["masks"] = masks
    y_pred["boxes"] = np.clip(y_pred["boxes"] * 0.6, 0, SIZE).astype(np.float32)
    grid = np.mgrid[0:28, 0:28] / 27.0 - 0.5
    disc = ((grid ** 2).sum(0) <= 0.25).astype(np.float32)
    y_pred["masks"] = np.clip(disc + rng.normal(0, 0.2, (b, k, 28, 28)), 0, 1).astype(np.float32)
    return y_true, y_pred


def _concat_masks(batches):
    gt, dt = _concat(batches)
    gt["masks"], dt["masks"] = [], []
    for y_true, y_pred in batches:
        for i in range(len(y_true["labels"])):
            gt["masks"].append(y_true["masks"][i][y_true["labels"][i] >= 0])
            dt["masks"].append(y_pred["masks"][i][: y_pred["num_detections"][i]])
    return gt, dt


def test_masks_are_evaluated_as_mask_ap_eagerly_and_traced():
    rng = np.random.default_rng(4)
    batches = [_mask_batch(rng) for _ in range(3)]
    want_box = coco_map(*_concat_masks(batches))
    want_mask = coco_map(*_concat_masks(batches), iou_type="segm")
    assert 0 < want_mask["AP"] < 1 and want_mask["AP"] != want_box["AP"]
    eager = COCOMeanAveragePrecision(return_dict=True)
    traced = COCOMeanAveragePrecision()
    boxes_only = COCOMeanAveragePrecision(masks=False)

    @tf.function
    def step(y_true, y_pred):
        traced.update_state(y_true, y_pred)
        boxes_only.update_state(y_true, y_pred)
        return traced.result()

    for y_true, y_pred in batches:
        eager.update_state(y_true, y_pred)
        in_graph = step({k: tf.constant(v) for k, v in y_true.items()}, {k: tf.constant(v) for k, v in y_pred.items()})
    assert set(in_graph) == {"coco_map", "mask_AP"}  # the traced graph reports both
    got = eager.result()
    assert set(got) == set(want_box) | {"mask_" + k for k in want_mask}
    for key in want_box:
        assert float(got[key]) == pytest.approx(want_box[key], abs=1e-6)
        assert float(got["mask_" + key]) == pytest.approx(want_mask[key], abs=1e-6)
    result = traced.result()
    assert float(result["coco_map"]) == pytest.approx(want_box["AP"], abs=1e-6)
    assert float(result["mask_AP"]) == pytest.approx(want_mask["AP"], abs=1e-6)
    assert float(boxes_only.result()) == pytest.approx(want_box["AP"], abs=1e-6)
    assert COCOMeanAveragePrecision.from_config(traced.get_config()).masks is None
    with pytest.raises(ValueError, match="masks must be None"):
        COCOMeanAveragePrecision(masks="yes")
    with pytest.raises(ValueError, match="y_true has no 'masks'"):
        COCOMeanAveragePrecision(masks=True).update_state(*_batch(rng))


class EchoMaskDetector(keras.Model):
    """Echoes detections (B, K, 6) and mask grids (B, K, 28, 28) given as its two inputs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.coco = COCOMeanAveragePrecision()

    def call(self, inputs, training=False):
        x, grids = inputs
        labels = tf.cast(x[..., 5], tf.int32)
        return {"boxes": x[..., :4], "scores": x[..., 4], "labels": labels, "masks": grids,
                "num_detections": tf.reduce_sum(tf.cast(labels >= 0, tf.int32), -1)}

    def test_step(self, data):
        x, y = data
        self.coco.update_state(y, self(x))
        return self.get_metrics_result()

    @property
    def metrics(self):
        return [self.coco]


def test_model_evaluate_and_callback_report_mask_ap():
    rng = np.random.default_rng(6)
    batches = [_mask_batch(rng) for _ in range(2)]
    want_box = coco_map(*_concat_masks(batches))
    want_mask = coco_map(*_concat_masks(batches), iou_type="segm")
    x = np.concatenate([np.concatenate([p["boxes"], p["scores"][..., None],
                                        np.where(np.arange(6)[None] < p["num_detections"][:, None], p["labels"], -1)
                                        [..., None]], -1) for _, p in batches]).astype(np.float32)
    grids = np.concatenate([p["masks"] for _, p in batches])
    y = {k: np.concatenate([t[k] for t, _ in batches]) for k in ("boxes", "labels", "masks")}
    ds = tf.data.Dataset.from_tensor_slices(((x, grids), y)).batch(3)
    model = EchoMaskDetector()
    model.compile(jit_compile=False)
    logs = model.evaluate(ds, return_dict=True, verbose=0)
    assert logs["coco_map"] == pytest.approx(want_box["AP"], abs=1e-6)
    assert logs["mask_AP"] == pytest.approx(want_mask["AP"], abs=1e-6)
    results = evaluate_coco(model, ds)
    assert results["mask_AP50"] == pytest.approx(want_mask["AP50"], abs=1e-6)
    callback = COCOEvaluationCallback(ds, keys=("AP", "mask_AP"))
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs == pytest.approx({"val_AP": want_box["AP"], "val_mask_AP": want_mask["AP"]}, abs=1e-6)
