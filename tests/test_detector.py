"""kdet.Detector through the foundation's minimal anchor detector: the whole chain learns.

anchors -> encoder -> loss -> decoder -> NMS -> metric, plus save/load, XLA,
box formats, detect() and bad input.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.data import synthetic_arrays
from tests.helpers import TinyAnchorDetector, coco_ap50, fit_one_batch

OUTPUT_SHAPES = {"boxes": (100, 4), "scores": (100,), "labels": (100,), "num_detections": ()}


@pytest.fixture(scope="module")
def trained():
    """The tiny detector overfitted on 8 synthetic images (shared by the tests below)."""
    keras.utils.set_random_seed(0)
    x, y = synthetic_arrays(8, 128, seed=0)
    model = TinyAnchorDetector()
    # Memorisation: flips only (the default's scale and colour jitter are for generalising).
    model.compile(evaluate_coco=False, augment="flip")
    history = fit_one_batch(model, x, y, 100)
    return model, x, y, history


def test_learning_overfits_eight_images(trained):
    model, x, y, history = trained
    losses = history.history["loss"]
    assert losses[-1] < 0.25 * losses[0]
    assert {"cls_loss", "box_loss"} <= set(history.history)
    ap50 = coco_ap50(y, model.predict(x, verbose=0))
    assert ap50 >= 0.9, f"AP50 {ap50:.3f} after overfitting 8 images"


def test_output_contract_any_batch_size(trained):
    model, x, _, _ = trained
    for batch in (1, 3):
        out = model.predict(x[:batch], verbose=0)
        assert {k: v.shape[1:] for k, v in out.items()} == OUTPUT_SHAPES
        assert out["labels"].dtype == np.int32 and out["num_detections"].dtype == np.int32
        for i in range(batch):
            n = out["num_detections"][i]
            assert np.all(out["labels"][i, n:] == -1) and np.all(out["labels"][i, :n] >= 0)
            assert np.all(np.diff(out["scores"][i, :n]) <= 1e-6)


def test_xla_predict_matches_eager(trained):
    model, x, _, _ = trained
    eager = model(x[:2], training=False)
    xla = tf.function(lambda images: model(images, training=False), jit_compile=True)(tf.constant(x[:2]))
    np.testing.assert_array_equal(eager["num_detections"], xla["num_detections"])
    n = int(eager["num_detections"][0])
    np.testing.assert_allclose(eager["boxes"][0, :n], xla["boxes"][0, :n], atol=1e-3)


def test_save_load_round_trip(trained, tmp_path):
    model, x, _, _ = trained
    path = tmp_path / "tiny.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    a, b = model.predict(x[:2], verbose=0), restored.predict(x[:2], verbose=0)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


def test_detect_any_size_path_and_grayscale(trained, tmp_path):
    model, x, y, _ = trained
    from PIL import Image

    big = np.asarray(Image.fromarray(x[0]).resize((256, 192)))
    path = tmp_path / "img.png"
    Image.fromarray(big).save(path)
    out = model.detect(str(path), score_threshold=0.3)
    assert set(out) == {"boxes", "scores", "labels"} and len(out["boxes"]) >= 1
    # Boxes come back in the pixels of the 256x192 image: GT scaled by (2, 1.5).
    gt = y["boxes"][0][y["labels"][0] >= 0] * np.array([2, 1.5, 2, 1.5])
    from kdet.ops import iou

    assert float(tf.reduce_max(iou(out["boxes"][:1], gt))) > 0.5
    gray = model.detect(big.mean(axis=-1).astype(np.uint8))
    assert gray["boxes"].shape[1] == 4
    rgba = model.detect(np.concatenate([big, np.full(big.shape[:2] + (1,), 255, np.uint8)], -1))
    assert rgba["boxes"].shape[1] == 4
    # A list of photos of different sizes: one result each, in order, each in its own image's pixels.
    results = model.detect([str(path), x[0]], score_threshold=0.3)
    assert len(results) == 2
    np.testing.assert_allclose(results[0]["boxes"], out["boxes"], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(results[1]["boxes"], model.detect(x[0], score_threshold=0.3)["boxes"], atol=1e-3)


def test_predict_on_other_input_size_rescales_boxes(trained):
    model, x, _, _ = trained
    small = model.predict(x[:1], verbose=0)
    doubled = model.predict(np.repeat(np.repeat(x[:1], 2, axis=1), 2, axis=2), verbose=0)
    n = int(small["num_detections"][0])
    assert n > 0
    np.testing.assert_allclose(doubled["boxes"][0, 0], small["boxes"][0, 0] * 2, atol=3.0)


@pytest.mark.parametrize("fmt", ["xywh", "rel_yxyx", "center_xywh"])
def test_other_box_formats_round_trip(fmt):
    from kdet.ops import convert_format

    x, y = synthetic_arrays(2, 128, seed=5)
    model = TinyAnchorDetector(bounding_box_format=fmt)
    model.compile(evaluate_coco=False)
    y_fmt = dict(y, boxes=convert_format(y["boxes"], "xyxy", fmt, height=128, width=128).numpy())
    targets = model.targets_to_network(y_fmt, model.frame_of(tf.constant(x)))
    valid = y["labels"] >= 0
    np.testing.assert_allclose(targets["boxes"].numpy()[valid], y["boxes"][valid], atol=1e-3)
    loss = model.compute_loss(tf.constant(x), y_fmt, model(x, training=True))
    assert np.isfinite(float(loss))


def test_empty_ground_truth_gives_finite_loss_and_gradients():
    model = TinyAnchorDetector()
    model.compile(evaluate_coco=False)
    x = np.zeros((2, 128, 128, 3), np.uint8)
    y = {"boxes": np.zeros((2, 3, 4), np.float32), "labels": -np.ones((2, 3), np.int32)}
    with tf.GradientTape() as tape:
        loss = model.compute_loss(tf.constant(x), y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in grads if g is not None)


def test_ragged_ground_truth_is_densified():
    model = TinyAnchorDetector()
    model.compile(evaluate_coco=False)
    x = np.zeros((2, 128, 128, 3), np.float32)
    boxes = tf.ragged.constant([[[10.0, 10, 50, 50]], [[0.0, 0, 20, 20], [30, 30, 90, 90]]], ragged_rank=1)
    labels = tf.ragged.constant([[0], [1, 2]])
    loss = model.compute_loss(tf.constant(x), {"boxes": boxes, "labels": labels}, model(x, training=True))
    assert np.isfinite(float(loss))


def test_mixed_precision_trains_and_predicts():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = TinyAnchorDetector()
        model.compile(evaluate_coco=False)
        x, y = synthetic_arrays(4, 128, seed=2)
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        out = model.predict(x, verbose=0)
        assert out["boxes"].dtype == np.float32 and np.all(np.isfinite(out["boxes"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bad_input_messages():
    model = TinyAnchorDetector()
    model.compile(evaluate_coco=False)
    with pytest.raises(ValueError, match="3"):
        model(np.zeros((1, 128, 128, 4), np.float32))
    with pytest.raises(ValueError, match="boxes"):
        model.compute_loss(tf.zeros((1, 128, 128, 3)), {"labels": np.zeros((1, 1))}, None)
    with pytest.raises(ValueError, match="loss="):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="box_loss"):
        model.compile(box_loss="l7")
    with pytest.raises(ValueError, match="num_classes"):
        TinyAnchorDetector(num_classes=0)
    with pytest.raises(ValueError, match="bounding_box_format"):
        TinyAnchorDetector(bounding_box_format="xyzw")
    x, y = synthetic_arrays(2, 128, seed=0)
    bad_labels = dict(y, labels=np.where(y["labels"] >= 0, 7, -1))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.fit(x, bad_labels, epochs=1, verbose=0)
    flipped = dict(y, boxes=y["boxes"][..., [2, 3, 0, 1]])
    with pytest.raises(ValueError, match="degenerate"):
        model.fit(x, flipped, epochs=1, verbose=0)
    nan = dict(y, boxes=np.where(y["labels"][..., None] >= 0, np.nan, y["boxes"]).astype(np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.fit(x, nan, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="RGB"):
        model.fit(x[..., :1], y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="empty batch"):
        model.fit(x[:0], y, epochs=1, verbose=0)
    with pytest.raises(FileNotFoundError):
        model.detect("/nonexistent/image.jpg")
    with pytest.raises(ValueError, match="empty batch"):
        model.predict(np.zeros((0, 128, 128, 3), np.uint8), verbose=0)
    with pytest.raises(ValueError, match="empty batch"):
        model.predict(tf.data.Dataset.from_tensor_slices(np.zeros((0, 128, 128, 3), np.float32)).batch(2), verbose=0)


def test_evaluate_reports_coco_map_and_compile_after_load(trained, tmp_path):
    model, x, y, _ = trained
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    restored.compile()  # evaluate_coco=True on an already-built, loaded model
    history = restored.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert "coco_map" not in history.history
    results = restored.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    from kdet.metrics import coco_map

    expected = coco_map(y, restored.predict(x, verbose=0))["AP"]
    assert abs(results["coco_map"] - expected) < 1e-6 and expected > 0.5
    assert {"loss", "cls_loss", "box_loss"} <= set(results)


def test_compile_augmentation_presets():
    from kdet.data.augment import Augmenter
    from kdet.detector import AUGMENT_PRESETS, DEFAULT_AUGMENT

    model = TinyAnchorDetector()
    model.compile(evaluate_coco=False)
    assert DEFAULT_AUGMENT == "standard" and isinstance(model._augmenter, Augmenter)
    zoom = [layer for _, layer in model._augmenter._geometric if isinstance(layer, keras.layers.RandomZoom)]
    assert len(zoom) == 1 and len(model._augmenter._colour) == 4  # scale jitter and colour jitter
    model.compile(evaluate_coco=False, augment="flip")
    assert len(model._augmenter._geometric) == 1 and not model._augmenter._colour
    model.compile(evaluate_coco=False, augment=None)
    assert model._augmenter is None
    with pytest.raises(ValueError, match="augment must be one of"):
        model.compile(augment="mosaic")
    # The default keeps every box on its pixels (Augmenter's box-exact checks live in tests/data).
    x, y = synthetic_arrays(4, 64, seed=3)
    images, targets = Augmenter(**AUGMENT_PRESETS["standard"])(x, y)
    assert images.shape == x.shape and targets["boxes"].shape == y["boxes"].shape


@pytest.mark.parametrize("call", ["fit", "train_on_batch"])
def test_training_step_is_traced_once(call):
    """The optimizer is built before the step is traced: a first trace that created its variables made
    TensorFlow trace the whole step a second time (twice the start-up of every first fit)."""
    x, y = synthetic_arrays(4, 128, seed=0)
    model = TinyAnchorDetector()
    model.compile(evaluate_coco=False, augment=None)
    traces, step = [], model.train_step

    def counted_step(data):  # Python runs only while TensorFlow traces
        traces.append(1)
        return step(data)

    model.train_step = counted_step
    for _ in range(2):
        if call == "fit":
            model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        else:
            model.train_on_batch(x, y)
    assert model.optimizer.built and len(traces) == 1, len(traces)
