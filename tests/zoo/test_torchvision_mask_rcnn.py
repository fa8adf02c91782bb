"""Mask R-CNN against torchvision's ``maskrcnn_resnet50_fpn``: head outputs and end to end, without torch.

Fixture: ``../shared/fixtures/torchvision_more/maskrcnn_resnet50_fpn`` (torchvision 0.28 in eval mode on
dog.jpg at its own 576 x 768, its own transform: resized to 800 x 1066, padded to 800 x 1088). Weights:
the ``synth_weight`` rule of ``../shared/fixtures/torchvision/README.md``, written as a ``.pth`` without
torch (``tests/zoo/helpers.py``) and loaded with ``kdet.load("maskrcnn_resnet50_fpn_coco", weights=<.pth>)``.

Random weights spread torchvision's detections over all 90 category outputs, including the 10 ids COCO
leaves unused (27 of this fixture's 100 detections): a model with the 80 COCO labels cannot return
those. The end-to-end bar therefore loads the entry in torchvision's id space (a copy of the registered
entry with ``num_classes=90``: label = id - 1, the same 91 outputs and weights); the entry as registered
(80 labels, softmax over all 91 outputs through ``head_output_ids``) must return every detection of a
used id, with the same masks.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import kdet
from kdet.zoo import registry
from kdet.zoo.coco_classes import COCO_CATEGORY_IDS
from tests.zoo.helpers import synth_weight, write_state_dict_zip
from tests.zoo.test_torchvision import TOLERANCE, box_iou, relative_error

NAME = "maskrcnn_resnet50_fpn_coco"
COCO_IDS = np.asarray(COCO_CATEGORY_IDS)
# The issue's bar: detections matched at IoU >= 0.9 with the same label; pasted masks' pixel agreement.
MATCH_IOU, MIN_MATCHED, MIN_MASK_AGREEMENT = 0.9, 0.95, 0.98


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    """The fixture, its weights as a .pth, the 91-way model loaded through kdet.load, one forward pass."""
    from tests.conftest import SHARED

    folder = SHARED / "fixtures" / "torchvision_more" / "maskrcnn_resnet50_fpn"
    if not folder.exists():
        pytest.skip("../shared is not beside the checkout")
    spec = json.loads((folder / "spec.json").read_text())
    ref = dict(np.load(folder / "reference.npz"))
    pth = tmp_path_factory.mktemp("maskrcnn") / "maskrcnn_resnet50_fpn_coco.pth"
    write_state_dict_zip({key: synth_weight(key, tuple(shape), "torch") for key, shape in spec["state_dict_keys"]},
                         pth)
    real = registry.get_entry(NAME)
    with pytest.MonkeyPatch.context() as patch:  # torchvision's id space: the same entry with 90 labels
        patch.setitem(registry._REGISTRY, NAME, dataclasses.replace(
            real, builder_kwargs={**real.builder_kwargs, "num_classes": 90}))
        model = kdet.load(NAME, weights=pth, precision="float32")
    image = ref["image_uint8"]
    raw, frame = model.forward(image[None].astype(np.float32))
    return {"spec": spec, "ref": ref, "pth": pth, "model": model, "raw": raw, "frame": frame,
            "detections": model.detect(image)}


def test_pipeline_and_head_outputs_match_torchvision(fixture_run):
    model, raw, frame, ref, spec = (fixture_run[k] for k in ("model", "raw", "frame", "ref", "spec"))
    transform = spec["transform"]
    assert model.config.resize == "min_max" and (model.config.min_size, model.config.max_size) == (800, 1333)
    np.testing.assert_array_equal(np.asarray(frame["valid_hw"])[0], transform["resized_hw"])
    assert tuple(frame["canvas"]) == tuple(transform["padded_hw"])
    x = np.asarray(model.preprocessor(ref["image_uint8"][None].astype(np.float32)))[0].reshape(-1, 3)
    np.testing.assert_allclose(np.stack([x.mean(0), x.std(0)], 1), ref["input_mean_std"], atol=1e-3)
    np.testing.assert_allclose(model.canvas_anchors(frame["canvas"])[0], ref["anchors_xyxy"], atol=1e-3)
    assert relative_error(raw["rpn_cls"][0], ref["rpn_objectness"]) <= TOLERANCE
    assert relative_error(raw["rpn_box"][0], ref["rpn_deltas"]) <= TOLERANCE
    cls, box = model.box_head_outputs(raw, ref["proposals"][None])
    assert relative_error(cls[0], ref["roi_class_logits"]) <= TOLERANCE
    assert relative_error(np.reshape(box[0], (len(ref["proposals"]), -1)), ref["roi_box_regression"]) <= TOLERANCE
    # The mask head on torchvision's first 20 detection boxes, each read at its own label's channel.
    head_index = ref["det_labels"][None, :len(ref["mask_boxes_resized"])]
    logits = model.mask_logits(raw, ref["mask_boxes_resized"][None], head_index)
    assert relative_error(logits[0], ref["mask_logits"]) <= TOLERANCE


def _matches(ref, boxes, torchvision_labels):
    """(R, n) bool: reference detection r matched by detection j (IoU >= 0.9, same label)."""
    same = ref["det_labels"][:, None] == np.asarray(torchvision_labels)[None, :]
    return (box_iou(ref["det_boxes"], np.asarray(boxes)) >= MATCH_IOU) & same


def _mask_agreement(ref, matches, masks) -> list[float]:
    """Pixel agreement of torchvision's first 5 pasted masks with the matched detections' masks."""
    agreement = []
    for i, want in enumerate(ref["det_masks_first5"]):
        assert matches[i].any(), f"torchvision detection {i} ({ref['det_boxes'][i]}) not found"
        j = int(np.argmax(matches[i]))
        assert masks[j].shape == want.shape and masks[j].dtype == np.uint8
        agreement.append(float((masks[j] == want).mean()))
    return agreement


def test_end_to_end_detections_and_pasted_masks(fixture_run):
    ref, det = fixture_run["ref"], fixture_run["detections"]
    height, width = ref["image_uint8"].shape[:2]
    assert det["masks"].shape == (len(det["boxes"]), height, width)
    matches = _matches(ref, det["boxes"], det["labels"] + 1)   # 90 labels: torchvision id = label + 1
    assert matches.any(axis=1).mean() >= MIN_MATCHED
    assert ref["det_masks_first5"].sum() > 0
    assert min(_mask_agreement(ref, matches, det["masks"])) >= MIN_MASK_AGREEMENT


def test_registered_entry_with_80_labels(fixture_run):
    """The entry as registered: same weights (91 outputs), every detection of a used COCO id, same masks."""
    ref, twin, raw, frame = (fixture_run[k] for k in ("ref", "model", "raw", "frame"))
    model = kdet.load(NAME, weights=fixture_run["pth"], precision="float32")
    assert model.num_classes == 80 and list(model.class_names[:2]) == ["person", "bicycle"]
    assert model.config.head_output_ids == tuple(COCO_CATEGORY_IDS) and model.head_classes == 91
    assert len(model.weights) == len(twin.weights)
    for a, b in zip(model.weights, twin.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    # Same networks: this model's decoding and NMS on the 91-way model's forward pass.
    out = {k: np.asarray(v)[0] for k, v in model.detections_to_input(model.postprocess(raw, frame), frame).items()}
    n = int(out["num_detections"])
    used = np.isin(ref["det_labels"], COCO_IDS)
    assert used.sum() >= 50
    matches = _matches(ref, out["boxes"][:n], COCO_IDS[out["labels"][:n]])
    assert matches.any(axis=1)[used].mean() >= MIN_MATCHED
    height, width = ref["image_uint8"].shape[:2]
    masks = model.paste_detection_masks(out["masks"][:n], out["boxes"][:n], height, width)
    assert np.isin(ref["det_labels"][:5], COCO_IDS).all()
    assert min(_mask_agreement(ref, matches, masks)) >= MIN_MASK_AGREEMENT


def test_entry_as_registered():
    from kdet.zoo import locate

    entry = registry.get_entry(NAME)
    src = entry.weights
    assert src.url == "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert src.sha256_prefix == "bf2d0c1e" and src.sha256 is None
    assert src.converter == "kdet.zoo.torchvision_mask_rcnn:load_mask_rcnn_pth"
    assert src.classifier[-1] == "roi_heads_mask_predictor_mask_fcn_logits"
    assert entry.builder == "kdet.zoo.torchvision_mask_rcnn:torchvision_mask_rcnn" and entry.num_classes == 80
    assert entry.metrics == {"coco_box_AP": 37.9, "coco_mask_AP": 34.6}
    assert entry.license.startswith("BSD-3-Clause")
    assert (locate.package_file("__init__.py").parents[1] / entry.model_card).is_file()
    assert "maskrcnn_resnet50_fpn" in registry.list_models()
