"""kdet.ops.combined_nms / batched_nms against TensorFlow's kernels and NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import _nms_core as core
from kdet.ops.nms import batched_nms, combined_nms


def random_case(rng, batch, num_boxes, num_classes, per_class_boxes=False, scale=100.0):
    """Random xyxy boxes (clustered so NMS has work) and float32 probabilities."""
    centre = rng.uniform(0, scale, (batch, num_boxes, 2))
    size = rng.uniform(0.05, 0.5, (batch, num_boxes, 2)) * scale
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1)
    if per_class_boxes:
        boxes = boxes[:, :, None] + rng.normal(0, 0.02 * scale, (batch, num_boxes, num_classes, 4))
    return boxes.astype(np.float32), rng.uniform(size=(batch, num_boxes, num_classes)).astype(np.float32)


def tf_combined(boxes, scores, per_class, total, iou, score):
    """TensorFlow's op on xyxy boxes (it wants y1x1y2x2); returns kdet's dict in NumPy."""
    yxyx = boxes[..., [1, 0, 3, 2]]
    if yxyx.ndim == 3:
        yxyx = yxyx[:, :, None]
    b, s, c, n = tf.image.combined_non_max_suppression(
        yxyx, scores, per_class, total, iou, score, clip_boxes=False)
    return {"boxes": b.numpy()[..., [1, 0, 3, 2]], "scores": s.numpy(),
            "labels": c.numpy().astype(np.int32), "num_detections": n.numpy()}


def rows(out, b):
    """Valid (score, label, box) rows of image b, in a tie-independent order."""
    n = int(out["num_detections"][b])
    r = np.concatenate([np.asarray(out["scores"])[b, :n, None],
                        np.asarray(out["labels"])[b, :n, None].astype(np.float64),
                        np.asarray(out["boxes"])[b, :n]], 1).astype(np.float64)
    return r[np.lexsort(r.T[::-1])]


def assert_same_detections(got, want, rtol=1e-6):
    got = {k: np.asarray(v) for k, v in got.items()}
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    for b in range(len(want["num_detections"])):
        np.testing.assert_allclose(rows(got, b), rows(want, b), rtol=rtol, atol=1e-6)
    valid = np.arange(got["scores"].shape[1])[None] < got["num_detections"][:, None]
    assert (got["labels"][~valid] == -1).all() and (got["scores"][~valid] == 0).all()
    assert (got["boxes"][~valid] == 0).all()
    assert (np.diff(np.where(valid, got["scores"], -1), axis=1) <= 0).all()  # sorted


@pytest.mark.parametrize("round_size,all_rows", [(512, 1024), (64, 0), (8, 0)])
def test_matches_tf_combined_nms_on_random_inputs(monkeypatch, round_size, all_rows):
    # all_rows=0 sends the one-round path through its top-k of candidate rows;
    # round size 8 forces many ordered rounds: exactness must hold on every path.
    monkeypatch.setattr(core, "ROUND_SIZE", round_size)
    monkeypatch.setattr(core, "ALL_ROWS", all_rows)
    rng = np.random.default_rng(round_size)
    for _ in range(25 if round_size > 8 else 10):
        batch, n, c = int(rng.integers(1, 4)), int(rng.integers(0, 120)), int(rng.integers(1, 7))
        per_class_boxes = bool(rng.integers(2)) and c > 1
        boxes, scores = random_case(rng, batch, n, c, per_class_boxes)
        args = (int(rng.integers(1, 20)), int(rng.integers(1, 40)),
                float(rng.choice([0.0, 0.3, 0.5, 0.7, 1.0])), float(rng.uniform(0, 0.9)))
        got = combined_nms(boxes, scores, *args)
        assert_same_detections(got, tf_combined(boxes, scores, *args))


def test_ties_duplicates_and_flipped_corners_match_tf():
    rng = np.random.default_rng(3)
    boxes, scores = random_case(rng, 2, 40, 3)
    boxes[:, ::3] = boxes[:, ::3][..., [2, 3, 0, 1]]   # corners in the other order
    boxes[:, 20:] = boxes[:, :20]                      # exact duplicate boxes ...
    scores[:, 20:] = scores[:, :20]                    # ... with exactly tied scores
    # A block of tied scores on disjoint boxes: the selection cannot depend on
    # how ties are ordered (TensorFlow's heap order is arbitrary).
    boxes[:, 5:10] = np.array([[1000.0 + 20 * i, 0, 1010 + 20 * i, 10] for i in range(5)])
    scores[:, 5:10] = 0.5
    boxes[0, 7, 2] = boxes[0, 7, 0]                    # a zero-area box
    for args in [(5, 20, 0.5, 0.1), (40, 80, 0.0, 0.0), (2, 3, 1.0, 0.0)]:
        assert_same_detections(combined_nms(boxes, scores, *args),
                               tf_combined(boxes, scores, *args))


def test_ties_are_broken_by_lower_index():
    boxes = np.array([[[10.0 * i, 0, 10.0 * i + 5, 5] for i in range(6)]], np.float32)
    out = combined_nms(boxes, np.full((1, 6, 2), 0.7, np.float32), 10, 4, 0.5, 0.05)
    # Flat index = box * C + class: (0, 0), (0, 1), (1, 0), (1, 1).
    np.testing.assert_array_equal(out["labels"][0], [0, 1, 0, 1])
    np.testing.assert_array_equal(out["boxes"][0, :, 0], [0, 0, 10, 10])


def test_empty_and_below_threshold_inputs():
    for boxes, scores in [(np.zeros((2, 0, 4), np.float32), np.zeros((2, 0, 3), np.float32)),
                          (random_case(np.random.default_rng(0), 2, 30, 3)[0],
                           np.full((2, 30, 3), 0.05, np.float32))]:
        out = combined_nms(boxes, scores, 10, 7, 0.5, 0.05)
        assert out["boxes"].shape == (2, 7, 4) and out["labels"].dtype == tf.int32
        np.testing.assert_array_equal(out["num_detections"], [0, 0])
        np.testing.assert_array_equal(out["labels"], -np.ones((2, 7)))
        assert not np.asarray(out["boxes"]).any() and not np.asarray(out["scores"]).any()
        assert_same_detections(out, tf_combined(boxes, scores, 10, 7, 0.5, 0.05))


def soft_reference(boxes, scores, per_class, total, score_threshold, sigma):
    """Per-class tf.image.non_max_suppression_with_scores, merged by decayed score."""
    out = {"boxes": np.zeros((len(boxes), total, 4)), "scores": np.zeros((len(boxes), total)),
           "labels": -np.ones((len(boxes), total), np.int32), "num_detections": np.zeros(len(boxes), int)}
    for b in range(len(boxes)):
        found = []
        for c in range(scores.shape[-1]):
            idx, sc = tf.image.non_max_suppression_with_scores(
                boxes[b, :, [1, 0, 3, 2]].T, scores[b, :, c], per_class, iou_threshold=1.0,
                score_threshold=score_threshold, soft_nms_sigma=sigma)
            found += [(s, c, boxes[b, i]) for i, s in zip(idx.numpy(), sc.numpy())]
        found.sort(key=lambda t: -t[0])
        for k, (s, c, box) in enumerate(found[:total]):
            out["scores"][b, k], out["labels"][b, k], out["boxes"][b, k] = s, c, box
        out["num_detections"][b] = min(total, len(found))
    return out


@pytest.mark.parametrize("round_size", [1024, 6])
def test_soft_nms_matches_tf_per_class(monkeypatch, round_size):
    # round_size 6 forces the exactness check to fall back to all candidates.
    monkeypatch.setattr(core, "ROUND_SIZE", round_size)
    rng = np.random.default_rng(7)
    for sigma, per_class, total, thr in [(0.5, 5, 12, 0.1), (0.1, 20, 30, 0.3), (1.0, 3, 4, 0.0)]:
        boxes, scores = random_case(rng, 2, 30, 3)
        got = combined_nms(boxes, scores, per_class, total, 0.5, thr, soft_nms_sigma=sigma)
        assert_same_detections(got, soft_reference(boxes, scores, per_class, total, thr, sigma),
                               rtol=1e-5)


def agnostic_reference(boxes, scores, per_class, total, iou_threshold, score_threshold):
    """Greedy over all (box, class) pairs by score: any selected box suppresses."""
    def iou(a, b):
        a, b = np.sort(a.reshape(2, 2), 0).ravel(), np.sort(b.reshape(2, 2), 0).ravel()
        area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
        if area(a) <= 0 or area(b) <= 0:
            return 0.0
        w = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
        h = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
        return w * h / (area(a) + area(b) - w * h)

    batch, n, c = scores.shape
    out = {"boxes": np.zeros((batch, total, 4)), "scores": np.zeros((batch, total)),
           "labels": -np.ones((batch, total), np.int32), "num_detections": np.zeros(batch, int)}
    for b in range(batch):
        order = sorted(range(n * c), key=lambda f: (-scores[b].ravel()[f], f))
        kept, counts = [], np.zeros(c, int)
        for f in order:
            box, cls, s = boxes[b, f // c], f % c, scores[b].ravel()[f]
            if s <= score_threshold or len(kept) == total:
                break
            if counts[cls] < per_class and all(iou(box, k[2]) <= iou_threshold for k in kept):
                kept.append((s, cls, box))
                counts[cls] += 1
        for k, (s, cls, box) in enumerate(kept):
            out["scores"][b, k], out["labels"][b, k], out["boxes"][b, k] = s, cls, box
        out["num_detections"][b] = len(kept)
    return out


@pytest.mark.parametrize("round_size,all_rows", [(512, 1024), (4, 0)])
def test_class_agnostic_matches_numpy_reference(monkeypatch, round_size, all_rows):
    monkeypatch.setattr(core, "ROUND_SIZE", round_size)
    monkeypatch.setattr(core, "ALL_ROWS", all_rows)
    rng = np.random.default_rng(11)
    for per_class, total, iou, thr in [(100, 100, 0.5, 0.05), (2, 10, 0.3, 0.2), (50, 5, 0.7, 0.0)]:
        boxes, scores = random_case(rng, 2, 25, 4)
        got = combined_nms(boxes, scores, per_class, total, iou, thr, class_agnostic=True)
        assert_same_detections(got, agnostic_reference(boxes, scores, per_class, total, iou, thr))


def test_batched_nms_matches_tf_non_max_suppression():
    rng = np.random.default_rng(5)
    boxes, scores = random_case(rng, 3, 60, 1)
    scores = scores[..., 0] * 4 - 2  # any real numbers, e.g. logits
    idx, num = batched_nms(boxes, scores, 25, 0.4, score_threshold=-1.0)
    assert idx.shape == (3, 25) and idx.dtype == tf.int32
    for b in range(3):
        want = tf.image.non_max_suppression(boxes[b, :, [1, 0, 3, 2]].T, scores[b], 25, 0.4, -1.0)
        assert int(num[b]) == len(want)
        np.testing.assert_array_equal(idx[b, :len(want)], want)
        assert not np.asarray(idx[b, len(want):]).any()  # padded with 0


def test_xla_and_dynamic_batch_match_eager():
    rng = np.random.default_rng(2)
    spec = [tf.TensorSpec([None, 50, 4]), tf.TensorSpec([None, 50, 3])]
    hard = tf.function(lambda b, s: combined_nms(b, s, 8, 12, 0.5, 0.1), jit_compile=True,
                       input_signature=spec)
    for batch in (1, 3):
        boxes, scores = random_case(rng, batch, 50, 3)
        assert_same_detections(hard(boxes, scores), tf_combined(boxes, scores, 8, 12, 0.5, 0.1))
    soft = tf.function(lambda b, s: combined_nms(b, s, 8, 12, 0.5, 0.1, soft_nms_sigma=0.5),
                       jit_compile=True)
    assert_same_detections(soft(boxes, scores), combined_nms(
        boxes, scores, 8, 12, 0.5, 0.1, soft_nms_sigma=0.5), rtol=1e-5)
    single = tf.function(lambda b, s: batched_nms(b, s, 10, 0.5), jit_compile=True)
    for a, b in zip(single(boxes, scores[..., 0]), batched_nms(boxes, scores[..., 0], 10, 0.5)):
        np.testing.assert_array_equal(a, b)


def _builtin_ops(tflite_bytes):
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(tflite_bytes, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        ops.append(custom.decode() if custom else names[builtin])
    return ops


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_litert_builtin_only_and_parity(tmp_path, sigma):
    from ai_edge_litert.interpreter import Interpreter

    module = tf.Module()
    module.detect = tf.function(
        lambda boxes, scores: combined_nms(boxes, scores, 6, 10, 0.5, 0.1, soft_nms_sigma=sigma),
        input_signature=[tf.TensorSpec([None, 40, 4]), tf.TensorSpec([None, 40, 3])])
    tf.saved_model.save(module, str(tmp_path), signatures=module.detect.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite = converter.convert()
    ops = _builtin_ops(tflite)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    assert "WHILE" in ops and "TOPK_V2" in ops, ops
    runner = Interpreter(model_content=tflite).get_signature_runner()
    for batch in (1, 2):  # a dynamic batch dimension survives conversion
        boxes, scores = random_case(np.random.default_rng(batch), batch, 40, 3)
        got = runner(boxes=boxes, scores=scores)
        assert set(got) == {"boxes", "scores", "labels", "num_detections"}
        assert_same_detections(got, module.detect(boxes, scores), rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"boxes": np.zeros((2, 5, 3))}, "boxes must have shape"),
    ({"boxes": np.zeros((5, 4))}, "boxes must have shape"),
    ({"scores": np.zeros((2, 5))}, "scores must have shape"),
    ({"scores": np.zeros((2, 6, 3))}, "must agree"),
    ({"boxes": np.zeros((2, 5, 2, 4))}, "1 or num_classes"),
    ({"boxes": np.full((2, 5, 4), np.nan)}, "NaN or inf"),
    ({"scores": np.full((2, 5, 3), np.inf)}, "NaN or inf"),
    ({"iou_threshold": 1.5}, "iou_threshold"),
    ({"score_threshold": -0.1}, "score_threshold"),
    ({"max_total_size": 0}, "max_total_size"),
    ({"max_output_size_per_class": 2.5}, "max_output_size_per_class"),
    ({"soft_nms_sigma": -1.0}, "soft_nms_sigma"),
    ({"pre_nms_top_k": 0}, "pre_nms_top_k"),
    ({"boxes": np.array([["a"] * 4] * 5)[None]}, "float tensor"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    args = {"boxes": np.zeros((2, 5, 4), np.float32), "scores": np.zeros((2, 5, 3), np.float32),
            "max_output_size_per_class": 3, "max_total_size": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        combined_nms(**args)


def test_batched_nms_bad_inputs():
    with pytest.raises(ValueError, match="scores must have shape"):
        batched_nms(np.zeros((1, 3, 4)), np.zeros((1, 4)), 2)
    with pytest.raises(ValueError, match="max_output_size"):
        batched_nms(np.zeros((1, 3, 4)), np.zeros((1, 3)), 0)
    with pytest.raises(ValueError, match="NaN"):
        batched_nms(np.zeros((1, 3, 4)), np.zeros((1, 3)), 2, score_threshold=float("nan"))


def test_pre_nms_top_k_limits_candidates():
    boxes = np.array([[[10.0 * i, 0, 10.0 * i + 5, 5] for i in range(6)]], np.float32)
    scores = np.linspace(0.9, 0.4, 6, dtype=np.float32).reshape(1, 6, 1)
    out = combined_nms(boxes, scores, 10, 10, 0.5, 0.05, pre_nms_top_k=4)
    np.testing.assert_array_equal(out["num_detections"], [4])
    np.testing.assert_allclose(out["scores"][0, :4], scores[0, :4, 0])


def test_benchmark_quick_mode_runs(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "nms.py"
    spec = importlib.util.spec_from_file_location("bench_nms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "nms.md"
    assert module.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| B | N | C |" in text and "uniform" in text and "trained" in text
