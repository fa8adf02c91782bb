"""Darknet converter: parity with OpenCV's Darknet importer on random weights, and bad inputs."""

from __future__ import annotations

import pathlib
import types

import numpy as np
import pytest

from kdet.zoo import darknet as dk
from tests.zoo.helpers import opencv_yolo_raw


def write_random_weights(cfg: pathlib.Path, path: pathlib.Path, seed: int = 0, minor: int = 2,
                         predictor_bias: float = 0.0) -> int:
    """Writes a Darknet .weights file with random values for ``cfg``; returns the float count.

    Values keep activations O(1) through 75 layers: kernels ~ N(0, 1 / fan_in),
    BN gamma and variance in [0.5, 1.5], small beta and mean. ``predictor_bias``
    shifts the biases of the convolutions without batch norm (the ones before
    each ``[yolo]`` layer): at 0 about every anchor scores ~0.25 (dense scores);
    a negative value leaves few candidates, as a trained model does.
    """
    specs = dk.conv_specs(dk.parse_cfg(cfg))
    rng = np.random.default_rng(seed)
    seen = np.array([0], np.int64 if minor >= 2 else np.int32).tobytes()
    parts = [np.array([0, minor, 0], np.int32).tobytes(), seen]
    count = 0
    for spec in specs:
        n, fan_in = spec["filters"], spec["in_channels"] * spec["size"] ** 2
        arrays = ([rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)]
                  if spec["batch_normalize"] else [rng.normal(predictor_bias, 0.1, n)])
        arrays.append(rng.normal(0, 1 / np.sqrt(fan_in), n * fan_in))
        for a in arrays:
            parts.append(a.astype(np.float32).tobytes())
            count += a.size
    path.write_bytes(b"".join(parts))
    return count


def opencv_and_kdet_raw(cfg: pathlib.Path, weights: pathlib.Path, image: pathlib.Path, size: int):
    """Raw head outputs (before decoding) of OpenCV's importer and of the converted kdet model."""
    cv2 = pytest.importorskip("cv2")
    bgr = cv2.resize(cv2.imread(str(image)), (size, size))
    blob = cv2.dnn.blobFromImage(bgr, 1 / 255.0, (size, size), swapRB=True, crop=False)
    outputs = opencv_yolo_raw(cfg, weights, blob)
    model = dk.convert_darknet(cfg, weights, image_size=size)
    raw = model.raw_outputs(bgr[None, :, :, ::-1].copy())
    ours = np.concatenate([raw["box"], raw["obj"], raw["cls"]], axis=-1)[0]
    # OpenCV: NCHW per level, channels (anchor, 5 + C); kdet: finest level first, (row, col, anchor).
    reference = np.concatenate([o[0].transpose(1, 2, 0).reshape(-1, ours.shape[-1]) for o in outputs[::-1]])
    return ours, reference, model


def _check_parity(shared_dir, tmp_path, cfg_name, size):
    data = shared_dir / "data" / "darknet"
    weights = tmp_path / "random.weights"
    write_random_weights(data / cfg_name, weights)
    ours, reference, model = opencv_and_kdet_raw(data / cfg_name, weights, data / "dog.jpg", size)
    assert ours.shape == reference.shape == (len(model.anchors), 85)
    scale = np.abs(reference).max()
    assert scale > 0.1  # the random network is not degenerate
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * scale)
    return model


def test_yolov3_tiny_matches_opencv(shared_dir, tmp_path):
    model = _check_parity(shared_dir, tmp_path, "yolov3-tiny.cfg", 416)
    assert model.network.count_params() == 8_858_734  # = floats in the official yolov3-tiny.weights


def test_yolov3_matches_opencv(shared_dir, tmp_path):
    # Full Darknet-53 YOLOv3 at 320 px (~30 s on two cores).
    model = _check_parity(shared_dir, tmp_path, "yolov3.cfg", 320)
    assert model.network.count_params() == 62_001_757  # = floats in the official yolov3.weights


def test_detections_after_conversion_are_consistent(shared_dir, tmp_path):
    """End to end on converted weights: detections equal a NumPy decode of the raw outputs."""
    data = shared_dir / "data" / "darknet"
    weights = tmp_path / "tiny.weights"
    write_random_weights(data / "yolov3-tiny.cfg", weights, seed=1)
    model = dk.convert_darknet(data / "yolov3-tiny.cfg", weights, image_size=416)
    assert list(model.class_names[:2]) == ["person", "bicycle"]
    image = np.random.default_rng(0).integers(0, 255, (1, 416, 416, 3)).astype(np.uint8)
    raw = {k: v.numpy() for k, v in model.raw_outputs(image).items()}
    scores = 1 / (1 + np.exp(-raw["obj"])) / (1 + np.exp(-raw["cls"]))
    out = model.predict(image, verbose=0)
    assert out["num_detections"][0] > 0
    assert np.isclose(out["scores"][0, 0], scores.max(), rtol=1e-5)
    a = int(np.argmax(scores.max(-1)[0]))
    stride, anchor = model.anchor_strides[a], model.anchors[a]
    cx = (1 / (1 + np.exp(-raw["box"][0, a, 0])) + (anchor[0] + anchor[2]) / 2 / stride) * stride
    w = np.exp(raw["box"][0, a, 2]) * (anchor[2] - anchor[0])
    np.testing.assert_allclose(out["boxes"][0, 0, [0, 2]], np.clip([cx - w / 2, cx + w / 2], 0, 416), rtol=1e-4)


def test_wrong_length_weights_file_is_refused_and_nothing_loaded(shared_dir, tmp_path):
    from kdet.models.yolov3 import YOLOV3

    cfg = shared_dir / "data" / "darknet" / "yolov3-tiny.cfg"
    weights = tmp_path / "tiny.weights"
    count = write_random_weights(cfg, weights, minor=1)  # minor 1: 4-byte "seen" header
    assert count == 8_858_734
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(weights.read_bytes()[:-400])
    model = YOLOV3(80, backbone="darknet_tiny", image_size=416)
    before = [w.numpy().copy() for w in model.network.weights]
    with pytest.raises(ValueError, match=r"holds 8858634 float32 weights.*needs 8858734"):
        dk.load_darknet_weights(model, truncated, cfg)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.network.weights))
    dk.load_darknet_weights(model, weights, cfg)  # the 16-byte header variant loads
    assert not np.array_equal(before[0], model.network.weights[0].numpy())


def test_load_through_a_zoo_entry_uses_the_packaged_cfg(shared_dir, tmp_path):
    from kdet.models.yolov3 import YOLOV3

    weights = tmp_path / "tiny.weights"
    write_random_weights(shared_dir / "data" / "darknet" / "yolov3-tiny.cfg", weights)
    entry = types.SimpleNamespace(weights=types.SimpleNamespace(options={"cfg": "assets/darknet/yolov3-tiny.cfg"}))
    model = YOLOV3(80, backbone="darknet_tiny", image_size=416)
    dk.load_darknet_weights(model, weights, entry)
    reference = dk.convert_darknet(shared_dir / "data" / "darknet" / "yolov3-tiny.cfg", weights)
    for a, b in zip(model.network.weights, reference.network.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_unsupported_layer_names_type_and_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\nwidth=416\nheight=416\n\n[convolutional]\nfilters=8\nsize=3\n\n[reorg]\nstride=2\n")
    with pytest.raises(ValueError, match=r"line 9: unsupported Darknet layer \[reorg\] \(layer 1\)"):
        dk.parse_cfg(cfg)


def test_other_topologies_and_mismatches_are_refused(shared_dir, tmp_path):
    from kdet.models.yolov3 import YOLOV3

    data = shared_dir / "data" / "darknet"
    text = (data / "yolov3-tiny.cfg").read_text().replace("layers = -1, 8", "layers = -1, 6")
    altered = tmp_path / "altered.cfg"
    altered.write_text(text)
    with pytest.raises(ValueError, match="neither the official yolov3.cfg nor yolov3-tiny.cfg"):
        dk.convert_darknet(altered, tmp_path / "unused.weights")
    weights = tmp_path / "tiny.weights"
    write_random_weights(data / "yolov3-tiny.cfg", weights)
    with pytest.raises(ValueError, match="classes=80 but the model has num_classes=3"):
        dk.load_darknet_weights(YOLOV3(3, backbone="darknet_tiny", image_size=416), weights, data / "yolov3-tiny.cfg")
    with pytest.raises(ValueError, match="darknet_tiny YOLOv3 but the model was built with backbone='tiny'"):
        dk.load_darknet_weights(YOLOV3(80, backbone="tiny", image_size=128), weights, data / "yolov3-tiny.cfg")


def test_voc_cfg_maps_to_darknet53_with_its_class_count(shared_dir):
    cfg = shared_dir / "data" / "darknet" / "yolov3-voc.cfg"
    sections = dk.parse_cfg(cfg)
    assert dk._backbone_of(sections, cfg) == "darknet53"
    settings = dk.yolo_settings(sections)
    assert settings["num_classes"] == 20
    assert settings["anchors"][0] == [(10.0, 13.0), (16.0, 30.0), (33.0, 23.0)]  # finest level first


def test_packaged_assets_match_the_upstream_files(shared_dir):
    from kdet.zoo.locate import package_file

    for name in ("yolov3.cfg", "yolov3-tiny.cfg", "coco.names", "LICENSE.darknet"):
        assert package_file(f"assets/darknet/{name}").read_bytes() == (shared_dir / "data" / "darknet" / name).read_bytes()
