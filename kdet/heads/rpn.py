"""Region Proposal Network head (Ren et al. 2015, "Faster R-CNN", section 3.1)."""

from __future__ import annotations

from typing import Sequence

import keras

# torchvision's RPNHead initialisation: normal(std=0.01), bias 0.
RPN_INIT_STD = 0.01


def rpn_head(features: Sequence, num_anchors: int, width: int | None = None, name: str = "rpn_head",
             depth: int = 1) -> dict:
    """``depth`` 3x3 convs + ReLU, then 1x1 objectness and box-delta convs, shared by every level.

    Layer names follow torchvision's ``rpn.head`` (``conv``, ``cls_logits``,
    ``bbox_pred``; the convs ``{name}_conv``, ``{name}_conv_1``, ... are its
    ``conv.0.0``, ``conv.1.0``, ...: ``RPNHead(conv_depth=2)`` in
    ``fasterrcnn_resnet50_fpn_v2``) so its checkpoints convert by name; channel layout is
    (anchor, coordinate) as in torchvision, and the outputs are flattened in
    (level, row, column, anchor) order, the order of ``AnchorGenerator``.

    Args:
        features: list of (B, h_l, w_l, C) maps, finest first.
        num_anchors: anchors per location.
        width: channels of the 3x3 convs (default: the input's C, as torchvision).
        depth: number of 3x3 conv + ReLU layers (1; 2 in torchvision's v2).

    Returns:
        ``{"rpn_cls": (B, A) objectness logits, "rpn_box": (B, A, 4) deltas}``.

    Example:
        >>> x = keras.Input((8, 8, 16))
        >>> out = rpn_head([x], num_anchors=3)
        >>> tuple(out["rpn_box"].shape)
        (None, 192, 4)
    """
    if not features:
        raise ValueError("rpn_head needs at least one feature map.")
    if int(depth) < 1:
        raise ValueError(f"rpn_head needs depth >= 1; received {depth!r}.")
    width = width or features[0].shape[-1]
    init = keras.initializers.RandomNormal(stddev=RPN_INIT_STD)
    convs = [keras.layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer=init,
                                 name=f"{name}_conv" + (f"_{i}" if i else "")) for i in range(int(depth))]
    cls = keras.layers.Conv2D(num_anchors, 1, kernel_initializer=init, name=f"{name}_cls_logits")
    box = keras.layers.Conv2D(num_anchors * 4, 1, kernel_initializer=init, name=f"{name}_bbox_pred")
    cls_out, box_out = [], []
    for level, x in enumerate(features):
        t = x
        for conv in convs:
            t = conv(t)
        cls_out.append(keras.layers.Reshape((-1,), name=f"{name}_cls_flat_l{level}")(cls(t)))
        box_out.append(keras.layers.Reshape((-1, 4), name=f"{name}_box_flat_l{level}")(box(t)))
    if len(features) == 1:
        return {"rpn_cls": cls_out[0], "rpn_box": box_out[0]}
    return {"rpn_cls": keras.layers.Concatenate(axis=1, name=f"{name}_cls_concat")(cls_out),
            "rpn_box": keras.layers.Concatenate(axis=1, name=f"{name}_box_concat")(box_out)}
