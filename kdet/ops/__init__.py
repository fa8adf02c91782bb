"""Pure tensor functions: XLA-safe, no Keras state."""

from kdet.ops.box_coder import decode_deltas, decode_yolo, encode_deltas, encode_yolo
from kdet.ops.boxes import aligned_iou, area, clip_boxes, convert_format, iou, iou_numpy
from kdet.ops.roi import assign_levels, multilevel_roi_align, multilevel_roi_pool, roi_align, roi_pool
from kdet.ops.nms import batched_nms, combined_nms, suppress_by_overlap
from kdet.ops.suppression import greedy_keep, suppress_sorted
from kdet.ops.masks import paste_masks
