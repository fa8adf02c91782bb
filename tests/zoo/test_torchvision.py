"""torchvision -> kdet converters: head-level parity with the torchvision fixtures (NumPy only, no torch)."""

import json

import numpy as np
import pytest

from kdet.zoo.coco_classes import COCO_CATEGORY_IDS
from kdet.zoo.torchvision import class_channels, select_anchor_channels
from tests.zoo.helpers import synth_weight

TOLERANCE = 1e-3  # issue 10: relative error of head outputs


def fixture(shared_dir, name):
    folder = shared_dir / "fixtures" / "torchvision" / name
    spec = json.loads((folder / "spec.json").read_text())
    state = {key: synth_weight(key, tuple(shape), "torch") for key, shape in spec["state_dict_keys"]}
    return spec, state, np.load(folder / "reference.npz")


def shared_fixture(name):
    """(spec, state, reference) of a torchvision fixture, for module-scoped pytest fixtures."""
    from tests.conftest import SHARED

    if not SHARED.exists():
        pytest.skip("../shared is not beside the checkout")
    return fixture(SHARED, name)


def box_iou(a, b):
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def matched_fraction(model, ref, torchvision_label, labels_kdet_has=None) -> float:
    """Share of the fixture's detections that kdet reproduces (IoU >= 0.9, same label), end to end.

    ``labels_kdet_has``: the torchvision labels the model can output (an 80-label COCO model has no
    label for the 10 unused category ids, which random weights do score); None: all.
    """
    out = model.predict(ref["image_uint8"][None], verbose=0)
    count = int(out["num_detections"][0])
    assert count > 0
    boxes, labels = out["boxes"][0][:count], torchvision_label(out["labels"][0][:count])
    rows = np.ones(len(ref["det_labels"]), bool) if labels_kdet_has is None else np.isin(ref["det_labels"],
                                                                                         labels_kdet_has)
    same = ref["det_labels"][rows, None] == labels[None, :]
    return float(((box_iou(ref["det_boxes"][rows], boxes) >= 0.9) & same).any(axis=1).mean())


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| over the whole array."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def test_class_channels_and_anchor_selection():
    np.testing.assert_array_equal(class_channels(80, background=False), COCO_CATEGORY_IDS)
    assert class_channels(80, background=True)[0] == 0 and len(class_channels(80, background=True)) == 81
    assert len(class_channels(91, background=False)) == 91 and len(class_channels(90, background=True)) == 91
    with pytest.raises(ValueError, match="num_classes=3"):
        class_channels(3, background=False)
    kernel = np.arange(2 * 2 * 91 * 2, dtype=np.float32).reshape(1, 2, 2, 91 * 2)  # 2 anchors x 91 outputs
    bias = np.arange(182, dtype=np.float32)
    k, b = select_anchor_channels([kernel, bias], 91, np.array([1, 90]))
    np.testing.assert_array_equal(b, [1, 90, 92, 181])
    np.testing.assert_array_equal(k[..., 2], kernel[..., 92])


@pytest.fixture(scope="module")
def retinanet():
    from kdet.zoo.torchvision import convert_retinanet, torchvision_retinanet

    _, state, ref = shared_fixture("retinanet_resnet50_fpn")
    # The fixture ran torchvision's transform at a fixed 320 x 320: the stretch rule at that size.
    model = convert_retinanet(torchvision_retinanet(80, resize="stretch", image_size=ref["image_uint8"].shape[:2]),
                              state)
    return model, ref


def test_retinanet_head_parity(retinanet):
    model, ref = retinanet
    np.testing.assert_array_equal(np.asarray(model.anchors), ref["anchors_xyxy"])
    raw = model.network(ref["normalized_input"][None], training=False)
    assert relative_error(raw["box"][0], ref["bbox_regression"]) <= TOLERANCE
    rows = ref["cls_logits_index"]
    assert model.config.head_output_ids == tuple(COCO_CATEGORY_IDS)  # all 91 outputs, kdet's labels read 80
    assert relative_error(np.asarray(raw["cls"][0])[rows], ref["cls_logits"]) <= TOLERANCE
    # The preprocessing reproduces torchvision's normalisation of the raw image.
    normalized = model.preprocessor(ref["image_uint8"][None].astype("float32"))
    np.testing.assert_allclose(normalized[0], ref["normalized_input"], atol=1e-4)


def test_retinanet_end_to_end_detections(retinanet):
    model, ref = retinanet
    # Sigmoid scores: dropping the 11 unused COCO ids changes nothing, so the 80-label model matches.
    assert matched_fraction(model, ref, lambda labels: np.asarray(COCO_CATEGORY_IDS)[labels]) >= 0.9


def test_retinanet_conversion_refuses_mismatched_state(shared_dir):
    from kdet.zoo.torchvision import convert_retinanet, torchvision_retinanet

    _, state, _ = fixture(shared_dir, "retinanet_resnet50_fpn")
    model = torchvision_retinanet(80, resize="stretch", image_size=128)
    extra = dict(state, **{"head.unknown.weight": np.zeros((1, 1), np.float32)})
    with pytest.raises(ValueError, match="unused.*head.unknown.weight"):
        convert_retinanet(model, extra)
    short = {k: v for k, v in state.items() if k != "backbone.fpn.extra_blocks.p7.bias"}
    with pytest.raises(ValueError, match="missing.*extra_blocks.p7.bias"):
        convert_retinanet(model, short)
    with pytest.raises(ValueError, match="num_classes=3"):
        convert_retinanet(torchvision_retinanet(3, resize="stretch", image_size=128), state)
    with pytest.raises(ValueError, match="resize='min_max' sizes the canvas from each image"):
        torchvision_retinanet(80, image_size=128)


def test_ssd300_head_parity(shared_dir):
    from kdet.zoo.torchvision import convert_ssd300, torchvision_ssd300

    _, state, ref = fixture(shared_dir, "ssd300_vgg16")
    model = torchvision_ssd300(80)
    # torchvision computes the default boxes relative to the image then scales: float rounding only.
    np.testing.assert_allclose(np.asarray(model.anchors), ref["anchors_xyxy"], rtol=0, atol=1e-4)
    convert_ssd300(model, state)
    raw = model.network(ref["normalized_input"][None], training=False)
    assert relative_error(raw["box"][0], ref["bbox_regression"]) <= TOLERANCE
    assert relative_error(raw["cls"][0], ref["cls_logits"]) <= TOLERANCE  # all 91 outputs kept
    normalized = model.preprocessor(ref["image_uint8"][None].astype("float32"))
    np.testing.assert_allclose(normalized[0], ref["normalized_input"], atol=1e-3)


@pytest.fixture(scope="module")
def ssd300_91():
    from kdet.zoo.torchvision import convert_ssd300, torchvision_ssd300

    _, state, ref = shared_fixture("ssd300_vgg16")
    return convert_ssd300(torchvision_ssd300(90), state), ref


def test_ssd300_all_91_outputs_and_end_to_end(ssd300_91):
    model, ref = ssd300_91
    raw = model.network(ref["normalized_input"][None], training=False)
    assert relative_error(raw["cls"][0], ref["cls_logits"]) <= TOLERANCE
    # Softmax over torchvision's 91 outputs (kdet label l = torchvision id l + 1): same scores, same detections.
    assert matched_fraction(model, ref, lambda labels: labels + 1) >= 0.9


def _samples_inside_map(boxes, image_side=320, sampling_ratio=2, output_size=7):
    """RoIs whose RoIAlign samples all lie inside their FPN level's map (torchvision v1 level rule)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = np.clip(np.floor(4 + np.log2(np.sqrt(area) / 224) + 1e-6), 2, 5)
    scale = 2.0 ** -level
    last = 1 - 0.5 / (sampling_ratio * output_size)  # the last sample, as a fraction of the RoI
    ends = [boxes[:, i] * scale + np.maximum((boxes[:, i + 2] - boxes[:, i]) * scale, 1.0) * last for i in (0, 1)]
    return (ends[0] <= image_side * scale) & (ends[1] <= image_side * scale)


@pytest.fixture(scope="module")
def faster_rcnn_outputs():
    from kdet.zoo.torchvision import convert_faster_rcnn, torchvision_faster_rcnn
    from tests.conftest import SHARED

    if not SHARED.exists():
        pytest.skip("../shared is not beside the checkout")
    shared_dir = SHARED
    _, state, ref = fixture(shared_dir, "fasterrcnn_resnet50_fpn")
    # 90 classes + background: torchvision's 91-way softmax, so detections compare end to end.
    model = convert_faster_rcnn(torchvision_faster_rcnn(90, resize="stretch", image_size=320), state)
    raw = model.network(ref["normalized_input"][None], training=False)
    cls, box = model.box_head_outputs(raw, ref["proposals"][None])
    return model, raw, np.asarray(cls[0]), np.asarray(box[0]), ref


def test_faster_rcnn_rpn_parity(faster_rcnn_outputs):
    model, raw, _, _, ref = faster_rcnn_outputs
    np.testing.assert_array_equal(np.asarray(model.anchors), ref["anchors_xyxy"])
    assert relative_error(raw["rpn_cls"][0], ref["rpn_objectness"]) <= TOLERANCE
    assert relative_error(raw["rpn_box"][0], ref["rpn_deltas"]) <= TOLERANCE


def test_faster_rcnn_box_head_parity_inside_the_feature_maps(faster_rcnn_outputs):
    _, _, cls, box, ref = faster_rcnn_outputs
    keep = class_channels(90, background=True)
    inside = _samples_inside_map(ref["proposals"])
    assert inside.sum() >= 290  # all but the few RoIs touching the right / bottom border
    assert relative_error(cls[inside], ref["roi_class_logits"][inside][:, keep]) <= TOLERANCE
    expected_box = ref["roi_box_regression"].reshape(-1, 91, 4)[:, keep]
    assert relative_error(box[inside], expected_box[inside]) <= TOLERANCE


def test_faster_rcnn_box_head_parity_all_proposals(faster_rcnn_outputs):
    _, _, cls, _, ref = faster_rcnn_outputs
    assert relative_error(cls, ref["roi_class_logits"]) <= TOLERANCE


def test_faster_rcnn_end_to_end_detections(faster_rcnn_outputs):
    model, _, _, _, ref = faster_rcnn_outputs
    assert matched_fraction(model, ref, lambda labels: labels + 1) >= 0.9


def test_ssd300_loads_from_a_pth_file_without_torch(ssd300_91, tmp_path):
    from kdet.zoo.torchvision import load_ssd300_pth
    from tests.zoo.helpers import write_state_dict_zip

    model, ref = ssd300_91
    _, state, _ = shared_fixture("ssd300_vgg16")
    write_state_dict_zip(state, tmp_path / "ssd300_vgg16_coco.pth")
    for name in ("ssd_cls_l0", "fc7"):  # spoil some weights: the file must restore them
        layer = model.network.get_layer(name) if name.startswith("ssd") else model.backbone.get_layer(name)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    load_ssd300_pth(model, tmp_path / "ssd300_vgg16_coco.pth")
    raw = model.network(ref["normalized_input"][None], training=False)
    assert relative_error(raw["cls"][0], ref["cls_logits"]) <= TOLERANCE
