"""``SingleStageConfig.top_k_rule``: which candidates ``pre_nms_top_k`` keeps, against NumPy references.

* "pair": torchvision's RetinaNet ``postprocess_detections``: per level, the k best (anchor, class) pairs of the
  flattened (anchor, head output) scores; every head output competes, pairs of outputs that are no kdet label
  are dropped afterwards.
* "class": torchvision's SSD ``postprocess_detections``: each class keeps its k best anchors.
"""

import numpy as np
import pytest
import tensorflow as tf

from kdet.models import SSD, RetinaNet

IDS = (4, 0, 2)  # kdet label -> head output; outputs 1 and 3 are no kdet label


@pytest.fixture(scope="module")
def retinanet():
    return RetinaNet(3, backbone="tiny", image_size=64, top_k_rule="pair", pre_nms_top_k=20, head_output_ids=IDS,
                     score_threshold=0.0)


def _logits(shape, seed):
    return np.random.default_rng(seed).normal(0.0, 2.0, shape).astype(np.float32)


def test_pairs_are_torchvision_per_level_top_k(retinanet):
    canvas = (64, 64)
    counts = retinanet.level_counts(canvas)
    anchors = sum(counts)
    logits = _logits((2, anchors, 5), 0)
    boxes = tf.constant(np.random.default_rng(1).uniform(0, 64, (2, anchors, 4)), tf.float32)
    got_boxes, got_scores = retinanet._top_pairs(boxes, tf.constant(logits), canvas)
    got_boxes, got_scores = np.asarray(got_boxes), np.asarray(got_scores)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    label_of = {head: label for label, head in enumerate(IDS)}
    for b in range(2):
        expected, start = [], 0
        for count in counts:  # torchvision: scores_per_level.flatten().topk(k); anchor = i // C, class = i % C
            flat = probs[b, start:start + count].reshape(-1)
            for i in np.argsort(-flat, kind="stable")[:20]:
                anchor, head = start + i // 5, i % 5
                if head in label_of:
                    expected.append((anchor, label_of[head], flat[i]))
            start += count
        rows = np.flatnonzero(got_scores[b].max(axis=1) > 0)
        got = sorted((int(np.flatnonzero(np.all(np.asarray(boxes[b]) == got_boxes[b, r], axis=1))[0]),
                      int(np.argmax(got_scores[b, r])), got_scores[b, r].max()) for r in rows)
        expected = sorted(expected)
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], rtol=1e-5)
        # One class per candidate row: the other columns are 0.
        assert np.all((got_scores[b] > 0).sum(axis=1) <= 1)


def test_pair_rule_end_to_end_equals_nms_of_those_pairs(retinanet):
    """The whole postprocess = CombinedNMS over exactly the selected pairs (each its own class's candidate)."""
    images = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    raw, frame = retinanet.forward(images)
    out = retinanet.postprocess(raw, frame)
    from kdet.models.single_stage import clip_to_valid

    boxes = clip_to_valid(retinanet.decoder(raw["box"], retinanet.anchors_for(frame["canvas"])), frame)
    pair_boxes, pair_scores = retinanet._top_pairs(boxes, raw["cls"], frame["canvas"])
    expected = retinanet.nms(pair_boxes, pair_scores)
    for key in ("boxes", "scores", "labels", "num_detections"):
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(expected[key]), rtol=1e-6)
    assert int(out["num_detections"][0]) > 0


def test_class_rule_keeps_each_class_best_anchors():
    model = SSD(3, backbone="tiny", image_size=96, top_k_rule="class", pre_nms_top_k=7)
    scores = np.random.default_rng(3).uniform(0, 1, (2, 50, 3)).astype(np.float32)
    kept = np.asarray(model._top_per_class(tf.constant(scores)))
    for b in range(2):
        for c in range(3):
            best = np.argsort(-scores[b, :, c])[:7]
            assert set(np.flatnonzero(kept[b, :, c])) == set(best)
            np.testing.assert_array_equal(kept[b, best, c], scores[b, best, c])


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="top_k_rule must be one of .*received 'pairs'"):
        RetinaNet(3, backbone="tiny", image_size=64, top_k_rule="pairs")
