"""kdet.export.parity: the top-k detection matching rule used for quantized exports."""

from __future__ import annotations

import numpy as np

from kdet.export.parity import top_detection_matches, top_detections_matched


def _dets(boxes, scores, labels):
    n = len(scores)
    return {"boxes": np.array([boxes], np.float32), "scores": np.array([scores], np.float32),
            "labels": np.array([labels], np.int32), "num_detections": np.array([n], np.int32)}


def test_matches_need_same_label_and_high_iou():
    expected = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.6, 0.2], [0, 1, 2])
    got = _dets([[0, 0, 10, 10.5], [20, 20, 30, 30], [40, 40, 45, 50]], [0.8, 0.7, 0.3], [0, 2, 2])
    # IoU 0.95 same label; same box other label; same label IoU 0.5.
    assert top_detection_matches(expected, got) == [(np.float32(0.9), True), (np.float32(0.6), False),
                                                     (np.float32(0.2), False)]
    assert top_detections_matched(expected, got) == 1 / 3
    assert top_detections_matched(expected, got, min_score=0.5) == 0.5
    assert top_detections_matched(expected, got, iou_threshold=0.5) == 2 / 3


def test_only_top_k_count_and_empty_outputs():
    expected = _dets([[0, 0, 10, 10]] * 3, [0.9, 0.8, 0.7], [0, 0, 0])
    nothing = _dets(np.zeros((0, 4)), [], [])
    assert len(top_detection_matches(expected, expected, k=2)) == 2
    assert top_detections_matched(expected, nothing) == 0.0
    assert top_detections_matched(nothing, expected) == 1.0
