"""Truncated-SVD compression of the Fast R-CNN box head (Girshick 2015, section 3.1)."""

from __future__ import annotations

import numpy as np

from kdet.validation import check_positive_int

FC_LAYERS = ("roi_heads_box_head_fc6", "roi_heads_box_head_fc7")


def _ranks(rank):
    ranks = (rank, rank) if not isinstance(rank, (tuple, list)) else tuple(rank)
    if len(ranks) != 2:
        raise ValueError(f"rank must be an int or (rank_fc6, rank_fc7); received {rank!r}.")
    return tuple(None if r is None else check_positive_int("rank", r) for r in ranks)


def _dense_weights(head, name):
    """(kernel (in, out), bias) of fc6/fc7, whether full or already factorised."""
    try:
        kernel, bias = head.get_layer(name).get_weights()
        return kernel, bias
    except ValueError:
        (u,) = head.get_layer(f"{name}_svd_in").get_weights()
        v, bias = head.get_layer(f"{name}_svd_out").get_weights()
        return u @ v, bias


def compress_box_head(model, rank):
    """Returns a copy of ``model`` whose fc6 / fc7 are rank-``t`` truncated-SVD factorisations.

    A dense layer ``y = x W + b`` with W (u x v) becomes two layers,
    ``x (U_t S_t)`` (u x t, no bias) then ``(.) V_t^T + b`` (t x v): u*v weights
    become t*(u + v), which speeds up the head when many RoIs share it
    (Girshick 2015, section 3.1, "Truncated SVD for faster detection").

    Args:
        model: a ``FasterRCNN``.
        rank: t for both layers, or (t_fc6, t_fc7); None keeps a layer whole.

    Returns:
        A new ``FasterRCNN`` (same config, ``box_head_ranks`` set) carrying the
        original weights everywhere else; ``model`` is left unchanged.

    Example:
        >>> small = compress_box_head(model, 64)  # doctest: +SKIP
    """
    from kdet.models.faster_rcnn.model import FasterRCNN

    if not isinstance(model, FasterRCNN):
        raise ValueError(f"compress_box_head needs a FasterRCNN; received {type(model).__name__}.")
    if model.config.box_head != "2fc":
        raise ValueError(f"compress_box_head factorises the two fc layers of box_head='2fc'; this model has "
                         f"box_head={model.config.box_head!r}.")
    ranks = _ranks(rank)
    for name, r in zip(FC_LAYERS, ranks):
        kernel, _ = _dense_weights(model.box_head, name)
        if r is not None and r > min(kernel.shape):
            raise ValueError(f"rank {r} for {name} exceeds min{kernel.shape} = {min(kernel.shape)}.")
    config = model.get_config()
    config["box_head_ranks"] = list(ranks)
    compressed = FasterRCNN.from_config(config)
    compressed.network.set_weights(model.network.get_weights())
    for layer in model.box_head.layers:
        if layer.weights and not any(layer.name.startswith(n) for n in FC_LAYERS):
            compressed.box_head.get_layer(layer.name).set_weights(layer.get_weights())
    for name, r in zip(FC_LAYERS, ranks):
        kernel, bias = _dense_weights(model.box_head, name)
        if r is None:
            compressed.box_head.get_layer(name).set_weights([kernel, bias])
            continue
        u, s, vt = np.linalg.svd(kernel.astype(np.float64), full_matrices=False)
        compressed.box_head.get_layer(f"{name}_svd_in").set_weights([(u[:, :r] * s[:r]).astype(np.float32)])
        compressed.box_head.get_layer(f"{name}_svd_out").set_weights([vt[:r].astype(np.float32), bias])
    return compressed
