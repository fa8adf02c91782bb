"""Export of the foundation detector: SavedModel and LiteRT parity, builtin ops only."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdet
from kdet.data import synthetic_arrays
from kdet.export import litert_operators, run_litert
from tests.helpers import TinyAnchorDetector


@pytest.fixture(scope="module")
def model_and_images():
    keras.utils.set_random_seed(1)
    x, y = synthetic_arrays(8, 128, seed=0)
    model = TinyAnchorDetector()
    model.compile(evaluate_coco=False, augment=None)  # a memorisation fixture: no flips
    model.fit(x, y, batch_size=8, epochs=40, verbose=0)
    return model, x


def _top(out, i, k=10):
    n = min(int(out["num_detections"][i]), k)
    return np.asarray(out["boxes"][i][:n]), np.asarray(out["labels"][i][:n])


def test_saved_model_parity(model_and_images, tmp_path):
    model, x = model_and_images
    model.export(tmp_path / "sm", format="tf_saved_model")
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    expected = model.predict(x[:3], verbose=0)
    got = reloaded.signatures["serving_default"](images=tf.constant(x[:3], tf.float32))
    got_u8 = reloaded.serve_uint8(tf.constant(x[:3]))
    for key in ("boxes", "scores", "labels", "num_detections"):
        np.testing.assert_allclose(got[key].numpy(), expected[key], atol=1e-4)
        np.testing.assert_allclose(got_u8[key].numpy(), expected[key], atol=1e-4)


def test_litert_builtin_only_and_parity(model_and_images, tmp_path):
    model, x = model_and_images
    path = model.export(tmp_path / "tiny.tflite", format="litert")
    ops = litert_operators(path)
    assert not any(op.startswith("CUSTOM") for op in ops), ops
    expected = model.predict(x[:2], verbose=0)
    got = run_litert(path, x[:2].astype(np.float32))
    assert set(got) >= {"boxes", "scores", "labels", "num_detections"}
    for i in range(2):
        n = int(expected["num_detections"][i])
        assert int(got["num_detections"][i]) == n
        np.testing.assert_allclose(got["boxes"][i, :n], expected["boxes"][i, :n], atol=128 * 1e-3)
        np.testing.assert_array_equal(got["labels"][i, :n], expected["labels"][i, :n])


def test_litert_of_a_bfloat16_model_exports_its_float32_network(model_and_images, tmp_path):
    """LiteRT has no bfloat16 kernels (its converter refuses a bfloat16 Conv2D): a bfloat16 model, what
    ``kdet.load`` gives where bfloat16 is native, exports the same weights' float32 network."""
    model, x = model_and_images
    fast = model.with_settings(precision="bfloat16")
    got = run_litert(fast.export(tmp_path / "bf16.tflite", format="litert"), x[:2].astype(np.float32))
    expected = model.predict(x[:2], verbose=0)  # the float32 model
    assert fast.config.precision == "bfloat16"
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    for i in range(2):
        n = int(expected["num_detections"][i])
        np.testing.assert_allclose(got["scores"][i, :n], expected["scores"][i, :n], atol=1e-4)
        np.testing.assert_allclose(got["boxes"][i, :n], expected["boxes"][i, :n], atol=128 * 1e-3)


@pytest.mark.parametrize("quantization", ["float16", "dynamic_int8"])
def test_quantized_litert_keeps_top_detections(model_and_images, tmp_path, quantization):
    model, x = model_and_images
    path = kdet.export.litert(model, tmp_path / f"{quantization}.tflite", quantization=quantization)
    expected = model.predict(x[:2], verbose=0)
    got = run_litert(path, x[:2].astype(np.float32))
    for i in range(2):
        eb, el = _top(expected, i, 3)
        gb, gl = _top(got, i, 3)
        from kdet.ops import iou

        for box, label in zip(eb, el):
            ious = iou(box[None], gb).numpy()[0] if len(gb) else np.zeros(0)
            assert len(ious) and ious.max() >= 0.9 and gl[int(ious.argmax())] == label


def test_export_errors(model_and_images, tmp_path):
    model, _ = model_and_images
    with pytest.raises(ValueError, match="format"):
        model.export(tmp_path / "x", format="onnx2")
    with pytest.raises(ValueError, match="representative_data"):
        kdet.export.litert(model, tmp_path / "x.tflite", quantization="int8")
