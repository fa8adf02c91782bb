"""Every architecture survives save / load with every setting changed (issue 18's bar).

Each case sets every field of the architecture's config to a non-default
value across one or two variants (``tests/roundtrip.py`` checks the coverage),
then compares the reloaded model's full config and predictions.
"""

import numpy as np
import pytest

from kdet.data import synthetic_arrays
from kdet.models import FCOS, SSD, YOLOV3, EfficientDet, FasterRCNN, MaskRCNN, MTCNN, RetinaNet
from kdet.models.retinanet.pyramid import pyramid_anchor_generator
from tests.roundtrip import check_round_trip

# Settings every variant shares: non-default values of DetectorConfig / NMSConfig fields.
COMMON = dict(num_classes=2, bounding_box_format="yxyx", class_names=("disc", "square"), precision="bfloat16",
              pixel_scale=1.0 / 128.0, pixel_mean=(0.9, 1.0, 1.1), pixel_std=(0.8, 1.0, 1.2), max_detections=40,
              score_threshold=0.001, nms_iou_threshold=0.6, soft_nms_sigma=0.3, class_agnostic=True, fine_tune=True)
# The canvas follows the image: the "min_max" rule and its sizes.
MIN_MAX = dict(resize="min_max", min_size=96, max_size=160, size_divisible=64)
ANCHOR_CHAIN = dict(box_variances=(0.1, 0.1, 0.2, 0.2), positive_threshold=0.6, negative_threshold=0.35,
                    allow_low_quality_matches=False, force_match_for_each_gt=True, negative_ratio=2.0,
                    pre_nms_top_k=300, head_output_ids=(3, 1), top_k_rule="pair", clip_before_nms=False)


@pytest.fixture(scope="module")
def images():
    x, _ = synthetic_arrays(2, 96, seed=5)
    return np.concatenate([x, x[:, :, :32]], axis=2)  # 96 x 128: not square


def test_retinanet(images, tmp_path):
    fixed = dict(COMMON, **ANCHOR_CHAIN, backbone="tiny", image_size=(64, 96), resize="letterbox", min_level=4,
                 max_level=6, fpn_width=32, head_depth=1, anchor_scale=3.0, num_scales=2, aspect_ratios=(1.0, 2.0),
                 top_k_per_level=False, extra_from="input", head_norm="group", box_loss_type="giou")
    follow = dict(COMMON, **ANCHOR_CHAIN, **MIN_MAX, backbone="tiny",
                  anchor_generator=pyramid_anchor_generator(2, 6, 2.0, 2, (0.5, 1.0), offset=0.0))
    check_round_trip(RetinaNet, [fixed, follow], images, tmp_path)


def test_efficientdet(images, tmp_path):
    fixed = dict(COMMON, **ANCHOR_CHAIN, backbone="tiny", variant="d1", image_size=(128, 256), resize="pad",
                 min_level=4, max_level=6, fpn_width=24, fpn_depth=1, head_depth=1, weight_method="sum",
                 bn_momentum=0.8, anchor_scale=3.0, num_scales=2, aspect_ratios=(1.0, 2.0), top_k_per_level=False)
    # automl's inference candidates: each anchor's best class (top_k_rule="best"). The fresh head's
    # outputs tie (prior bias), argmax takes output 0, so output 0 is a label here.
    best = {**ANCHOR_CHAIN, "top_k_rule": "best", "head_output_ids": (0, 3)}
    follow = dict(COMMON, **best, **{**MIN_MAX, "size_divisible": 128},
                  backbone="tiny", anchor_generator=pyramid_anchor_generator(2, 6, 2.0, 2, (0.5, 1.0), offset=0.0))
    check_round_trip(EfficientDet, [fixed, follow], images, tmp_path)


def test_ssd(images, tmp_path):
    chain = dict(ANCHOR_CHAIN, box_variances=(0.2, 0.2, 0.1, 0.1), allow_low_quality_matches=True,
                 force_match_for_each_gt=False, top_k_rule="class")
    settings = dict(COMMON, **chain, backbone="tiny", image_size=(96, 96), resize="letterbox",
                    size_divisible=64, min_scale=0.25, max_scale=0.8, anchor_scales=(0.1, 0.25, 0.4, 0.55, 0.7, 0.95),
                    aspect_ratios=((2.0,), (2.0,), (2.0, 3.0), (2.0,), (2.0,)), steps=(8, 16, 32, 48, 96),
                    clip_default_boxes=False, extras=((32, 64, 3, 2, 1), (32, 64, 3, 2, 1)), head_depth=1,
                    head_width=32, top_k_per_level=True, head_block="separable", candidates_per_class=40)
    # SSDLite on MobileNetV3-Large (the full tail here: its preset halves it), default boxes without steps.
    lite = dict(COMMON, backbone="mobilenet_v3_large", image_size=(96, 128), reduced_tail=False,
                head_block="depthwise_bn", candidates_per_class=60)
    check_round_trip(SSD, [settings, lite], images, tmp_path, not_applicable={
        "min_size": "SSD predicts on a fixed canvas", "max_size": "SSD predicts on a fixed canvas"})


def test_yolov3(images, tmp_path):
    settings = dict(COMMON, score_threshold=1e-5, backbone="tiny", image_size=(64, 96), resize="pad",
                    size_divisible=64,
                    anchors=(((12, 10), (20, 30)), ((40, 40), (60, 80)), ((100, 90), (200, 150))),
                    anchor_image_size=320, ignore_threshold=0.6, pre_nms_top_k=300, bn_momentum=0.8,
                    neck_widths=(32, 24, 16), lateral_widths=(16, 16), neck_convs=(1, 1, 1), head_widths=(48, 32, 24),
                    extra_positive_iou=0.3, anchor_ignore_iou=0.6, objectness_target="binary", xy_scale=2.0,
                    neighbour_cells=True, box_loss_weight=2.5)
    check_round_trip(YOLOV3, [settings], images, tmp_path, not_applicable={
        "min_size": "YOLOv3 predicts on a fixed canvas", "max_size": "YOLOv3 predicts on a fixed canvas"})


# Every FasterRCNNConfig field at a non-default value (Mask R-CNN's config holds them all): a fixed canvas
# chain, and torchvision's v2 options on min_max (the FPN on three backbone levels, two anchor sizes per level).
FASTER_RCNN_CHAIN = dict(
    fpn_width=32, representation_size=64, anchor_sizes=(0.1, 0.2, 0.3, 0.6, 0.9), aspect_ratios=(1.0, 2.0),
    canonical_scale=0.3, canonical_level=3, rpn_pre_nms_top_k_train=200, rpn_pre_nms_top_k_test=120,
    rpn_post_nms_top_k_train=150, rpn_post_nms_top_k_test=60, rpn_nms_threshold=0.6, rpn_min_size=0.5,
    rpn_positive_iou=0.65, rpn_negative_iou=0.25, rpn_batch_size_per_image=128, rpn_positive_fraction=0.4,
    roi_positive_iou=0.55, roi_negative_iou=0.45, roi_batch_size_per_image=64, roi_positive_fraction=0.3,
    roi_output_size=5, roi_sampling_ratio=1, roi_aligned=True, roi_clamp_outside=True, min_box_size=0.5,
    box_head_ranks=(16, 8), seed=7, head_output_ids=(2, 4), relative_sizes=True)
FASTER_RCNN_V2_FOLLOW = dict(
    COMMON, **MIN_MAX, backbone="tiny", relative_sizes=False, fpn_inputs=("P3", "P4", "P5"),
    anchor_sizes=((8, 12), (16, 24), (32, 48), (64, 96)), canonical_scale=40.0, fpn_norm="batch", rpn_head_depth=2,
    rpn_score_threshold=0.01, box_head="4conv1fc")


def test_faster_rcnn(images, tmp_path):
    chain = FASTER_RCNN_CHAIN
    fixed = dict(COMMON, **chain, backbone="tiny", image_size=(64, 96), resize="stretch", roi_pooling="pool")
    # torchvision's v2 options, the FPN on three backbone levels with two anchor sizes on each RPN level.
    follow = dict(FASTER_RCNN_V2_FOLLOW)
    check_round_trip(FasterRCNN, [fixed, follow], images, tmp_path)


def test_fcos(images, tmp_path):
    # COMMON's nms_iou_threshold (0.6) is FCOS's default: the fixed variant sets another one.
    fixed = dict(COMMON, backbone="tiny", image_size=(64, 96), resize="letterbox", nms_iou_threshold=0.5,
                 min_level=4, max_level=6, fpn_width=32, head_depth=1, norm_groups=8, extra_from="input",
                 location_offset=0.5, center_sampling_radius=2.0, scale_range=(2.0, 6.0), pre_nms_top_k=50,
                 head_output_ids=(3, 1))
    follow = dict(COMMON, **MIN_MAX, backbone="tiny", head_norm=None)
    check_round_trip(FCOS, [fixed, follow], images, tmp_path)


def test_mask_rcnn(images, tmp_path):
    # Every FasterRCNNConfig field (Mask R-CNN's config holds them all) and the mask branch's.
    chain = dict(FASTER_RCNN_CHAIN, mask_roi_output_size=6, mask_roi_sampling_ratio=3, mask_head_widths=(16, 8),
                 mask_predictor_width=12, mask_threshold=0.4)
    fixed = dict(COMMON, **chain, backbone="tiny", image_size=(64, 96), resize="stretch", roi_pooling="pool")
    # The v2 options of the Faster R-CNN config (BatchNorm FPN on three levels, deep RPN head, 4conv1fc).
    follow = dict(FASTER_RCNN_V2_FOLLOW)
    models = check_round_trip(MaskRCNN, [fixed, follow], images, tmp_path)
    assert models[0].predict(images, verbose=0)["masks"].shape == (2, 40, 12, 12)


def test_mtcnn(tmp_path):
    from kdet.models.mtcnn.networks import build_onet, build_pnet, build_rnet
    from tests.conftest import REPO
    from kdet.data.images import load_image

    face = load_image(REPO / "kdet" / "assets" / "images" / "ivan.jpg")[None].astype(np.float32)
    settings = dict(bounding_box_format="yxyx", class_names=("visage",), precision="float32", pixel_scale=1 / 127.5,
                    pixel_mean=(1.0, 1.0, 1.0), pixel_std=(1.0, 1.0, 1.0), max_detections=8, min_face_size=24,
                    thresholds=(0.5, 0.6, 0.65), scale_factor=0.75, nms_thresholds=(0.45, 0.65, 0.6, 0.6),
                    pnet_top_k=400, rnet_candidates=96, onet_candidates=32, max_pyramid_side=1024, greedy_nms=True,
                    jit_compile=False, width=0.5, pnet=build_pnet(1.0), rnet=build_rnet(1.0), onet=build_onet(1.0),
                    fine_tune=True)
    # Random networks find nothing: load the packaged weights into the prebuilt ones.
    from kdet.models.mtcnn.model import WEIGHT_FILES, pretrained_dir

    for key, filename in WEIGHT_FILES.items():
        settings[key].load_weights(str(pretrained_dir() / filename))
    check_round_trip(MTCNN, [settings], face, tmp_path, not_applicable={
        "num_classes": "MTCNN finds one class", "resize": "MTCNN takes images at their own size",
        "image_size": "MTCNN takes images at their own size", "min_size": "no resize rule",
        "max_size": "no resize rule", "size_divisible": "no resize rule"})
