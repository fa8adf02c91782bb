"""The options behind torchvision's v2 and mobile checkpoints, on small configurations.

RetinaNet: GroupNorm subnets (one GroupNorm per conv, shared by every level, bias-free convs) and
``box_loss_type``. Faster R-CNN: BatchNorm FPN, deep RPN head, 4conv1fc box head, FPN on any backbone
taps (MobileNetV3's two stride-32 maps), several anchor sizes per level, RPN score threshold. SSD:
SSDLite heads, MobileNetV3-Large sources, default boxes spaced by canvas / feature size, per-class
candidates. The checkpoints themselves are checked in ``tests/zoo/test_torchvision_v2.py``.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.data import synthetic_arrays
from kdet.models import SSD, FasterRCNN, RetinaNet


@pytest.fixture(scope="module")
def images():
    x, y = synthetic_arrays(3, 128, seed=3)
    return x.astype(np.float32), y


# --------------------------------------------------------------------------- RetinaNet
def test_group_norm_heads_are_shared_across_levels_and_convs_lose_their_bias(images):
    model = RetinaNet(3, backbone="tiny", image_size=128, fpn_width=32, head_depth=2, head_norm="group")
    norms = [layer for layer in model.network.layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert sorted(layer.name for layer in norms) == ["box_gn0", "box_gn1", "cls_gn0", "cls_gn1"]
    levels = model.config.max_level - model.config.min_level + 1
    for layer in norms:  # one layer, called once per pyramid level (torchvision's head.conv[i][1])
        assert len(layer._inbound_nodes) == levels and layer.groups == 32 and layer.epsilon == 1e-5
    assert model.network.get_layer("cls_conv0").bias is None and model.network.get_layer("cls_pred").bias is not None
    assert model.predict(images[0][:1], verbose=0)["boxes"].shape == (1, 100, 4)
    with pytest.raises(ValueError, match="multiple of 32"):
        RetinaNet(3, backbone="tiny", image_size=128, head_norm="group")  # tiny fpn_width 48


def test_box_loss_type_sets_the_default_box_loss(images):
    from kdet.losses import IoULoss, SmoothL1Loss

    giou = RetinaNet(3, backbone="tiny", image_size=128, box_loss_type="giou")
    giou.compile()
    assert isinstance(giou.box_loss, IoULoss) and giou.box_loss.mode == "giou"
    plain = RetinaNet(3, backbone="tiny", image_size=128)
    plain.compile()
    assert isinstance(plain.box_loss, SmoothL1Loss)
    x, y = images
    logs = giou.train_on_batch(x[:2], {k: v[:2] for k, v in y.items()}, return_dict=True)
    assert np.isfinite(logs["box_loss"]) and logs["box_loss"] > 0
    with pytest.raises(ValueError, match="box_loss_type"):
        RetinaNet(3, backbone="tiny", image_size=128, box_loss_type="l2")


# --------------------------------------------------------------------------- Faster R-CNN
def test_faster_rcnn_v2_layers(images):
    model = FasterRCNN(3, backbone="tiny", image_size=128, fpn_norm="batch", rpn_head_depth=2, box_head="4conv1fc")
    network = {layer.name for layer in model.network.layers}
    assert {"fpn_lateral_p2_bn", "fpn_output_p5_bn", "rpn_head_conv", "rpn_head_conv_1", "fpn_pool_p6"} <= network
    assert model.network.get_layer("fpn_lateral_p2").bias is None
    head = {layer.name for layer in model.box_head.layers}
    assert {f"roi_heads_box_head_conv{i}_bn" for i in range(4)} <= head
    assert "roi_heads_box_head_fc6" in head and "roi_heads_box_head_fc7" not in head
    assert model.box_head.get_layer("roi_heads_box_head_conv0").bias is None
    out = model.predict(images[0], verbose=0)
    assert out["boxes"].shape == (3, 100, 4)
    from kdet.models.faster_rcnn import compress_box_head

    with pytest.raises(ValueError, match="4conv1fc"):
        compress_box_head(model, 8)


def test_faster_rcnn_on_mobilenet_v3_taps(images):
    model = FasterRCNN(3, backbone="mobilenet_v3_large", image_size=128, score_threshold=0.0)
    assert model.pyramid_keys == ["fpn_0", "fpn_1", "fpn_pool"] and model.level_strides == [32, 32, 64]
    assert model.roi_keys == ["fpn_0"] and model.config.anchors_per_location == 15
    # torchvision's detection MobileNetV3 uses FrozenBatchNorm2d (eps 1e-5), not the classifier's 1e-3.
    assert model.network.get_layer("mobilenet_v3_large").get_layer("conv_bn").epsilon == 1e-5
    anchors, counts = model.canvas_anchors((128, 128))
    assert counts == [4 * 4 * 15, 4 * 4 * 15, 2 * 2 * 15] and anchors.shape == (sum(counts), 4)
    # Both stride-32 levels share one grid (spacing 32): their anchors coincide.
    np.testing.assert_array_equal(anchors[:counts[0]], anchors[counts[0]:2 * counts[0]])


def test_faster_rcnn_on_mobilenet_v3_predicts_alike_at_batch_1_and_3(images):
    model = FasterRCNN(3, backbone="mobilenet_v3_large", image_size=128, score_threshold=0.0)
    one = model.predict(images[0][:1], verbose=0)
    three = model.predict(images[0], verbose=0)  # XLA at batch 1 and 3
    np.testing.assert_allclose(one["boxes"][0], three["boxes"][0], atol=1e-3)


@pytest.mark.parametrize("settings, message", [
    (dict(box_head="3fc"), "box_head"),
    (dict(rpn_head_depth=0), "rpn_head_depth"),
    (dict(fpn_norm="group"), "fpn_norm"),
    (dict(rpn_score_threshold=1.5), "rpn_score_threshold"),
    (dict(box_head="4conv1fc", box_head_ranks=(8, 8)), "fc6"),
    (dict(fpn_inputs=("P3", "P4", "P5")), "anchor_sizes needs one size"),
    (dict(anchor_sizes=((0.1, 0.2),) * 4 + ((0.5,),)), "as many sizes"),
    (dict(fpn_inputs=()), "fpn_inputs"),
])
def test_faster_rcnn_bad_options(settings, message):
    with pytest.raises(ValueError, match=message):
        FasterRCNN(3, backbone="tiny", image_size=128, **settings)


def test_faster_rcnn_unknown_fpn_input_names_the_backbone_outputs():
    with pytest.raises(ValueError, match="conv9_block1_out.*neither an output"):
        FasterRCNN(3, backbone="tiny", image_size=128, fpn_inputs=("P4", "conv9_block1_out"),
                   anchor_sizes=(0.1, 0.2, 0.4))


# --------------------------------------------------------------------------- SSD
def test_ssdlite_mobilenet_v3_preset(images):
    model = SSD(3, backbone="mobilenet_v3_large", image_size=128)
    cfg = model.config
    assert (cfg.head_block, cfg.reduced_tail, cfg.min_scale, cfg.max_scale) == ("depthwise_bn", True, 0.2, 0.95)
    backbone = model.backbone
    assert backbone.output["P4"].shape[-1] == 672 and backbone.output["P5"].shape[-1] == 480  # reduced tail
    assert backbone.get_layer("conv_bn").epsilon == 1e-3 and backbone.get_layer("conv_bn").momentum == 0.97
    names = {layer.name for layer in model.network.layers}
    assert {"ssd_cls_l0_depthwise", "ssd_cls_l0_depthwise_bn", "ssd_box_l5"} <= names
    assert isinstance(model.network.get_layer("ssd_cls_l0"), keras.layers.Conv2D)
    assert model.network.get_layer("ssd_cls_l0").kernel_size == (1, 1)
    assert [len(level) for level in model.anchor_generator.anchor_shapes] == [6] * 6
    assert model.predict(images[0], verbose=0)["boxes"].shape == (3, 100, 4)


def test_default_boxes_without_steps_are_spaced_by_canvas_over_feature_size():
    model = SSD(3, backbone="mobilenet_v3_large", image_size=(160, 224))  # not square: steps per axis
    anchors, shapes = model.anchors, model.feature_shapes
    assert shapes[3] == (2, 2) and shapes[2] == (3, 4)
    start = sum(h * w * 6 for h, w in shapes[:2])
    centres = (anchors[start:start + 3 * 4 * 6, :2] + anchors[start:start + 3 * 4 * 6, 2:]) / 2
    # Level 2 (3 x 4 cells): centres at (i + 0.5) * 160 / 3 and (j + 0.5) * 224 / 4, as torchvision's
    # DefaultBoxGenerator (clipped box sizes keep the centre).
    np.testing.assert_allclose(np.unique(centres[:, 1].round(3)), (np.arange(3) + 0.5) * 160 / 3, atol=1e-3)
    np.testing.assert_allclose(np.unique(centres[:, 0].round(3)), (np.arange(4) + 0.5) * 224 / 4, atol=1e-3)


def test_candidates_per_class_keeps_each_class_best():
    model = SSD(2, backbone="tiny", image_size=128, candidates_per_class=2)
    logits = np.zeros((1, len(model.anchors), 3), np.float32)
    logits[0, :5, 1] = [5, 4, 3, 2, 1]  # class 0: anchors 0, 1 survive
    logits[0, 5:9, 2] = [1, 2, 3, 4]  # class 1: anchors 7, 8 survive
    scores = model.class_scores(tf.constant(logits)).numpy()[0]
    assert np.flatnonzero(scores[:, 0]).tolist() == [0, 1]
    assert np.flatnonzero(scores[:, 1]).tolist() == [7, 8]
    unlimited = SSD(2, backbone="tiny", image_size=128).class_scores(tf.constant(logits)).numpy()[0]
    np.testing.assert_allclose(scores[[0, 1], 0], unlimited[[0, 1], 0])


@pytest.mark.parametrize("settings, message", [
    (dict(backbone="tiny", head_block="pointwise"), "head_block"),
    (dict(backbone="tiny", reduced_tail=True), "reduced_tail applies"),
    (dict(backbone="tiny", candidates_per_class=0), "candidates_per_class"),
])
def test_ssd_bad_options(settings, message):
    with pytest.raises(ValueError, match=message):
        SSD(3, image_size=128, **settings)


# --------------------------------------------------------------------------- min_max geometry
def test_min_max_sizes_follow_torchvision_double_arithmetic():
    """torchvision 0.28 (eager): scale = min(800 / short, 1333 / long) on Python ints, size = int(side * scale)."""
    from kdet.layers.image_preprocessing import ImagePreprocessing

    pre = ImagePreprocessing(resize="min_max", min_size=800, max_size=1333)
    sides = [(h, w) for h in range(150, 1600, 37) for w in (h - 11, h + 29, 2 * h + 5)]
    expected = []
    for h, w in sides:
        scale = min(800 / min(h, w), 1333 / max(h, w))
        expected.append((int(h * scale), int(w * scale)))
    assert [pre.geometry(h, w)["resized"] for h, w in sides] == expected
    assert pre.geometry(561, 561)["resized"] == (800, 800)  # float32 arithmetic gives 799
    dynamic = pre._dynamic_geometry(tf.constant(sides, tf.float32))[2].numpy().astype(int)
    assert [tuple(r) for r in dynamic] == expected
