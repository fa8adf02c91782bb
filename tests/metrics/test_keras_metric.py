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
