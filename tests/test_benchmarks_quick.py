"""The benchmark scripts keep working: each runs in --quick mode (CI does not assert speed)."""

import datetime
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))


def run_quick(script: str, *extra: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_inference_quick():
    out = run_quick("inference.py")
    assert ("| batch | mode | kdet path | kdet img/s | keras-cv img/s | keras-hub img/s | kdet / keras-cv "
            "| kdet / keras-hub |") in out
    assert "GFLOPs/img" in out


def test_training_quick():
    out = run_quick("training.py")
    assert "kdet steps/s" in out and "| model | parameters | steps |" in out


def test_hardware_quick(tmp_path):
    fragment = tmp_path / "hw.md"
    out = run_quick("hardware.py", "--out", str(fragment))
    assert "default % of peak" in out and "Peaks (" in out and "| graph bfloat16 img/s |" in out
    assert fragment.read_text().startswith("### Hardware limit")


def test_export_quick():
    out = run_quick("export.py")
    assert "| architecture | weights | input | size (KiB) | latency (ms) |" in out


def test_export_accuracy_quick():
    out = run_quick("export_accuracy.py")
    assert "| model | size (KiB) | AP | AP50 | AP change | AP50 change |" in out
    assert out.count("| LiteRT ") == 4


@pytest.mark.slow  # ~40 s: it runs the `mtcnn` package too
def test_mtcnn_quick_reports_the_batch_cpu_target(tmp_path):
    out = run_quick("mtcnn.py", "--out", str(tmp_path / "mtcnn.md"))
    assert "**Target (issue 19): batch of 8, CPU time.**" in out and "CPU-time ratio (target >= 3)" in out
    assert "SUMMARY mtcnn / kdet: batch 1 (ivan.jpg) wall" in out
    results = json.loads((tmp_path / "mtcnn.json").read_text())
    assert results["targets"][0]["target"] == "MTCNN batch of 8 >= 3x the `mtcnn` package in CPU time"
    assert results["batch_cpu_ratio"] == pytest.approx(
        results["batch_cpu_ms"]["mtcnn"] / results["batch_cpu_ms"]["kdet"])


def test_train_synthetic_quick_with_diagnostics(tmp_path):
    out = run_quick("train_synthetic.py", "retinanet_tiny", "--diagnose", "--bfloat16", "--difficulty", "hard",
                    "--out", str(tmp_path / "learning.md"))
    assert "| retinanet_tiny |" in out and "Reduced budget" in out
    assert "| train AP50 | AP50 class-agnostic | AP50 bfloat16 | bfloat16 - float32 |" in out
    results = json.loads((tmp_path / "learning.json").read_text())
    run = results["runs"][0]
    assert run["epochs"] == 1 and results["targets"][0]["met"] == "not at the bar protocol"
    assert run["difficulty"] == "hard" and 0 <= run["train_AP50"] <= 1 and 0 <= run["AP50_class_agnostic"] <= 1
    assert 0 <= run["AP50_bfloat16"] <= 1


@pytest.mark.slow  # ~2 min: converts the official yolov3-tiny weights and trains two 416-px models one step
def test_finetune_quick(tmp_path, yolov3_tiny_weights):
    out = run_quick("finetune.py", "--out", str(tmp_path / "finetune.md"))
    assert "| model | seed | train images | epochs | steps |" in out
    assert "pretrained seed 0: AP50" in out and "scratch seed 0: AP50" in out
    data = json.loads((tmp_path / "finetune.json").read_text())
    assert [r["kind"] for r in data["runs"]] == ["pretrained", "scratch"]
    assert data["targets"][0]["met"] == "not at the bar protocol"


def test_function_gflops_matches_conv_arithmetic():
    """Oracle: a bias-free 3x3 Conv2D costs 2 * H * W * Cout * 3 * 3 * Cin FLOPs."""
    import keras
    import tensorflow as tf
    from _common import function_gflops

    conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)
    flops = function_gflops(conv, tf.TensorSpec((1, 16, 16, 4), tf.float32)) * 1e9
    assert flops == pytest.approx(2 * 16 * 16 * 8 * 3 * 3 * 4)


def test_keras_cv_detections_convert_to_kdet_dict():
    import numpy as np
    from training import keras_cv_to_kdet

    pred = {"boxes": np.ones((1, 3, 4)), "confidence": np.array([[0.9, 0.5, -1.0]]),
            "classes": np.array([[2, 1, -1]]), "num_detections": np.array([2])}
    out = keras_cv_to_kdet(pred)
    np.testing.assert_array_equal(out["labels"], [[2, 1, -1]])
    np.testing.assert_allclose(out["scores"], [[0.9, 0.5, 0.0]])
    assert out["num_detections"].dtype == np.int32
    # keras-hub's RetinaNetObjectDetector names the classes "labels".
    hub = {**{k: v for k, v in pred.items() if k != "classes"}, "labels": np.array([[0, 2, 1]]),
           "num_detections": np.array([1])}
    np.testing.assert_array_equal(keras_cv_to_kdet(hub)["labels"], [[0, -1, -1]])


def test_run_all_assembles_page(tmp_path):
    from run_all import assemble

    from _common import target

    (tmp_path / "nms.md").write_text("### NMS table\n\n| a |\n|---|\n| 1 |\n")
    (tmp_path / "nms.json").write_text(json.dumps({"load_average": [1.0, 2.0, 3.0], "targets": [
        target("NMS no slower than TF", "0.50x", True), target("other", "1.5x", "partly (1 of 3)")]}))
    # A failed script's JSON (left by an older run) must not reach the page.
    (tmp_path / "training.json").write_text(json.dumps({"targets": [target("stale", "9x", True)]}))
    results = [("nms.py", "nms.md", "NMS section", 0, 1.5, ""),
               ("training.py", "training.md", "Training section", 1, 2.0, "Traceback: boom")]
    page = assemble(results, tmp_path, quick=True, when=datetime.datetime(2026, 1, 2, 3, 4))
    assert "2026-01-02 03:04 UTC" in page and "## Machine" in page and "- cores:" in page
    assert "- tensorflow: " in page and "### NMS table" in page
    assert "failed (exit 1)" in page and "Traceback: boom" in page
    glance = page.split("## Targets at a glance")[1].split("## Machine")[0]
    assert "| NMS no slower than TF | 0.50x | yes | nms.py |" in glance
    assert "| other | 1.5x | partly (1 of 3) | nms.py |" in glance
    assert "stale" not in page and "not measured: the script failed (exit 1)" in glance
    assert "| 1.0/2.0/3.0 |" in page


def test_publish_writes_results_beside_fragment(tmp_path):
    import time

    from _common import publish, target

    publish("### T\n", tmp_path / "x.md", quick=True, fragment="x.md", start=time.perf_counter(),
            results={"targets": [target("t", "m", False)]})
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["targets"] == [{"target": "t", "measured": "m", "met": False}]
    assert data["quick"] is True and data["seconds"] >= 0 and len(data["load_average"]) == 3


@pytest.mark.slow  # ~1-2 min: OpenCV's Darknet importer and a calibrated int8 LiteRT export of yolov3-tiny
def test_precision_quick(tmp_path):
    out = run_quick("precision.py", "--out", str(tmp_path / "precision.md"))
    assert "| kernel | dtype | compiler | GFLOP/s |" in out and "| bfloat16 | XLA |" in out
    assert "| model | batch | kdet bf16 img/s | kdet f32 img/s | OpenCV img/s |" in out
    assert "| runtime | ms / image | speed vs kdet bf16 |" in out and "LiteRT int8" in out
    results = json.loads((tmp_path / "precision.json").read_text())
    assert results["targets"][0]["target"].startswith("bfloat16 >= 1.5x OpenCV DNN")
    assert [row[1] for row in results["darknet"]] == [1, 8]  # single image and a batch of 8
