"""Full-integer int8 LiteRT export: int8 networks, float predictors and post-processing, detections kept.

Before the fix the converter also quantized decoding, sigmoid and NMS and the
int8 model returned no detection at all; these tests fail on that. With the
heads' predictor convolutions int8 as well, confident detections (Keras score
0.3 to 0.9) were lost to 8-bit logits; the CONFIDENT rule fails on that.
"""

import keras
import numpy as np
import pytest

import kdet
from kdet.data import synthetic_arrays
from kdet.export import litert_operator_types, litert_operators, run_litert
from kdet.export.parity import top_detection_matches
from kdet.export.quantize import network_scopes, representative_batches
from tests.helpers import TinyAnchorDetector

CONFIDENT = 0.3  # Keras detections at least this sure must all be reproduced
# Fraction of all Keras top-10 detections reproduced (0.94 measured): the misses are low-score
# (< 0.3) boxes that int8 noise pushes under the 0.05 score threshold or past
# a near-tie in NMS (dynamic_int8 loses some of those too).
MIN_TOP10_MATCHED = 0.9


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # Overfitted on 8 images (about 25 s on 2 cores) so that the top detections are confident.
    keras.utils.set_random_seed(1)
    x, y = synthetic_arrays(8, 128, seed=0)
    model = TinyAnchorDetector()
    model.compile(evaluate_coco=False, augment=None)  # a memorisation fixture: no flips
    model.fit(x, y, batch_size=8, epochs=100, verbose=0)
    x = x.astype(np.float32)
    path = kdet.export.litert(model, tmp_path_factory.mktemp("int8") / "int8.tflite", quantization="int8",
                              representative_data=x)
    return model, x, path


def test_int8_export_keeps_top_detections(trained):
    model, x, path = trained
    expected = model.predict(x, verbose=0)
    got = run_litert(path, x)
    assert {"boxes", "scores", "labels", "num_detections"} <= set(got)
    rows = top_detection_matches(expected, got)
    confident = [ok for score, ok in rows if score >= CONFIDENT]
    assert len(confident) >= 8, "fixture too weak: too few confident Keras detections to compare"
    assert all(confident), rows
    assert np.mean([ok for _, ok in rows]) >= MIN_TOP10_MATCHED, rows
    # Scores stay float: not on the 1/256 grid of an int8 sigmoid.
    valid = got["scores"][got["labels"] >= 0]
    assert np.mean(np.abs(valid * 256 - np.round(valid * 256)) > 1e-3) > 0.5


def test_int8_export_quantizes_networks_only(trained):
    _, _, path = trained
    ops = litert_operators(path)
    assert not any(op.startswith("CUSTOM") for op in ops), ops
    kdet.export.assert_builtin_only(path)
    types = litert_operator_types(path)
    convs = [t for op, t in types if op == "CONV_2D"]
    # Every conv is int8 but the predictors (cls and box on P3, P4, P5): their logits and deltas stay float.
    assert convs.count(("FLOAT32",)) == 2 * 3 and convs.count(("INT8",)) == len(convs) - 2 * 3, convs
    for op, t in types:  # decoding, scores, top-k and NMS are float
        if op in ("EXP", "LOGISTIC", "TOPK_V2", "WHILE", "NON_MAX_SUPPRESSION_V5"):
            assert "INT8" not in t, (op, t)
    from ai_edge_litert.interpreter import Interpreter

    signature = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    inputs = signature.get_input_details()
    assert [v["dtype"] for v in inputs.values()] == [np.float32]
    assert set(signature.get_output_details()) == {"boxes", "scores", "labels", "num_detections"}


def test_network_scopes():
    model = TinyAnchorDetector()
    assert network_scopes(model) == ["network", "tiny_backbone"]


def test_representative_batches_forms_and_errors():
    x = np.zeros((3, 16, 16, 3), np.uint8)
    for data in (x, list(x), [x[:2], x[2:]]):
        batches = representative_batches(data, (16, 16))
        assert len(batches) == 3 and all(b.shape == (1, 16, 16, 3) and b.dtype == np.float32 for b in batches)
    with pytest.raises(ValueError, match="empty"):
        representative_batches([], (16, 16))
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        representative_batches(np.zeros((2, 8, 8, 3)), (16, 16))
    with pytest.raises(ValueError, match="representative_data"):
        representative_batches(np.zeros((2, 16, 16, 5)), (16, 16))
