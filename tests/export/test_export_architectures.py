"""Every architecture's tiny configuration exports to SavedModel and LiteRT (builtin ops) with parity.

Each uses another resize rule and serves non-square 96 x 160 images, so the exported graphs hold the
resizing ("min_max": the canvas of that size, 128 x 192; "letterbox", "pad", "stretch": the fixed canvas)
and boxes come back in the served images' pixels. Weights are random, so scores nearly tie and the order
of detections may differ between runtimes: detections are compared as sets (each of the Keras top
detections must be found at IoU >= 0.9 with the same label).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdet
from kdet.data import synthetic_arrays
from kdet.export import litert_operators, run_litert
from kdet.ops import iou

BUILDERS = {
    "retinanet": lambda: kdet.models.RetinaNet(3, backbone="tiny", resize="min_max", min_size=128, max_size=192),
    "efficientdet": lambda: kdet.models.EfficientDet(3, backbone="tiny", image_size=128, resize="pad"),
    "ssd": lambda: kdet.models.SSD(3, backbone="tiny", image_size=128, resize="stretch"),
    "yolov3": lambda: kdet.models.YOLOV3(3, backbone="tiny", image_size=128, resize="letterbox"),
    "faster_rcnn": lambda: kdet.models.FasterRCNN(3, backbone="tiny", image_size=128, resize="stretch"),
    "fcos": lambda: _random_fcos(),
    "mask_rcnn": lambda: kdet.models.MaskRCNN(3, backbone="tiny", image_size=128),
}
# The mobile detectors' layers (MobileNetV3-Large, SSDLite heads, the MobileNetV3 FPN) at 128 px: slow
# (MobileNetV3 conversion), so `make test-all`; the full-size entries: benchmarks/mobile_export.py.
MOBILE = {
    "ssdlite_mobilenet_v3": lambda: kdet.models.SSD(3, backbone="mobilenet_v3_large", image_size=128,
                                                    head_block="depthwise_bn"),
    "faster_rcnn_mobilenet_v3": lambda: kdet.models.FasterRCNN(3, backbone="mobilenet_v3_large", image_size=128),
}
BUILDERS.update(MOBILE)
SERVED = (96, 160)  # the exported models' input: non-square photos


def _spread_scores(model) -> None:
    """Random classifier weights: fresh heads score every anchor alike (focal prior 0.01, Lin et al. 2017),
    and tied scores have no runtime-independent order. Spread them so the top detections are well defined."""
    from kdet.zoo.converters import weighted_layers_by_name

    rng = np.random.default_rng(0)
    layers = weighted_layers_by_name(model)
    for name in model.classifier_layers:
        layer = layers[name]
        layer.set_weights([rng.normal(0.0, 0.3 if w.ndim == 1 else 0.05, w.shape).astype(np.float32)
                           for w in layer.get_weights()])


def _random_fcos():
    """A tiny FCOS whose random detections can be compared: scores above the bar, boxes with an area."""
    # Random FCOS scores are about sqrt(0.01 * 0.5) = 0.07: below the default 0.2, so lower the bar. Its
    # ReLU distances start near 0 (zero-area boxes, which no IoU matches): 2 strides on every side instead.
    model = kdet.models.FCOS(3, backbone="tiny", image_size=128, score_threshold=0.01)
    layer = model.network.get_layer("bbox_reg")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + 2.0])
    return model


def _matched_fraction(expected, got, k=10):
    fractions = []
    for i in range(len(expected["num_detections"])):
        n = min(int(expected["num_detections"][i]), k)
        if n == 0:
            fractions.append(1.0 if int(got["num_detections"][i]) == 0 else 0.0)
            continue
        m = int(got["num_detections"][i])
        eb, el = np.asarray(expected["boxes"][i][:n]), np.asarray(expected["labels"][i][:n])
        gb, gl = np.asarray(got["boxes"][i][:m]), np.asarray(got["labels"][i][:m])
        if m == 0:
            fractions.append(0.0)
            continue
        overlaps = iou(eb, gb).numpy()
        hits = [(overlaps[j] >= 0.9) & (gl == el[j]) for j in range(n)]
        fractions.append(float(np.mean([h.any() for h in hits])))
    return min(fractions)


def _mask_difference(expected, got, k=10):
    """Largest |mask probability| difference over the top-k Keras detections and their matches (same label)."""
    worst = 0.0
    for i in range(len(expected["num_detections"])):
        n, m = min(int(expected["num_detections"][i]), k), int(got["num_detections"][i])
        overlaps = iou(np.asarray(expected["boxes"][i][:n]), np.asarray(got["boxes"][i][:m])).numpy()
        for j in range(n):
            hits = np.nonzero((overlaps[j] >= 0.9) & (np.asarray(got["labels"][i][:m]) == expected["labels"][i][j]))[0]
            if len(hits):
                best = hits[np.argmax(overlaps[j][hits])]
                worst = max(worst, float(np.abs(got["masks"][i][best] - expected["masks"][i][j]).max()))
    return worst


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in MOBILE else a
                                  for a in sorted(BUILDERS)])
def test_tiny_architecture_exports(arch, tmp_path):
    keras.utils.set_random_seed(0)
    model = BUILDERS[arch]()
    _spread_scores(model)
    x, _ = synthetic_arrays(2, 160, seed=4)
    x = x[:, 32:128].astype(np.float32)  # 96 x 160
    expected = model.predict(x, verbose=0)
    assert int(expected["num_detections"].min()) > 0
    assert expected["boxes"][..., 2].max() <= SERVED[1] and expected["boxes"][..., 3].max() <= SERVED[0]

    sm_dir = model.export(tmp_path / "sm", format="tf_saved_model", image_size=SERVED)
    served = tf.saved_model.load(str(sm_dir)).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_array_equal(served["num_detections"].numpy(), expected["num_detections"])
    assert _matched_fraction(expected, {k: v.numpy() for k, v in served.items()}) >= 0.9

    path = kdet.export.litert(model, tmp_path / f"{arch}.tflite", saved_model_dir=sm_dir, image_size=SERVED)
    assert not any(op.startswith("CUSTOM") for op in litert_operators(path))
    got = run_litert(path, x)
    assert {"boxes", "scores", "labels", "num_detections"} <= set(got)
    assert _matched_fraction(expected, got) >= 0.9
    if "masks" in expected:  # instance segmentation: the 28x28 masks are in both signatures
        assert got["masks"].shape == expected["masks"].shape == served["masks"].shape
        assert _mask_difference(expected, {k: v.numpy() for k, v in served.items()}) <= 1e-4
        assert _mask_difference(expected, got) <= 1e-3


def test_min_max_export_needs_the_served_size(tmp_path):
    model = BUILDERS["retinanet"]()
    for export in (lambda: model.export(tmp_path / "sm", format="tf_saved_model"),
                   lambda: kdet.export.litert(model, tmp_path / "m.tflite")):
        with pytest.raises(ValueError, match=r"resize='min_max' .* [Pp]ass image_size=\(height, width\)"):
            export()


def test_pretrained_mtcnn_exports_with_landmarks(tmp_path, shared_dir):
    from PIL import Image

    model = kdet.load("mtcnn")
    size = (192, 192)  # MTCNN is fully convolutional: the export fixes the input size
    image = Image.open(shared_dir / "data" / "images" / "ivan.jpg").convert("RGB").resize(size[::-1])
    x = np.asarray(image, np.float32)[None]
    expected = model.predict(x, verbose=0)
    assert int(expected["num_detections"][0]) >= 1

    sm_dir = model.export(tmp_path / "sm", format="tf_saved_model", image_size=size)
    served = tf.saved_model.load(str(sm_dir)).signatures["serving_default"](images=tf.constant(x))
    path = kdet.export.litert(model, tmp_path / "mtcnn.tflite", saved_model_dir=sm_dir, image_size=size)
    assert not any(op.startswith("CUSTOM") for op in litert_operators(path))
    got = run_litert(path, x)
    n = int(expected["num_detections"][0])
    for out in ({k: v.numpy() for k, v in served.items()}, got):
        assert int(out["num_detections"][0]) == n
        np.testing.assert_allclose(out["boxes"][0, :n], expected["boxes"][0, :n], atol=0.5)
        np.testing.assert_allclose(out["scores"][0, :n], expected["scores"][0, :n], atol=1e-3)
        np.testing.assert_allclose(out["landmarks"][0, :n], expected["landmarks"][0, :n], atol=0.5)
