"""``fcos_resnet50_fpn_coco``: torchvision's FCOS through ``kdet.load``, against ``torchvision_more/fcos_resnet50_fpn``.

The fixture's state dict (regenerated with the ``synth_weight`` rule) is written as a ``.pth`` in
``torch.save``'s zip layout (no torch) and given to ``kdet.load(name, weights=path)``: converted on the fly,
with the entry's defaults (torchvision's transform, score 0.2, 1000 candidates per level, NMS 0.6, 100
detections).

Labels: with the fixture's random weights, 98 of torchvision's 100 detections carry COCO id 12, one of the
11 ids no COCO class uses (torchvision's FCOS ranks all 91 outputs). The registered entry's 80 labels cannot
express it, so the end-to-end comparison loads the entry with torchvision's own 91-label space
(``num_classes=91`` in its builder arguments, as ``test_torchvision_zoo.py`` does for the softmax entries);
the registered 80-label entry is checked on the same checkpoint for identical weights and for giving the
91-label pipeline's detections whenever the unused outputs cannot score (as with trained weights).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import kdet
from kdet.zoo import locate, registry
from kdet.zoo.coco_classes import COCO_CATEGORY_IDS
from tests.zoo.helpers import synth_weight, write_state_dict_zip
from tests.zoo.test_torchvision import TOLERANCE, box_iou, relative_error

NAME = "fcos_resnet50_fpn_coco"
# The end-to-end bar: share of torchvision's detections kdet reproduces (same label, IoU >= 0.9).
MATCHED_BAR = 0.95


def fixture_files():
    from tests.conftest import SHARED

    folder = SHARED / "fixtures" / "torchvision_more" / "fcos_resnet50_fpn"
    if not folder.exists():
        pytest.skip("../shared/fixtures/torchvision_more is not beside the checkout")
    spec = json.loads((folder / "spec.json").read_text())
    state = {key: synth_weight(key, tuple(shape), "torch") for key, shape in spec["state_dict_keys"]}
    return spec, state, np.load(folder / "reference.npz")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(spec, state dict, reference, path of the state dict written as a torchvision ``.pth``)."""
    spec, state, ref = fixture_files()
    path = tmp_path_factory.mktemp("fcos") / "fcos_resnet50_fpn_coco-fixture.pth"
    write_state_dict_zip(state, path)
    return spec, state, ref, path


@pytest.fixture(scope="module")
def torchvision_labels(checkpoint):
    """The entry with torchvision's 91 labels, loaded from the ``.pth``, run once on the fixture's image."""
    _, _, ref, path = checkpoint
    entry = registry.get_entry(NAME)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._REGISTRY, NAME, dataclasses.replace(
            entry, builder_kwargs={**entry.builder_kwargs, "num_classes": 91}, class_names=None))
        model = kdet.load(NAME, weights=path, precision="float32")
    image = ref["image_uint8"][None].astype(np.float32)
    raw, frame = model.forward(image)  # what model(image) runs, keeping the raw outputs
    detections = model.detections_to_input(model.postprocess(raw, frame), frame)
    return model, {k: np.asarray(v) for k, v in raw.items()}, frame, detections


def test_transform_and_locations_follow_torchvision(torchvision_labels, checkpoint):
    model, _, frame, _ = torchvision_labels
    spec, _, ref, _ = checkpoint
    transform = spec["transform"]
    assert tuple(frame["canvas"]) == tuple(transform["padded_hw"])
    np.testing.assert_array_equal(np.asarray(frame["valid_hw"])[0], transform["resized_hw"])
    np.testing.assert_array_equal(model.locations_for(frame["canvas"])[0], ref["anchors_xyxy"])
    x = np.asarray(model.preprocessor(ref["image_uint8"][None].astype(np.float32)))[0].reshape(-1, 3)
    np.testing.assert_allclose(np.stack([x.mean(0), x.std(0)], -1), ref["input_mean_std"], atol=1e-3)


def test_head_outputs_match(torchvision_labels, checkpoint):
    _, raw, _, _ = torchvision_labels
    ref = checkpoint[2]
    assert relative_error(raw["cls"][0][ref["cls_logits_index"]], ref["cls_logits"]) <= TOLERANCE
    assert relative_error(raw["box"][0], ref["bbox_regression"]) <= TOLERANCE
    assert relative_error(raw["centerness"][0], ref["bbox_ctrness"]) <= TOLERANCE


def test_end_to_end_detections_match(torchvision_labels, checkpoint):
    _, _, _, detections = torchvision_labels
    ref = checkpoint[2]
    count = int(detections["num_detections"][0])
    assert count == len(ref["det_boxes"])
    boxes, labels = np.asarray(detections["boxes"][0][:count]), np.asarray(detections["labels"][0][:count])
    same = ref["det_labels"][:, None] == labels[None, :]  # label = torchvision's category id
    matched = ((box_iou(ref["det_boxes"], boxes) >= 0.9) & same).any(axis=1).mean()
    assert matched >= MATCHED_BAR, matched
    np.testing.assert_allclose(np.sort(detections["scores"][0][:count]), np.sort(ref["det_scores"]), atol=1e-4)


def test_registered_80_label_entry(torchvision_labels, checkpoint):
    """As registered: 80 COCO labels read from the same 91 outputs; the 91-label pipeline's detections
    once the unused outputs cannot score."""
    reference_model, raw, frame, _ = torchvision_labels
    model = kdet.load(NAME, weights=checkpoint[3], precision="float32")
    assert model.num_classes == 80 and model.class_names[:2] == ("person", "bicycle")
    assert model.head_output_ids == COCO_CATEGORY_IDS and model.config.resize == "min_max"
    for mine, theirs in zip(model.weights, reference_model.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs), err_msg=mine.path)
    unused = np.setdiff1d(np.arange(91), COCO_CATEGORY_IDS)
    silenced = dict(raw, cls=raw["cls"].copy())
    silenced["cls"][..., unused] = -1e4  # sigmoid 0: these outputs never pass the score threshold
    expected = reference_model.postprocess(silenced, frame)
    got = model.postprocess(raw, frame)
    count = int(expected["num_detections"][0])
    assert count > 0 and int(got["num_detections"][0]) == count
    np.testing.assert_array_equal(np.asarray(COCO_CATEGORY_IDS)[np.asarray(got["labels"][0][:count])],
                                  np.asarray(expected["labels"][0][:count]))
    np.testing.assert_allclose(np.asarray(got["boxes"][0][:count]), np.asarray(expected["boxes"][0][:count]))
    np.testing.assert_allclose(np.asarray(got["scores"][0][:count]), np.asarray(expected["scores"][0][:count]))


def test_conversion_refuses_mismatched_checkpoints(torchvision_labels, checkpoint):
    from kdet.models import FCOS
    from kdet.zoo.torchvision_fcos import convert_fcos

    model, state = torchvision_labels[0], checkpoint[1]
    with pytest.raises(ValueError, match="unused.*head.unknown.weight"):
        convert_fcos(model, dict(state, **{"head.unknown.weight": np.zeros((1, 1), np.float32)}))
    with pytest.raises(ValueError, match="missing.*bbox_ctrness.bias"):
        convert_fcos(model, {k: v for k, v in state.items() if k != "head.regression_head.bbox_ctrness.bias"})
    with pytest.raises(ValueError, match="91 class outputs.*num_classes=3"):
        convert_fcos(FCOS(3, backbone="tiny", image_size=128), state)


def test_entry_as_registered():
    entry = registry.get_entry(NAME)
    src = entry.weights
    assert src.url == "https://download.pytorch.org/models/fcos_resnet50_fpn_coco-99b0c9b7.pth"
    assert src.sha256_prefix == "99b0c9b7" and src.sha256 is None and src.archive is None
    assert src.converter == "kdet.zoo.torchvision_fcos:load_fcos_pth" and src.classifier == ("cls_logits",)
    assert entry.builder == "kdet.zoo.torchvision_fcos:torchvision_fcos" and entry.num_classes == 80
    assert entry.metrics["coco_box_AP"] == 39.2 and "FCOS_ResNet50_FPN_Weights" in entry.metrics_source
    assert entry.license.startswith("BSD-3-Clause") and entry.get_class_names()[:2] == ("person", "bicycle")
    repo = locate.package_file("__init__.py").parents[1]
    assert (repo / entry.model_card).is_file()
