"""google/automl EfficientDet checkpoints: D0 parity with automl's own outputs, zoo entries D0-D7.

The fixture (``../shared/fixtures/automl/efficientdet_d0``) holds automl's
EfficientDet-D0 head outputs on one 256x256 image for weights regenerated from
each variable's name (its README's rule, :func:`synth_weight`). The tests write
those weights as a TF checkpoint under automl's variable names (``tf.compat.v1
.train.Saver``), convert it with ``kdet.zoo.automl`` and compare kdet's outputs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import tarfile

import numpy as np
import pytest

import kdet
from kdet.zoo import automl, converted, locate, registry
from tests.conftest import SHARED
from tests.zoo.helpers import LocalServer, synth_weight

FIXTURE = SHARED / "fixtures" / "automl" / "efficientdet_d0"
LEVELS = (3, 4, 5, 6, 7)
ANCHORS, AUTOML_CLASSES = 9, 90
# A faithful float32 port is ~1e-5 off (fixture README); the bar is 1e-4 absolute.
TOLERANCE = 1e-4


def write_checkpoint(values: dict, prefix: pathlib.Path) -> str:
    """Writes ``{automl name: array}`` as a TF checkpoint with exactly those variable names."""
    import tensorflow as tf

    prefix.parent.mkdir(parents=True, exist_ok=True)
    variables = {name: tf.Variable(value) for name, value in values.items()}
    return tf.compat.v1.train.Saver(var_list=variables).save(None, str(prefix))


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURE.exists():
        pytest.skip("../shared/fixtures/automl is not beside the checkout")
    spec = json.loads((FIXTURE / "spec.json").read_text())
    values = {name: synth_weight(name, tuple(shape), "tf") for name, shape in spec["checkpoint_variables"]}
    return spec, dict(np.load(FIXTURE / "reference.npz")), values


@pytest.fixture(scope="module")
def checkpoint(fixture, tmp_path_factory):
    return write_checkpoint(fixture[2], tmp_path_factory.mktemp("automl") / "efficientdet-d0" / "model")


@pytest.fixture(scope="module")
def d0(fixture, checkpoint):
    """kdet EfficientDet-D0 at 256 px with automl's 90 outputs, converted from the checkpoint."""
    from kdet.models import EfficientDet

    spec = fixture[0]
    model = EfficientDet(spec["num_classes"], variant="d0", image_size=spec["image_size"])
    automl.convert_automl_efficientdet(model, pathlib.Path(checkpoint).parent)
    return model


def automl_layout(raw: dict, image_size: int) -> dict:
    """kdet's flat (A, C) / (A, 4) head outputs -> automl's per-level (H, W, 9 * C) / (H, W, 9 * 4)."""
    cls, box = np.asarray(raw["cls"])[0], np.asarray(raw["box"])[0]
    out, start = {}, 0
    kdet_to_automl_box = np.argsort(automl.AUTOML_TO_KDET_BOX)
    for level in LEVELS:
        size = image_size // 2 ** level
        stop = start + size * size * ANCHORS
        out[f"cls_P{level}"] = cls[start:stop].reshape(size, size, -1)
        out[f"box_P{level}"] = box[start:stop][:, kdet_to_automl_box].reshape(size, size, -1)
        start = stop
    return out


def select_classes(reference: dict, keep: np.ndarray) -> dict:
    """The fixture's class maps restricted to classes ``keep`` of every anchor."""
    out = dict(reference)
    for level in LEVELS:
        cls = reference[f"cls_P{level}"]
        out[f"cls_P{level}"] = cls.reshape(*cls.shape[:2], ANCHORS, AUTOML_CLASSES)[..., keep].reshape(
            *cls.shape[:2], -1)
    return out


def max_errors(outputs: dict, reference: dict) -> dict:
    return {k: float(np.abs(outputs[k] - reference[k]).max()) for k in outputs}


def test_d0_head_outputs_match_automl(fixture, d0):
    _, ref, _ = fixture
    outputs = automl_layout(d0.network(ref["normalized_input"][None], training=False), 256)
    errors = max_errors(outputs, ref)
    assert set(errors) == {f"{k}_P{lvl}" for k in ("cls", "box") for lvl in LEVELS}
    assert max(errors.values()) < TOLERANCE, errors
    # Not vacuous: the outputs carry signal at the fixture's scale (~0.05).
    assert all(np.abs(ref[k]).mean() > 0.03 for k in errors)


def test_d0_from_raw_pixels_matches_automl_normalisation(fixture, d0):
    """Raw uint8 in: kdet's (x/255 - mean)/std equals automl's (x - mean_rgb)/stddev_rgb."""
    spec, ref, _ = fixture
    normalised = np.asarray(d0.preprocessor(ref["image_uint8"][None]))[0]
    np.testing.assert_allclose(normalised, ref["normalized_input"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(d0.preprocessor.mean) * 255, spec["mean_rgb"], rtol=1e-6)
    errors = max_errors(automl_layout(d0.raw_outputs(ref["image_uint8"][None]), 256), ref)
    assert max(errors.values()) < TOLERANCE, errors


def test_d0_detections_agree_loosely_with_automl(fixture, d0):
    """Random weights tie the scores (0.5433 +- 1e-5): compare the best detection only."""
    import tensorflow as tf

    _, ref, _ = fixture
    out = d0(ref["image_uint8"][None], training=False)
    scores, labels, boxes = (np.asarray(out[k])[0] for k in ("scores", "labels", "boxes"))
    assert int(np.asarray(out["num_detections"])[0]) > 0
    assert abs(scores[0] - ref["det_scores"][0]) < 1e-4
    assert labels[0] + 1 == int(ref["det_classes"][0])  # automl reports category ids 1..90
    automl_xyxy = ref["det_boxes_yxyx"][:, [1, 0, 3, 2]]
    iou = np.asarray(kdet.ops.iou(tf.constant(boxes[:1]), tf.constant(automl_xyxy[:10])))[0]
    assert iou.max() > 0.5, iou


def test_missing_or_extra_variables_are_reported_and_leave_the_model_untouched(fixture, d0, tmp_path):
    _, _, values = fixture
    before = [np.asarray(w).copy() for w in d0.weights[:3]]
    missing = {k: v for k, v in values.items() if k != "box_net/box-predict/bias"}
    with pytest.raises(ValueError, match="box-predict/bias"):
        automl.convert_automl_efficientdet(d0, write_checkpoint(missing, tmp_path / "missing" / "model"))
    extra = {**values, "fpn_cells/cell_3/fnode0/WSM": np.ones((), np.float32)}  # a D1 node
    with pytest.raises(ValueError, match="not converted.*cell_3"):
        automl.convert_automl_efficientdet(d0, write_checkpoint(extra, tmp_path / "extra" / "model"))
    for a, b in zip(before, d0.weights[:3]):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_checkpoint_lookup_and_bad_inputs(tmp_path):
    from kdet.models import EfficientDet

    with pytest.raises(FileNotFoundError, match="No automl checkpoint"):
        automl.find_checkpoint(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="index"):
        automl.find_checkpoint(tmp_path)
    for sub in ("a", "b"):
        write_checkpoint({"x": np.zeros(2, np.float32)}, tmp_path / sub / "model")
        (tmp_path / sub / "checkpoint").unlink()
    with pytest.raises(ValueError, match="Several checkpoints"):
        automl.find_checkpoint(tmp_path)
    assert automl.find_checkpoint(tmp_path / "a") == str(tmp_path / "a" / "model")
    assert automl.find_checkpoint(tmp_path / "a" / "model.index") == str(tmp_path / "a" / "model")
    with pytest.raises(ValueError, match="80 classes.*90.*received num_classes=3"):
        automl.class_channels(3)
    tiny = EfficientDet(3, backbone="tiny", image_size=128)
    with pytest.raises(ValueError, match="EfficientNet backbone"):
        automl.convert_automl_efficientdet(tiny, tmp_path / "a")


def test_class_and_box_channel_maps():
    keep = automl.class_channels(80)
    assert keep[:3].tolist() == [0, 1, 2] and keep[11] == 12 and keep[-1] == 89  # 12 = id 13, stop sign
    assert automl.class_channels(90).tolist() == list(range(90))
    depthwise = np.zeros((3, 3, 2, 1))
    pointwise = np.arange(2 * 8, dtype=float).reshape(1, 1, 2, 8)
    _, p, b = automl.select_anchor_channels([depthwise, pointwise, np.arange(8.0)], 4, (1, 0, 3, 2))
    assert b.tolist() == [1, 0, 3, 2, 5, 4, 7, 6] and p[0, 0, 1].tolist() == [9, 8, 11, 10, 13, 12, 15, 14]
    names = ["block1a_dwconv", "block2a_expand_conv", "block10a_bn", "block2b_bn", "block2aa_bn", "stem_conv"]
    assert automl.block_prefixes(names) == ["block1a", "block2a", "block2b", "block2aa", "block10a"]


def test_entries_d0_to_d7():
    from kdet.models.efficientdet import EFFICIENTDET_VARIANTS

    repo = pathlib.Path(__file__).resolve().parents[2]
    for variant, preset in EFFICIENTDET_VARIANTS.items():
        entry = registry.get_entry(f"efficientdet_{variant}_coco")
        assert entry.weights.url == ("https://storage.googleapis.com/cloud-tpu-checkpoints/efficientdet/coco2/"
                                     f"efficientdet-{variant}.tar.gz")
        assert entry.weights.archive == "tar" and entry.input_size == (preset["image_size"],) * 2
        assert locate.resolve(entry.weights.converter) is automl.convert_automl_efficientdet
        assert dict(entry.builder_kwargs) == {"num_classes": 80, "variant": variant, "resize": "pad",
                                              **automl.AUTOML_POSTPROCESS}
        assert entry.get_class_names()[0] == "person" and 30 < entry.metrics["coco_box_AP"] < 60
        assert (repo / entry.model_card).is_file()


def _tarball(values: dict, tmp_path: pathlib.Path) -> bytes:
    """automl's release layout, with EMA copies (the values to use), raw weights and training state."""
    ema = {f"{k}{automl.EMA_SUFFIX}": v for k, v in values.items()}
    stale = {k: v + 1.0 for k, v in values.items()}  # the non-EMA weights must not be used
    extra = {"global_step": np.array(1000, np.int64),
             "class_net/class-predict/bias/Momentum": np.zeros(810, np.float32)}
    write_checkpoint({**ema, **stale, **extra}, tmp_path / "efficientdet-d0" / "model")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "efficientdet-d0", arcname="efficientdet-d0")
    return buffer.getvalue()


def test_load_d0_entry_from_a_local_server(fixture, tmp_path, monkeypatch):
    """`efficientdet_d0_coco` as registered (builder, converter, tar), only its URL local."""
    spec, ref, values = fixture
    monkeypatch.setenv("KDET_HOME", str(tmp_path / "kdet_home"))
    real = registry.get_entry("efficientdet_d0_coco")
    with LocalServer({"/efficientdet-d0.tar.gz": _tarball(values, tmp_path)}) as server:
        entry = dataclasses.replace(real, name="efficientdet_fake_d0_coco", weights=dataclasses.replace(
            real.weights, url=server.url("/efficientdet-d0.tar.gz")))
        registry.register(entry)
        try:
            model = kdet.load(entry.name, image_size=spec["image_size"])
            cached = converted.pretrained_weights(entry)  # verified cache: no second download
            assert server.hits["/efficientdet-d0.tar.gz"] == 1
        finally:
            registry.unregister(entry.name)
    assert model.num_classes == 80 and model.class_names[0] == "person"
    expected = select_classes(ref, automl.class_channels(80))
    outputs = automl_layout(model.raw_outputs(ref["image_uint8"][None]), spec["image_size"])
    errors = max_errors(outputs, expected)
    assert max(errors.values()) < TOLERANCE, errors
    assert cached == tmp_path / "kdet_home" / "converted" / f"{entry.name}.weights.h5"


def test_load_with_a_local_tarball_converts_on_the_fly(fixture, tmp_path, monkeypatch):
    """`kdet.load(name, weights=<efficientdet-d0.tar.gz>)`: extracted, converted, nothing cached."""
    spec, ref, values = fixture
    monkeypatch.setenv("KDET_HOME", str(tmp_path / "kdet_home"))
    archive = tmp_path / "efficientdet-d0.tar.gz"
    archive.write_bytes(_tarball(values, tmp_path / "src"))
    model = kdet.load("efficientdet_d0_coco", weights=archive, image_size=spec["image_size"])
    expected = select_classes(ref, automl.class_channels(80))
    errors = max_errors(automl_layout(model.raw_outputs(ref["image_uint8"][None]), spec["image_size"]), expected)
    assert max(errors.values()) < TOLERANCE, errors
    assert not (tmp_path / "kdet_home" / "converted").exists()


def automl_preprocess(image: np.ndarray, output_size: int, mean_rgb, stddev_rgb):
    """automl's inference preprocessing, transcribed from efficientdet/dataloader.py ``DetectionInputProcessor``:
    ``normalize_image``, ``set_scale_factors_to_output_size``, ``resize_and_crop_image`` (as called by
    inference.py ``image_preprocess`` and tf2 ``EfficientDetModel._preprocessing``).

    Returns:
        (canvas (output_size, output_size, 3), image_scale_to_original = 1 / image_scale, (scaled height, width)):
        float32 arithmetic, e.g. a 150 x 220 image scales to 174 x 255 (256 / 220 * 220 < 256 in float32).
    """
    import tensorflow as tf

    image = tf.cast(image, tf.float32)
    image -= tf.constant(mean_rgb, shape=(1, 1, 3), dtype=tf.float32)
    image /= tf.constant(stddev_rgb, shape=(1, 1, 3), dtype=tf.float32)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    image_scale = tf.minimum(tf.cast(output_size, tf.float32) / width, tf.cast(output_size, tf.float32) / height)
    scaled_height = tf.cast(height * image_scale, tf.int32)
    scaled_width = tf.cast(width * image_scale, tf.int32)
    scaled = tf.image.resize(image, [scaled_height, scaled_width], method=tf.image.ResizeMethod.BILINEAR)
    canvas = tf.image.pad_to_bounding_box(scaled[:output_size, :output_size], 0, 0, output_size, output_size)
    return canvas.numpy(), float(1.0 / image_scale), (int(scaled_height), int(scaled_width))


@pytest.fixture(scope="module")
def d0_entry(fixture, tmp_path_factory):
    """`efficientdet_d0_coco` with its entry defaults (resize="pad") at the fixture's 256 px, from a tarball."""
    spec, _, values = fixture
    tmp = tmp_path_factory.mktemp("d0_entry")
    archive = tmp / "efficientdet-d0.tar.gz"
    archive.write_bytes(_tarball(values, tmp / "src"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDET_HOME", str(tmp / "kdet_home"))
        return kdet.load("efficientdet_d0_coco", weights=archive, image_size=spec["image_size"])


@pytest.mark.parametrize("rows, cols", [(slice(0, 256), slice(40, 232)),    # 256 x 192: no resize, right padding
                                        (slice(30, 180), slice(10, 230))])  # 150 x 220: x 1.1636, bottom padding
def test_d0_pad_pipeline_on_non_square_crops(fixture, d0_entry, rows, cols):
    """A non-square crop of the fixture's photo through the entry's "pad" pipeline.

    The network is automl's (head outputs within 1e-4 of the fixture on its own input, tests above); what
    "pad" adds is checked against automl's preprocessing code (``automl_preprocess``): the same canvas, the
    same head outputs, and detections mapped back to the crop by automl's ``image_scale_to_original``.
    """
    spec, ref, _ = fixture
    model = d0_entry
    assert model.config.resize == "pad"
    crop = np.ascontiguousarray(ref["image_uint8"][rows, cols])
    canvas, to_original, valid = automl_preprocess(crop, spec["image_size"], spec["mean_rgb"], spec["stddev_rgb"])
    height, width = crop.shape[:2]
    assert np.all(canvas[valid[0]:] == 0) and np.all(canvas[:, valid[1]:] == 0) and min(valid) < 256
    # Where the crop itself fits (no resize), the canvas holds the fixture's own normalised pixels.
    if to_original == 1.0:
        np.testing.assert_allclose(canvas[:height, :width], ref["normalized_input"][rows, cols], atol=1e-5)
    ours = np.asarray(model.preprocessor(crop[None].astype(np.float32)))[0]
    np.testing.assert_allclose(ours, canvas, atol=2e-5)
    frame = model.frame_of(crop[None].astype(np.float32))
    np.testing.assert_allclose(np.asarray(frame["valid_hw"])[0], valid)
    np.testing.assert_allclose(1.0 / np.asarray(frame["scale"])[0], [to_original] * 2, rtol=1e-6)
    # Head outputs of the crop = the network on automl's canvas.
    raw = model.raw_outputs(crop[None])
    expected = model.network(canvas[None], training=False)
    for key in ("cls", "box"):
        np.testing.assert_allclose(np.asarray(raw[key]), np.asarray(expected[key]), atol=1e-4)
    # Detections: decoded on the canvas, then back to the crop's pixels by automl's 1 / scale.
    canvas_frame = model.frame_of(canvas[None])
    canvas_frame["valid_hw"] = frame["valid_hw"]  # kdet clips to the image's region of the canvas
    on_canvas = model.postprocess(expected, canvas_frame)
    count = int(on_canvas["num_detections"][0])
    out = model.detect(crop)
    assert count > 0 and len(out["scores"]) == count
    boxes = np.asarray(on_canvas["boxes"][0, :count]) * to_original
    np.testing.assert_allclose(out["boxes"], np.minimum(boxes, [width, height, width, height]), atol=1e-3)
    np.testing.assert_allclose(out["scores"], np.asarray(on_canvas["scores"][0, :count]), atol=1e-5)
    np.testing.assert_array_equal(out["labels"], np.asarray(on_canvas["labels"][0, :count]))


# automl README table: #params of D1-D7 (D0: 3.9M is checked in docs/models/efficientdet.md).
AUTOML_PARAMS_M = {"d0": 3.9, "d1": 6.6, "d2": 8.1, "d3": 12.0, "d4": 20.7, "d5": 33.7, "d6": 51.9, "d7": 51.9}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(AUTOML_PARAMS_M))
def test_parameter_counts_match_automl_table(variant):
    """Parameter counts do not depend on the image size: build at 128 px to keep it quick."""
    from kdet.models import EfficientDet

    model = EfficientDet(AUTOML_CLASSES, variant=variant, image_size=128)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert round(trainable / 1e6, 1) == AUTOML_PARAMS_M[variant], trainable
