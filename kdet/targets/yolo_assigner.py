"""YOLOv3 target assignment: each ground-truth box goes to one anchor of one cell.

Redmon and Farhadi 2018, section 2.1: the anchor (among all levels' anchors)
whose width/height best overlaps the box, compared as if both were centred
at the same point, in the grid cell containing the box centre on that
anchor's level. Every other anchor is a no-object candidate (the loss
ignores those whose prediction already overlaps a box by more than the
ignore threshold; see ``kdet.models.yolov3``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from kdet.ops.box_coder import encode_yolo
from kdet.ops.boxes import iou


class YOLOAssigner:
    """Assigns padded ground truth to YOLO anchors (XLA-safe, static shapes).

    Args:
        anchor_shapes: per level (finest first) a list of anchor (width, height)
            in network pixels.
        strides: stride of each level in pixels.
        feature_shapes: (height, width) of each level's grid.
        extra_positive_iou: None for the paper's rule (only the best anchor
            shape); a value t also makes every anchor shape whose centred
            width/height IoU with the box is >= t responsible in its own
            level's cell (the multi-anchor rule of YOLOv4, Bochkovskiy et al.
            2020, ``iou_thresh``), which gives small datasets more positives.
        neighbour_cells: also make each chosen anchor shape responsible in
            the two cells next to the centre's cell that lie nearest the
            centre (one left or right, one above or below; YOLOv5's rule,
            Jocher et al. 2020, ``utils/loss.py`` ``build_targets`` with
            g = 0.5): three positives per shape. The decoder must reach them
            (``xy_scale`` 2).
        xy_scale: Darknet's ``scale_x_y`` the box targets are encoded for
            (``kdet.ops.encode_yolo``).

    Attributes:
        anchors: (A, 4) xyxy anchors centred on their cell's top-left corner
            (``AnchorGenerator(offset=0)``), in (level, row, column, anchor) order.
        anchor_strides: (A,) stride of each anchor's level.

    Call:
        ``assigner(gt_boxes, gt_labels)``: gt_boxes (B, M, 4) xyxy network
        pixels, gt_labels (B, M) int with -1 padding.

    Returns:
        dict with ``positive`` (B, A) float32 (1 for responsible anchors),
        ``labels`` (B, A) int32 (class, -1 elsewhere), ``matched_boxes`` (B, A, 4)
        xyxy, ``box_targets`` (B, A, 4) YOLO targets (sigmoid-space xy offsets
        in the cell, log(w / anchor_w), log(h / anchor_h)); 0 where not positive.
        When two boxes claim the same anchor, the later one keeps it.

    Example:
        >>> a = YOLOAssigner([[(8, 8), (16, 16)]], strides=[8], feature_shapes=[(2, 2)])
        >>> out = a([[[9., 9., 23., 23.]]], [[1]])
        >>> out["positive"].numpy().nonzero()[1].tolist()   # cell (1, 1), anchor 1
        [7]
    """

    def __init__(self, anchor_shapes: Sequence[Sequence[Sequence[float]]], strides: Sequence[int],
                 feature_shapes: Sequence[Sequence[int]], extra_positive_iou: float | None = None,
                 neighbour_cells: bool = False, xy_scale: float = 1.0):
        if not len(anchor_shapes) == len(strides) == len(feature_shapes):
            raise ValueError(
                f"anchor_shapes, strides and feature_shapes need one entry per level; received "
                f"{len(anchor_shapes)}, {len(strides)} and {len(feature_shapes)}."
            )
        self.extra_positive_iou = None if extra_positive_iou is None else float(extra_positive_iou)
        self.neighbour_cells = bool(neighbour_cells)
        self.xy_scale = float(xy_scale)
        wh, level_of, index_in_level, offsets = [], [], [], []
        anchors, anchor_strides, anchor_wh = [], [], []
        total = 0
        for level, (shapes, stride, (fh, fw)) in enumerate(zip(anchor_shapes, strides, feature_shapes)):
            shapes = np.asarray(shapes, np.float32).reshape(-1, 2)
            offsets.append(total)
            for a, (w, h) in enumerate(shapes):
                wh.append((w, h))
                level_of.append(level)
                index_in_level.append(a)
            rows, cols = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
            centres = np.stack([cols, rows], -1).reshape(-1, 1, 2).astype(np.float32) * stride
            centres = np.broadcast_to(centres, (fh * fw, len(shapes), 2)).reshape(-1, 2)
            sizes = np.tile(shapes, (fh * fw, 1))
            anchors.append(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1))
            anchor_strides.append(np.full(len(sizes), stride, np.float32))
            anchor_wh.append(sizes)
            total += fh * fw * len(shapes)
        self.anchors = np.concatenate(anchors).astype(np.float32)
        self.anchor_strides = np.concatenate(anchor_strides)
        self._anchor_wh = np.concatenate(anchor_wh).astype(np.float32)
        self._grid = np.floor((self.anchors[:, :2] + self.anchors[:, 2:]) / 2 / self.anchor_strides[:, None] + 1e-4)
        level_of = np.array(level_of)
        # Per candidate shape k: what is needed to find its slot in the flat anchor list.
        self._shape_wh = np.array(wh, np.float32)
        self._shape_stride = np.array([strides[lvl] for lvl in level_of], np.float32)
        self._shape_fh = np.array([feature_shapes[lvl][0] for lvl in level_of], np.int32)
        self._shape_fw = np.array([feature_shapes[lvl][1] for lvl in level_of], np.int32)
        self._shape_count = np.array([len(anchor_shapes[lvl]) for lvl in level_of], np.int32)
        self._shape_offset = np.array([offsets[lvl] for lvl in level_of], np.int32)
        self._shape_index = np.array(index_in_level, np.int32)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    def shape_ious(self, gt_wh):
        """Centred IoU (..., K) of each (..., 2) width/height with the K anchor shapes."""
        # The IoU of boxes sharing one centre: kdet's IoU of the zero-centred boxes.
        gt_wh = tf.cast(gt_wh, tf.float32)
        centred = tf.concat([-gt_wh / 2, gt_wh / 2], axis=-1)
        shapes = tf.constant(np.concatenate([-self._shape_wh / 2, self._shape_wh / 2], axis=-1))
        return iou(centred[..., None, :], shapes)[..., 0, :]

    def best_shapes(self, gt_wh):
        """Index of the anchor shape with the best centred IoU for each (..., 2) width/height."""
        return tf.argmax(self.shape_ious(gt_wh), axis=-1, output_type=tf.int32)

    def __call__(self, gt_boxes, gt_labels) -> dict:
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_labels = tf.cast(gt_labels, tf.int32)
        batch, num_gt = tf.shape(gt_boxes)[0], tf.shape(gt_boxes)[1]
        valid = gt_labels >= 0
        centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        ious = self.shape_ious(gt_boxes[..., 2:] - gt_boxes[..., :2])  # (B, M, K)
        num_shapes = len(self._shape_wh)
        chosen = tf.one_hot(tf.argmax(ious, axis=-1, output_type=tf.int32), num_shapes) > 0
        if self.extra_positive_iou is not None:
            chosen |= ious >= self.extra_positive_iou
        chosen &= valid[..., None]

        def per_shape(values):
            return tf.constant(values)[None, None, :]  # broadcast over (B, M, K)

        stride = per_shape(self._shape_stride)
        fw, fh = per_shape(self._shape_fw), per_shape(self._shape_fh)
        grid_x, grid_y = centre[..., :1] / stride, centre[..., 1:] / stride  # (B, M, K) in cells
        col = tf.clip_by_value(tf.cast(tf.floor(grid_x), tf.int32), 0, fw - 1)
        row = tf.clip_by_value(tf.cast(tf.floor(grid_y), tf.int32), 0, fh - 1)
        cells = [(col, row, chosen)]
        if self.neighbour_cells:
            # The neighbour on the side of the centre within its cell, where the grid has one.
            step_x = tf.where(grid_x - tf.cast(col, tf.float32) < 0.5, -1, 1)
            step_y = tf.where(grid_y - tf.cast(row, tf.float32) < 0.5, -1, 1)
            cells.append((col + step_x, row, chosen & (col + step_x >= 0) & (col + step_x < fw)))
            cells.append((col, row + step_y, chosen & (row + step_y >= 0) & (row + step_y < fh)))
        slot = tf.stack([per_shape(self._shape_offset) + (tf.clip_by_value(r, 0, fh - 1) * fw
                                                          + tf.clip_by_value(c, 0, fw - 1))
                         * per_shape(self._shape_count) + per_shape(self._shape_index)
                         for c, r, _ in cells], axis=-1)  # (B, M, K, cells)
        taken = tf.stack([mask for _, _, mask in cells], axis=-1)
        # Owner of each anchor = 1 + index of the (last) GT assigned to it, 0 for none;
        # unchosen (GT, shape) pairs and padded GTs write 0, which never wins the max.
        batch_index = tf.broadcast_to(tf.range(batch)[:, None, None, None], tf.shape(slot))
        indices = tf.reshape(tf.stack([batch_index, slot], axis=-1), (-1, 2))
        owner_value = tf.where(taken, tf.range(1, num_gt + 1)[None, :, None, None], 0)
        owner = tf.tensor_scatter_nd_max(tf.zeros((batch, self.num_anchors), tf.int32), indices,
                                         tf.reshape(owner_value, (-1,)))
        positive = owner > 0
        gt_index = tf.maximum(owner - 1, 0)
        matched_boxes = tf.gather(gt_boxes, gt_index, batch_dims=1)
        labels = tf.where(positive, tf.gather(gt_labels, gt_index, batch_dims=1), -1)
        targets = encode_yolo(matched_boxes, self._grid[None], self._anchor_wh[None], self.anchor_strides[None],
                              xy_scale=self.xy_scale)
        return {
            "positive": tf.cast(positive, tf.float32),
            "labels": labels,
            "matched_boxes": tf.where(positive[..., None], matched_boxes, 0.0),
            "box_targets": tf.where(positive[..., None], targets, 0.0),
        }
