"""kdet.ops.nms's fast paths (few, zero, all candidates, ties) and suppress_by_overlap.

Oracle: ``tf.image.combined_non_max_suppression`` (and a NumPy greedy loop for
overlap matrices). Each case runs eagerly, in a ``tf.function`` (the nested
XLA functions that Keras ``predict`` uses) and under ``jit_compile=True``.
"""

import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import _nms_core as core
from kdet.ops.nms import combined_nms, suppress_by_overlap
from tests.ops.test_nms import _builtin_ops, assert_same_detections, tf_combined

ARGS = (20, 30, 0.5, 0.05)  # per class, total, IoU, score threshold


def sparse_case(rng, batch, num_boxes, num_classes, objects=4, per_object=6, background=-9.0):
    """Trained-detector-like inputs: sub-threshold background, a few clusters of candidates.

    Each object is seen by ``per_object`` jittered boxes scoring high for one
    class (sometimes also for a second class), so the one-round path has
    overlapping candidates, rows with two candidate classes, and empty images
    when ``objects`` is 0.
    """
    centre = rng.uniform(0, 200, (batch, num_boxes, 2))
    size = rng.uniform(8, 60, (batch, num_boxes, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1)
    scores = 1 / (1 + np.exp(-rng.normal(background, 1.0, (batch, num_boxes, num_classes))))
    for b in range(batch):
        ids = rng.permutation(num_boxes)[:objects * per_object].reshape(objects, -1)
        for group in ids:
            gt = np.concatenate([rng.uniform(20, 150, 2), rng.uniform(170, 220, 2)])
            boxes[b, group] = gt + rng.normal(0, 4.0, (len(group), 4))
            classes = rng.integers(num_classes, size=2)
            scores[b, group, classes[0]] = rng.uniform(0.1, 1.0, len(group))
            if rng.uniform() < 0.5:
                scores[b, group, classes[1]] = rng.uniform(0.06, 1.0, len(group))
    return boxes.astype(np.float32), scores.astype(np.float32)


def run_modes(boxes, scores, *args, modes=("eager", "graph")):
    """The op eagerly, in a graph (nested XLA, as in Keras predict) and/or under jit_compile."""
    runs = {"eager": lambda b, s: combined_nms(b, s, *args),
            "graph": tf.function(lambda b, s: combined_nms(b, s, *args)),
            "xla": tf.function(lambda b, s: combined_nms(b, s, *args), jit_compile=True)}
    return {mode: runs[mode](boxes, scores) for mode in modes}


@pytest.fixture(params=["all rows", "top-k rows"])
def row_path(request, monkeypatch):
    """The one-round path taking every row, or a top-k of the candidate rows."""
    if request.param == "top-k rows":
        monkeypatch.setattr(core, "ALL_ROWS", 0)
        monkeypatch.setattr(core, "ROUND_SIZE", 64)
    return request.param


@pytest.mark.parametrize("num_classes", [1, 12])
def test_few_candidates_match_tf(row_path, num_classes):
    rng = np.random.default_rng(num_classes)
    boxes, scores = sparse_case(rng, 3, 150, num_classes)
    if num_classes > 1:  # one box per class for the middle image's boxes
        per_class = boxes[:, :, None] + rng.normal(0, 1.0, (3, 150, num_classes, 4))
        boxes = per_class.astype(np.float32)
    want = tf_combined(boxes, scores, *ARGS)
    assert 0 < want["num_detections"].min() and want["num_detections"].max() < ARGS[1]
    modes = ("eager", "graph", "xla") if num_classes == 12 else ("eager", "graph")
    for mode, got in run_modes(boxes, scores, *ARGS, modes=modes).items():
        assert_same_detections(got, want), mode


def test_per_class_cap_binds_on_the_fast_path(row_path):
    boxes, scores = sparse_case(np.random.default_rng(4), 2, 120, 2, objects=6, per_object=3)
    for args in [(2, 30, 0.5, 0.05), (1, 3, 0.0, 0.2)]:
        want = tf_combined(boxes, scores, *args)
        for mode, got in run_modes(boxes, scores, *args).items():
            assert_same_detections(got, want), (mode, args)


def test_zero_candidates_in_some_or_all_images(row_path):
    boxes, scores = sparse_case(np.random.default_rng(5), 3, 80, 4)
    scores[1] = np.minimum(scores[1], 0.05)  # image 1: nothing above the threshold
    for case in (scores, np.minimum(scores, 0.05)):
        want = tf_combined(boxes, case, *ARGS)
        assert want["num_detections"][1] == 0
        for mode, got in run_modes(boxes, case, *ARGS).items():
            assert_same_detections(got, want), mode
            assert (np.asarray(got["labels"])[1] == -1).all()


@pytest.mark.parametrize("num_classes", [1, 4])
def test_every_pair_a_candidate(num_classes):
    # Dense scores: the one-round path reports too many candidates (C > 1) or
    # holds them all (C = 1, every row); the ordered rounds must give TF's output.
    rng = np.random.default_rng(6)
    boxes = np.concatenate([rng.uniform(0, 100, (2, 90, 2)), rng.uniform(110, 200, (2, 90, 2))], -1)
    scores = rng.uniform(0.2, 1.0, (2, 90, num_classes)).astype(np.float32)
    boxes = boxes.astype(np.float32)
    for args in [(100, 100, 0.5, 0.1), (5, 12, 0.9, 0.1)][:1 if num_classes == 1 else 2]:
        want = tf_combined(boxes, scores, *args)
        for mode, got in run_modes(boxes, scores, *args).items():
            assert_same_detections(got, want), (mode, args)


def test_tied_scores_lowest_flat_index_wins(row_path):
    # Rows 0 and 1 overlap; (row 0, class 1) and (row 1, class 1) tie at 0.75.
    # Row 1's best class scores higher, so a row order by best score would put
    # row 1 first; the flat index (row * C + class) must decide: row 0's pair wins.
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[[0.0, 0.75], [0.875, 0.75], [0.75, 0.75]]], np.float32)
    modes = ("eager", "graph", "xla")
    for mode, got in run_modes(boxes, scores, 10, 10, 0.5, 0.05, modes=modes).items():
        got = {k: np.asarray(v) for k, v in got.items()}
        n = int(got["num_detections"][0])
        found = sorted((float(s), int(c), float(b[0])) for s, c, b in
                       zip(got["scores"][0, :n], got["labels"][0, :n], got["boxes"][0, :n]))
        assert found == [(0.75, 0, 50.0), (0.75, 1, 0.0), (0.75, 1, 50.0), (0.875, 0, 1.0)], mode
    # Tied scores on disjoint boxes: the same set as TensorFlow's.
    boxes, scores = sparse_case(np.random.default_rng(8), 2, 60, 3)
    scores = np.where(scores > 0.05, 0.5, scores).astype(np.float32)
    boxes[:, :, 2:] = boxes[:, :, :2] + 1.0  # tiny boxes: few overlaps
    boxes[:, :, :2] += np.arange(60)[None, :, None] * 100.0
    boxes[:, :, 2:] += np.arange(60)[None, :, None] * 100.0
    args = (100, 100, 0.5, 0.05)  # room for every tie: the set is then determined
    want = tf_combined(boxes, scores, *args)
    assert 20 < want["num_detections"].min() and want["num_detections"].max() < 100
    for mode, got in run_modes(boxes, scores, *args).items():
        assert_same_detections(got, want), mode


def test_iou_exactly_at_the_threshold_matches_tf():
    # Thresholds equal to float32 IoUs of actual pairs: kdet's IoU must round
    # like TensorFlow's kernel, or these pairs flip.
    rng = np.random.default_rng(9)
    boxes = np.round(rng.uniform(0, 40, (1, 40, 4)), 1).astype(np.float32)
    boxes[..., 2:] = boxes[..., :2] + np.round(rng.uniform(5, 30, (1, 40, 2)), 1)
    scores = rng.uniform(0.1, 1.0, (1, 40, 1)).astype(np.float32)
    b = boxes[0].astype(np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.maximum(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0)
    ih = np.maximum(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0)
    inter = (ih * iw).astype(np.float32)
    ious = inter / (area[:, None] + area[None, :] - inter)
    for threshold in np.unique(ious[(ious > 0.05) & (ious < 0.95)])[::5]:
        args = (40, 40, float(threshold), 0.05)
        assert_same_detections(combined_nms(boxes, scores, *args), tf_combined(boxes, scores, *args))


def test_litert_one_round_path_builtin_and_exact(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    module = tf.Module()
    module.detect = tf.function(lambda boxes, scores: combined_nms(boxes, scores, *ARGS),
                                input_signature=[tf.TensorSpec([None, 100, 4]),
                                                 tf.TensorSpec([None, 100, 5])])
    tf.saved_model.save(module, str(tmp_path), signatures=module.detect.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite = converter.convert()
    ops = _builtin_ops(tflite)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    runner = Interpreter(model_content=tflite).get_signature_runner()
    boxes, scores = sparse_case(np.random.default_rng(10), 2, 100, 5)
    assert_same_detections(runner(boxes=boxes, scores=scores), tf_combined(boxes, scores, *ARGS))


def greedy_reference(overlap, valid, threshold):
    """Classic greedy NMS over candidates sorted best first."""
    keep = np.zeros_like(valid)
    for b in range(len(valid)):
        for j in range(valid.shape[1]):
            keep[b, j] = valid[b, j] and not (keep[b, :j] & (overlap[b, :j, j] > threshold)).any()
    return keep


def test_suppress_by_overlap_matches_numpy_greedy():
    rng = np.random.default_rng(11)
    overlap = rng.uniform(0, 1, (3, 30, 30)).astype(np.float32) ** 3
    overlap = (overlap + overlap.transpose(0, 2, 1)) / 2  # a symmetric measure
    valid = rng.uniform(size=(3, 30)) < 0.8
    graph = tf.function(lambda o, v: suppress_by_overlap(o, v, 0.3))
    want = greedy_reference(overlap, valid, 0.3)
    assert 0 < want.sum() < valid.sum()
    np.testing.assert_array_equal(suppress_by_overlap(overlap, valid, 0.3), want)
    np.testing.assert_array_equal(graph(overlap, valid), want)
    one_step = valid & ~np.array([[(valid[b, :j] & (overlap[b, :j, j] > 0.3)).any()
                                   for j in range(30)] for b in range(3)])
    np.testing.assert_array_equal(suppress_by_overlap(overlap, valid, 0.3, greedy=False), one_step)


def test_suppress_by_overlap_bad_inputs():
    with pytest.raises(ValueError, match="overlap must have shape"):
        suppress_by_overlap(np.zeros((1, 3, 4)), np.ones((1, 3), bool), 0.5)
    with pytest.raises(ValueError, match="overlap_threshold"):
        suppress_by_overlap(np.zeros((1, 3, 3)), np.ones((1, 3), bool), float("nan"))


def test_many_rows_few_candidates_match_tf():
    # Over ALL_ROWS boxes, at the default sizes, the one-round path picks the
    # candidate rows with a top-k: few candidates spread over the rows, an
    # empty image, tied scores, and images at and just past ROUND_SIZE
    # candidate rows.
    num_rows = 3000
    assert num_rows > core.ALL_ROWS
    rng = np.random.default_rng(12)
    boxes, scores = sparse_case(rng, 3, num_rows, 20, objects=8)
    scores[1] = np.minimum(scores[1], 0.05)  # image 1: no candidate
    # Image 2: every candidate tied, on disjoint boxes (TensorFlow breaks ties
    # among overlapping boxes arbitrarily; disjoint ones fix the set).
    scores[2] = np.where(scores[2] > 0.05, 0.5, scores[2])
    boxes[2, :, 2:] = boxes[2, :, :2] + 1.0
    boxes[2] += np.arange(num_rows, dtype=np.float32)[:, None] * 100.0
    args = (100, 100, 0.5, 0.05)
    want = tf_combined(boxes, scores, *args)
    assert want["num_detections"][0] > 5 and want["num_detections"][2] > 5
    for mode, got in run_modes(boxes, scores, *args, modes=("eager", "graph", "xla")).items():
        assert_same_detections(got, want), mode
    # One class, candidate rows exactly ROUND_SIZE and one more: both sides
    # of the switch from the one-round path to the ordered rounds.
    for count in (core.ROUND_SIZE, core.ROUND_SIZE + 1):
        one = np.full((1, num_rows, 1), 0.01, np.float32)
        chosen = rng.choice(num_rows, count, replace=False)
        one[0, chosen, 0] = rng.uniform(0.1, 1.0, count)
        want = tf_combined(boxes[:1], one, *args)
        for mode, got in run_modes(boxes[:1], one, *args, modes=("graph", "xla")).items():
            assert_same_detections(got, want), (mode, count)


def test_many_rows_tied_overlapping_pair_lowest_flat_index_wins():
    # Two overlapping boxes with the same score, far apart in a many-row
    # input (rows 127 and 2900): the lower flat index must be kept, as on the
    # small-input paths.
    boxes = np.tile(np.array([[500, 500, 510, 510]], np.float32), (1, 3000, 1))
    boxes += np.arange(3000, dtype=np.float32)[None, :, None] * 20.0  # disjoint background
    boxes[0, 127] = [0, 0, 10, 10]
    boxes[0, 2900] = [1, 0, 11, 10]
    scores = np.full((1, 3000, 2), 0.01, np.float32)
    scores[0, 127, 1] = scores[0, 2900, 1] = 0.75
    scores[0, 2900, 0] = 0.875
    for mode, got in run_modes(boxes, scores, 10, 10, 0.5, 0.05,
                               modes=("eager", "graph", "xla")).items():
        got = {k: np.asarray(v) for k, v in got.items()}
        n = int(got["num_detections"][0])
        found = sorted((float(s), int(c), float(b[0])) for s, c, b in
                       zip(got["scores"][0, :n], got["labels"][0, :n], got["boxes"][0, :n]))
        assert found == [(0.75, 1, 0.0), (0.875, 0, 1.0)], mode
