"""torchvision detection ``state_dict`` -> kdet weights, with explicit key maps.

Conventions of the conversion (torchvision 0.8+ ``models/detection``):

* Convs: PyTorch kernels are (out, in, kh, kw); Keras (kh, kw, in, out).
* ``FrozenBatchNorm2d`` (weight, bias, running_mean, running_var; eps 1e-5)
  maps onto ``BatchNormalization`` (gamma, beta, moving_mean,
  moving_variance) of kdet's torchvision-style ResNet (eps 1e-5).
* Dense heads: both libraries lay out a level's prediction channels
  anchor-major (anchor ``a``'s outputs are channels ``a * K .. a * K + K - 1``)
  and flatten (y, x, anchor), so only the class axis changes.
* Labels: torchvision's COCO heads have 91 outputs indexed by COCO category id
  (0 = background, 10 ids unused). The builders below give kdet's 80-label COCO
  models all 91 outputs with ``head_output_ids = COCO_CATEGORY_IDS``: scores
  are computed over every output exactly as upstream (a softmax over 91 values
  for SSD and Faster R-CNN), then kdet's contiguous labels of
  :mod:`kdet.zoo.coco_classes` read their own columns. A model whose head has
  another width (80 / 81 outputs, no ``head_output_ids``) receives the channels
  of ``COCO_CATEGORY_IDS`` (and channel 0 where it has a background class);
  a kdet model with 90 or 91 classes receives all channels unchanged.
* Pipelines: :func:`torchvision_retinanet` and :func:`torchvision_faster_rcnn`
  default to ``resize="min_max"`` (``GeneralizedRCNNTransform``: shorter side
  800, longer side at most 1333, padded to a multiple of 32) and upstream's
  inference settings; :func:`torchvision_ssd300` stretches to 300 x 300
  (``fixed_size``) as upstream.

Every torchvision key (but ``num_batches_tracked``) must be consumed and every
kdet weight assigned, otherwise :class:`ValueError` lists the difference.

Example:
    >>> from kdet.zoo.pth import load_state_dict
    >>> model = torchvision_retinanet(image_size=800)                        # doctest: +SKIP
    >>> convert_retinanet(model, load_state_dict("retinanet_resnet50_fpn_coco-eeacb38b.pth"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kdet.zoo.coco_classes import COCO_CATEGORY_IDS
from kdet.zoo.converters import weighted_layers_by_name

# torchvision's COCO heads: background + category ids 1..90.
TORCHVISION_COCO_OUTPUTS = 91
# kdet label k of an 80-class COCO model -> torchvision's output (its COCO category id).
COCO_HEAD_OUTPUT_IDS = tuple(int(i) for i in COCO_CATEGORY_IDS)
# torchvision GeneralizedRCNNTransform of retinanet_resnet50_fpn / fasterrcnn_resnet50_fpn (min_size=800,
# max_size=1333, size_divisible=32); a fixed canvas (resize="stretch", ...) defaults to 800 x 800.
TORCHVISION_MIN_SIZE, TORCHVISION_MAX_SIZE = 800, 1333
FIXED_CANVAS = 800
# ResNet-50 bottleneck blocks per stage (torchvision layer1..layer4).
RESNET50_BLOCKS = (3, 4, 6, 3)


def conv_weights(state: Mapping[str, np.ndarray], key: str, bias: bool = True) -> list[np.ndarray]:
    """``key.weight`` (out, in, kh, kw) [+ ``key.bias``] -> Keras [kernel (kh, kw, in, out), bias]."""
    weights = [np.transpose(state[f"{key}.weight"], (2, 3, 1, 0))]
    return weights + [state[f"{key}.bias"]] if bias else weights


def batch_norm_weights(state: Mapping[str, np.ndarray], key: str) -> list[np.ndarray]:
    """``FrozenBatchNorm2d`` -> Keras ``BatchNormalization`` [gamma, beta, moving_mean, moving_variance]."""
    return [state[f"{key}.{name}"] for name in ("weight", "bias", "running_mean", "running_var")]


def dense_weights(state: Mapping[str, np.ndarray], key: str) -> list[np.ndarray]:
    """``nn.Linear`` (out, in) -> Keras ``Dense`` [kernel (in, out), bias]."""
    return [np.transpose(state[f"{key}.weight"]), state[f"{key}.bias"]]


def class_channels(num_classes: int, background: bool) -> np.ndarray:
    """Indices of torchvision's 91 COCO outputs that feed a kdet head with ``num_classes`` classes.

    Args:
        num_classes: 80 (kdet's contiguous COCO labels) or 91 (torchvision's
            id space kept as is; background included when ``background``).
        background: whether the kdet head has a leading background output
            (Faster R-CNN, SSD) or not (RetinaNet: sigmoid, no background).
    """
    if num_classes == 80:
        ids = np.asarray(COCO_CATEGORY_IDS)
        return np.concatenate([[0], ids]) if background else ids
    if num_classes + int(background) == TORCHVISION_COCO_OUTPUTS or num_classes == TORCHVISION_COCO_OUTPUTS:
        return np.arange(TORCHVISION_COCO_OUTPUTS)
    raise ValueError(f"A torchvision COCO head converts into a kdet model with 80 classes (COCO labels) or "
                     f"{TORCHVISION_COCO_OUTPUTS - int(background)}; received num_classes={num_classes}.")


def select_anchor_channels(arrays: list[np.ndarray], per_anchor: int, keep: np.ndarray) -> list[np.ndarray]:
    """Keeps channels ``keep`` of each anchor's block in an anchor-major conv [kernel, bias]."""
    kernel, bias = arrays
    anchors = bias.shape[0] // per_anchor
    index = (np.arange(anchors)[:, None] * per_anchor + keep[None, :]).reshape(-1)
    return [kernel[..., index], bias[index]]


def head_channels(model, background: bool) -> np.ndarray:
    """Indices of torchvision's 91 outputs feeding ``model``'s class head (all of them for a 91-wide head)."""
    if getattr(model, "head_classes", None) == TORCHVISION_COCO_OUTPUTS:
        return np.arange(TORCHVISION_COCO_OUTPUTS)
    return class_channels(model.num_classes, background)


def coco_options(num_classes: int, options: dict) -> dict:
    """80 classes: the COCO names and all 91 outputs kept (``head_output_ids`` = the COCO category ids)."""
    from kdet.zoo.coco_classes import COCO_CLASSES

    if num_classes == 80:
        options.setdefault("class_names", list(COCO_CLASSES))
        options.setdefault("head_output_ids", COCO_HEAD_OUTPUT_IDS)
    return options


def canvas_options(resize: str, image_size, options: dict) -> dict:
    """torchvision's transform: "min_max" (800 / 1333), or a fixed canvas (default 800) for the other rules."""
    if resize == "min_max":
        if image_size is not None:
            raise ValueError(f"image_size={image_size!r} sets a fixed canvas, but resize='min_max' sizes the canvas "
                             f"from each image (min_size / max_size); pass resize='stretch' (or 'letterbox', 'pad') "
                             f"with image_size, or min_size= / max_size=.")
        options.setdefault("min_size", TORCHVISION_MIN_SIZE)
        options.setdefault("max_size", TORCHVISION_MAX_SIZE)
        return {**options, "resize": resize}
    return {**options, "resize": resize, "image_size": FIXED_CANVAS if image_size is None else image_size}


def resnet_key_map(prefix: str = "backbone.body.", blocks=RESNET50_BLOCKS) -> dict[str, tuple[str, str]]:
    """kdet ResNet layer name -> (kind, torchvision key) for ``torchvision.models.resnet``."""
    mapping = {"conv1_conv": ("conv_nobias", f"{prefix}conv1"), "conv1_bn": ("bn", f"{prefix}bn1")}
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            torch_block, kdet_block = f"{prefix}layer{stage}.{block}", f"conv{stage + 1}_block{block + 1}"
            for k in (1, 2, 3):
                mapping[f"{kdet_block}_{k}_conv"] = ("conv_nobias", f"{torch_block}.conv{k}")
                mapping[f"{kdet_block}_{k}_bn"] = ("bn", f"{torch_block}.bn{k}")
            if block == 0:
                mapping[f"{kdet_block}_0_conv"] = ("conv_nobias", f"{torch_block}.downsample.0")
                mapping[f"{kdet_block}_0_bn"] = ("bn", f"{torch_block}.downsample.1")
    return mapping


def fpn_key_map(levels, prefix: str = "backbone.fpn.", extra: tuple = ()) -> dict[str, tuple[str, str]]:
    """kdet ``fpn`` layer names -> torchvision ``FeaturePyramidNetwork`` keys (inner/layer blocks, P6/P7)."""
    mapping = {}
    for index, level in enumerate(levels):
        mapping[f"fpn_lateral_p{level}"] = ("conv", f"{prefix}inner_blocks.{index}.0")
        mapping[f"fpn_output_p{level}"] = ("conv", f"{prefix}layer_blocks.{index}.0")
    for level in extra:
        mapping[f"fpn_extra_p{level}"] = ("conv", f"{prefix}extra_blocks.p{level}")
    return mapping


def _weights_of(kind: str, state, key: str) -> list[np.ndarray]:
    if kind == "conv":
        return conv_weights(state, key)
    if kind == "conv_nobias":
        return conv_weights(state, key, bias=False)
    if kind == "bn":
        return batch_norm_weights(state, key)
    if kind == "norm":  # GroupNorm / LayerNorm affine: (weight, bias) -> Keras [gamma, beta]
        return [state[f"{key}.weight"], state[f"{key}.bias"]]
    if kind == "dense":
        return dense_weights(state, key)
    if kind == "vector":  # a bare parameter tensor, e.g. SSD's L2Norm scale
        return [state[key]]
    raise ValueError(f"unknown weight kind {kind!r}")


def _consumed_keys(kind: str, key: str) -> list[str]:
    if kind == "bn":
        return [f"{key}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    if kind == "vector":
        return [key]
    return [f"{key}.weight"] + ([] if kind == "conv_nobias" else [f"{key}.bias"])


def apply_key_map(model, state: Mapping[str, np.ndarray], key_map: dict, transforms: dict | None = None,
                  ignore: tuple = ()) -> None:
    """Sets the weights of ``model``'s layers from ``state`` following ``key_map``.

    Args:
        model: a kdet model (nested sub-models are searched by layer name).
        state: torchvision ``state_dict`` as ``{key: np.ndarray}``.
        key_map: {kdet layer name: (kind, torchvision key prefix)}, kind one of
            "conv", "conv_nobias", "bn", "dense", "norm" (GroupNorm),
            "vector" (the key itself is a tensor).
        transforms: {kdet layer name: f(list of arrays) -> list of arrays}
            applied after the layout conversion (class-channel selection).
        ignore: torchvision keys deliberately not converted.

    Raises:
        ValueError: a key is missing, a torchvision key is left unused, a kdet
            weighted layer is left unassigned, or a shape disagrees.
    """
    transforms = transforms or {}
    layers = weighted_layers_by_name(model)
    missing_layers = sorted(set(key_map) - set(layers))
    unmapped_layers = sorted(set(layers) - set(key_map))
    needed = {k for kind, key in key_map.values() for k in _consumed_keys(kind, key) if "num_batches" not in k}
    missing_keys = sorted(needed - set(state))
    unused_keys = sorted(k for k in set(state) - needed - set(ignore) if not k.endswith("num_batches_tracked"))
    if missing_layers or unmapped_layers or missing_keys or unused_keys:
        raise ValueError(
            "The torchvision state_dict does not match the kdet model: "
            f"kdet layers missing {missing_layers[:5]}, kdet layers not mapped {unmapped_layers[:5]}, "
            f"torchvision keys missing {missing_keys[:5]}, torchvision keys unused {unused_keys[:5]} "
            f"(first 5 of {len(missing_layers)}, {len(unmapped_layers)}, {len(missing_keys)}, {len(unused_keys)}).")
    for name, (kind, key) in key_map.items():
        arrays = _weights_of(kind, state, key)
        if name in transforms:
            arrays = transforms[name](arrays)
        layer = layers[name]
        expected = [tuple(w.shape) for w in layer.weights]
        received = [tuple(a.shape) for a in arrays]
        if expected != received:
            raise ValueError(f"{key} -> {name}: kdet expects shapes {expected}; the checkpoint gives {received}.")
        layer.set_weights([np.asarray(a, np.float32) for a in arrays])


def retinanet_key_map(head_depth: int = 4) -> dict[str, tuple[str, str]]:
    """kdet ``RetinaNet`` (resnet50, P3-P7) layer -> torchvision ``retinanet_resnet50_fpn`` key."""
    mapping = {**resnet_key_map(), **fpn_key_map((3, 4, 5), extra=(6, 7))}
    for tower, torch_head in (("cls", "classification_head"), ("box", "regression_head")):
        for i in range(head_depth):
            mapping[f"{tower}_conv{i}"] = ("conv", f"head.{torch_head}.conv.{i}.0")
    mapping["cls_pred"] = ("conv", "head.classification_head.cls_logits")
    mapping["box_pred"] = ("conv", "head.regression_head.bbox_reg")
    return mapping


def convert_retinanet(model, state_dict: Mapping[str, np.ndarray]):
    """Loads torchvision ``retinanet_resnet50_fpn`` weights into a kdet ``RetinaNet``.

    Args:
        model: ``RetinaNet`` with ``backbone="resnet50"``, FPN width 256, head
            depth 4, 9 anchors per location and a 91-output class head (80
            COCO labels with ``head_output_ids``, or 91 classes) or 80 outputs;
            build it with :func:`torchvision_retinanet` to get torchvision's
            anchors, pipeline and inference settings.
        state_dict: ``{key: np.ndarray}`` (e.g. :func:`kdet.zoo.pth.load_state_dict`).

    Returns:
        ``model``, with its weights set.
    """
    keep = head_channels(model, background=False)
    transforms = {"cls_pred": lambda arrays: select_anchor_channels(arrays, TORCHVISION_COCO_OUTPUTS, keep)}
    apply_key_map(model, state_dict, retinanet_key_map(), transforms)
    return model


def torchvision_retinanet(num_classes: int = 80, resize: str = "min_max", image_size=None, **kwargs):
    """A kdet ``RetinaNet`` with torchvision's ``retinanet_resnet50_fpn`` pipeline.

    Resizing: ``resize="min_max"`` (shorter side 800, longer at most 1333,
    padded to a multiple of 32), or another rule with ``image_size`` (default
    800). Anchors: :func:`kdet.models.retinanet.torchvision_anchor_generator`
    (offset 0, rounded base anchors, truncated octave sizes); box deltas
    unweighted (torchvision ``BoxCoder(weights=(1, 1, 1, 1))``); ImageNet
    mean / std on 0..1 pixels. Inference as torchvision's ``RetinaNet``
    (``score_thresh=0.05``, ``topk_candidates=1000`` (anchor, class) pairs per
    level over all 91 sigmoid outputs, ``nms_thresh=0.5``,
    ``detections_per_img=300``). 80 classes keep all 91 outputs
    (``head_output_ids``).
    """
    from kdet.models.retinanet import RetinaNet, torchvision_anchor_generator

    options = dict(score_threshold=0.05, pre_nms_top_k=1000, top_k_per_level=True, top_k_rule="pair",
                   nms_iou_threshold=0.5, max_detections=300, box_variances=(1.0, 1.0, 1.0, 1.0))
    options.update(kwargs)
    options = canvas_options(resize, image_size, coco_options(num_classes, options))
    return RetinaNet(num_classes, backbone="resnet50", anchor_generator=torchvision_anchor_generator(), **options)


# torchvision ssd300_vgg16: indices of the convs in ``backbone.features`` (VGG-16 up to conv4_3) and the
# keys of conv5_1 .. fc7 inside ``backbone.extra.0`` (maxpool4, conv5_x, then the fc6 / fc7 block).
SSD_VGG_FEATURES = {"block1_conv1": 0, "block1_conv2": 2, "block2_conv1": 5, "block2_conv2": 7,
                    "block3_conv1": 10, "block3_conv2": 12, "block3_conv3": 14,
                    "block4_conv1": 17, "block4_conv2": 19, "block4_conv3": 21}
SSD_VGG_EXTRA0 = {"block5_conv1": "1", "block5_conv2": "3", "block5_conv3": "5", "fc6": "7.1", "fc7": "7.3"}
# torchvision ssd300_vgg16 (``_vgg_extractor`` / ``DefaultBoxGenerator``): default-box scales, steps and
# the normalisation (image_mean on 0..1 pixels, image_std 1/255: "0..255 minus mean").
TORCHVISION_SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
TORCHVISION_SSD300_STEPS = (8, 16, 32, 64, 100, 300)
TORCHVISION_SSD300_MEAN = (0.48235, 0.45882, 0.40784)
TORCHVISION_SSD300_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)


def ssd300_key_map(num_levels: int = 6, num_extras: int = 4) -> dict[str, tuple[str, str]]:
    """kdet ``SSD`` (vgg16, 300) layer -> torchvision ``ssd300_vgg16`` key."""
    mapping = {name: ("conv", f"backbone.features.{index}") for name, index in SSD_VGG_FEATURES.items()}
    mapping.update({name: ("conv", f"backbone.extra.0.{index}") for name, index in SSD_VGG_EXTRA0.items()})
    mapping["conv4_3_l2norm"] = ("vector", "backbone.scale_weight")
    for k in range(1, num_extras + 1):
        mapping[f"extra{k}_reduce"] = ("conv", f"backbone.extra.{k}.0")
        mapping[f"extra{k}_conv"] = ("conv", f"backbone.extra.{k}.2")
    for level in range(num_levels):
        mapping[f"ssd_cls_l{level}"] = ("conv", f"head.classification_head.module_list.{level}")
        mapping[f"ssd_box_l{level}"] = ("conv", f"head.regression_head.module_list.{level}")
    return mapping


def convert_ssd300(model, state_dict: Mapping[str, np.ndarray]):
    """Loads torchvision ``ssd300_vgg16`` weights into a kdet ``SSD`` (vgg16, 300 px).

    Args:
        model: ``SSD(80 or 90, backbone="vgg16", image_size=300)``; build it with
            :func:`torchvision_ssd300` to get torchvision's default boxes,
            normalisation and 91-output head. kdet's background is output 0,
            as torchvision's.
        state_dict: ``{key: np.ndarray}``.

    Returns:
        ``model``, with its weights set.
    """
    keep = head_channels(model, background=True)
    transforms = {f"ssd_cls_l{level}": lambda arrays: select_anchor_channels(arrays, TORCHVISION_COCO_OUTPUTS, keep)
                  for level in range(6)}
    apply_key_map(model, state_dict, ssd300_key_map(), transforms)
    return model


def torchvision_ssd300(num_classes: int = 80, **kwargs):
    """A kdet ``SSD`` with torchvision's ``ssd300_vgg16`` conventions.

    Default boxes of scales ``TORCHVISION_SSD300_SCALES`` (clipped to the
    image), steps 8..300, box-coder weights (10, 10, 5, 5) = variances
    (0.1, 0.1, 0.2, 0.2), pixels ``x - 255 * mean``, stretched to 300 x 300
    (torchvision's ``fixed_size``); inference as torchvision's ``SSD``: softmax
    over all 91 outputs (80 classes: ``head_output_ids``), score 0.01, the 400
    best anchors of each class (``topk_candidates``), NMS 0.45, 200 detections.
    """
    from kdet.models.ssd import SSD

    options = dict(score_threshold=0.01, pre_nms_top_k=400, top_k_rule="class", nms_iou_threshold=0.45,
                   max_detections=200, resize="stretch",
                   box_variances=(0.1, 0.1, 0.2, 0.2), anchor_scales=TORCHVISION_SSD300_SCALES,
                   steps=TORCHVISION_SSD300_STEPS, clip_default_boxes=True, image_size=300,
                   # x - 255 * mean on 0..255 pixels: torchvision's image_std of 1/255.
                   pixel_scale=1.0, pixel_mean=tuple(m / s for m, s in zip(TORCHVISION_SSD300_MEAN,
                                                                        TORCHVISION_SSD300_STD)))
    options.update(kwargs)
    return SSD(num_classes, backbone="vgg16", **coco_options(num_classes, options))


def select_blocks(arrays: list[np.ndarray], block: int, keep: np.ndarray) -> list[np.ndarray]:
    """Keeps output blocks ``keep`` (each ``block`` wide) of a layer [kernel (..., out), bias (out,)]."""
    kernel, bias = arrays
    index = (np.asarray(keep)[:, None] * block + np.arange(block)[None, :]).reshape(-1)
    return [kernel[..., index], bias[index]]


def chw_to_hwc_rows(arrays: list[np.ndarray], channels: int, size: int) -> list[np.ndarray]:
    """fc6 after a (C, P, P) flatten (torchvision) -> after kdet's (P, P, C) flatten."""
    kernel, bias = arrays
    units = kernel.shape[-1]
    kernel = kernel.reshape(channels, size, size, units).transpose(1, 2, 0, 3).reshape(-1, units)
    return [kernel, bias]


def faster_rcnn_key_map() -> dict[str, tuple[str, str]]:
    """kdet ``FasterRCNN`` (resnet50_fpn) layer -> torchvision ``fasterrcnn_resnet50_fpn`` key."""
    mapping = {**resnet_key_map(), **fpn_key_map((2, 3, 4, 5))}
    mapping.update({
        "rpn_head_conv": ("conv", "rpn.head.conv.0.0"),
        "rpn_head_cls_logits": ("conv", "rpn.head.cls_logits"),
        "rpn_head_bbox_pred": ("conv", "rpn.head.bbox_pred"),
        "roi_heads_box_head_fc6": ("dense", "roi_heads.box_head.fc6"),
        "roi_heads_box_head_fc7": ("dense", "roi_heads.box_head.fc7"),
        "roi_heads_box_predictor_cls_score": ("dense", "roi_heads.box_predictor.cls_score"),
        "roi_heads_box_predictor_bbox_pred": ("dense", "roi_heads.box_predictor.bbox_pred"),
    })
    return mapping


def convert_faster_rcnn(model, state_dict: Mapping[str, np.ndarray]):
    """Loads torchvision ``fasterrcnn_resnet50_fpn`` (v1) weights into a kdet ``FasterRCNN``.

    Args:
        model: ``FasterRCNN(80 or 90, backbone="resnet50_fpn")`` with the full
            box head (``box_head_ranks=(None, None)``); build it with
            :func:`torchvision_faster_rcnn` (91 outputs for 80 classes).
        state_dict: ``{key: np.ndarray}``.

    Returns:
        ``model``, with its weights set.
    """
    keep = head_channels(model, background=True)
    size = model.config.roi_output_size
    transforms = {
        "roi_heads_box_head_fc6": lambda arrays: chw_to_hwc_rows(arrays, model.config.fpn_width, size),
        "roi_heads_box_predictor_cls_score": lambda arrays: select_blocks(arrays, 1, keep),
        "roi_heads_box_predictor_bbox_pred": lambda arrays: select_blocks(arrays, 4, keep),
    }
    apply_key_map(model, state_dict, faster_rcnn_key_map(), transforms)
    return model


def torchvision_faster_rcnn(num_classes: int = 80, resize: str = "min_max", image_size=None, **options):
    """A kdet ``FasterRCNN`` with torchvision's ``fasterrcnn_resnet50_fpn`` pipeline.

    Resizing as :func:`torchvision_retinanet`. kdet's FasterRCNN defaults are
    torchvision's already (anchors 32..512 with offset 0 and rounded base
    anchors, MultiScaleRoIAlign 7x7 sampling ratio 2 unaligned, canonical 224
    / level 4, box weights (10, 10, 5, 5)); set here explicitly: the RPN at
    test time (``rpn_pre_nms_top_n_test=1000`` per level,
    ``rpn_post_nms_top_n_test=1000``, ``rpn_nms_thresh=0.7``,
    ``rpn_score_thresh=0``, boxes under 1e-3 px dropped) and the box head
    (``box_score_thresh=0.05``, ``box_nms_thresh=0.5``,
    ``box_detections_per_img=100``, boxes under 1e-2 px dropped, softmax over
    all 91 outputs: ``head_output_ids`` for 80 classes); plus the COCO class
    names and RoIAlign's border clamping (``roi_clamp_outside=True``: the
    reference outputs read the border row / column for samples past the
    feature map).
    """
    from kdet.models.faster_rcnn import FasterRCNN

    defaults = dict(rpn_pre_nms_top_k_test=1000, rpn_post_nms_top_k_test=1000, rpn_nms_threshold=0.7,
                    rpn_min_size=1e-3, score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100,
                    min_box_size=1e-2, roi_clamp_outside=True)
    options = canvas_options(resize, image_size, coco_options(num_classes, {**defaults, **options}))
    return FasterRCNN(num_classes, backbone="resnet50_fpn", **options)


def _from_pth(convert):
    def converter(model, path):
        from kdet.zoo.pth import load_state_dict

        convert(model, load_state_dict(path))

    converter.__name__ = f"load_{convert.__name__[len('convert_'):]}_pth"
    converter.__doc__ = (f"Registry converter ``(model, path)``: reads a torchvision ``.pth`` with "
                         f":func:`kdet.zoo.pth.load_state_dict` (no torch) and runs :func:`{convert.__name__}`.")
    return converter


load_retinanet_pth = _from_pth(convert_retinanet)
load_ssd300_pth = _from_pth(convert_ssd300)
load_faster_rcnn_pth = _from_pth(convert_faster_rcnn)
