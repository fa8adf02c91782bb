"""How closely an exported model reproduces the Keras detector's top detections."""

from __future__ import annotations

import numpy as np


def top_detection_matches(expected: dict, got: dict, k: int = 10, iou_threshold: float = 0.9) -> list:
    """For each of the top-``k`` expected detections of every image: (its score, reproduced?).

    A detection is reproduced when ``got`` has one with the same label at
    IoU >= ``iou_threshold`` (issue 7's parity rule for quantized exports).

    Args:
        expected: the reference output dict (e.g. Keras ``predict``): boxes
            (B, K, 4) xyxy, scores (B, K), labels (B, K), num_detections (B,);
            detections sorted by score as kdet returns them.
        got: the export's output dict, same layout (its own K).
        k: how many top detections per image to check.
        iou_threshold: minimum IoU of a match.

    Returns:
        list of ``(score, matched)`` pairs, images in order.

    Example:
        >>> d = {"boxes": np.array([[[0., 0, 10, 10]]]), "scores": np.array([[0.5]]),
        ...      "labels": np.array([[1]]), "num_detections": np.array([1])}
        >>> top_detection_matches(d, d)
        [(0.5, True)]
    """
    from kdet.ops import iou

    rows = []
    for i in range(len(expected["num_detections"])):
        n, m = min(int(expected["num_detections"][i]), k), int(got["num_detections"][i])
        if n == 0:
            continue
        boxes_e = np.asarray(expected["boxes"][i, :n], np.float32)
        boxes_g = np.asarray(got["boxes"][i, :m], np.float32)
        overlaps = iou(boxes_e, boxes_g).numpy() if m else np.zeros((n, 0))
        labels_g = np.asarray(got["labels"][i, :m])
        for j in range(n):
            same = labels_g == expected["labels"][i, j]
            matched = bool(((overlaps[j] >= iou_threshold) & same).any())
            rows.append((float(expected["scores"][i, j]), matched))
    return rows


def top_detections_matched(expected: dict, got: dict, k: int = 10, iou_threshold: float = 0.9,
                           min_score: float = 0.0) -> float:
    """Fraction of the top-``k`` expected detections (scoring >= ``min_score``) that ``got`` reproduces.

    See ``top_detection_matches``; 1.0 when there is nothing to match.
    """
    hits = [ok for score, ok in top_detection_matches(expected, got, k, iou_threshold) if score >= min_score]
    return float(np.mean(hits)) if hits else 1.0
