"""LiteRT export accuracy: COCO mAP of float32 / float16 / int8 models vs Keras, on synthetic data.

Usage:
    python benchmarks/export_accuracy.py          # trained tiny RetinaNet, writes docs/benchmarks/export_accuracy.md
    python benchmarks/export_accuracy.py --quick  # a briefly trained model, few images (CI runs it)

A tiny RetinaNet is trained with ``compile()`` defaults on the synthetic train
split, exported with ``kdet.export.litert`` at every quantization (builtin ops
only, NMS inside), and every model is evaluated with ``kdet.metrics.coco_map``
on the same held-out synthetic images; the table gives each export's mAP and
its drop from the Keras model, the fraction of the Keras top-10 detections
it reproduces (IoU >= 0.9, same label: the issue 7 bar) and its latency
(batch 1, median of one ``ai_edge_litert`` signature runner).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import machine_summary, markdown_table, median_ms, publish  # noqa: E402

QUANTIZATIONS = (None, "float16", "dynamic_int8", "int8")
CONFIDENT = 0.3  # the "top-10 matched, score >= 0.3" column: misses below it are near-threshold or near-tie boxes


def batched_litert(path, images: np.ndarray) -> dict:
    """Runs a .tflite detector image by image and stacks the output dicts."""
    from kdet.export import run_litert

    outs = [run_litert(path, images[i:i + 1].astype(np.float32)) for i in range(len(images))]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def latency_ms(path, image: np.ndarray, repeats: int) -> float:
    """Median ms of one signature runner on a (1, H, W, 3) float32 batch."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    name = interpreter.get_signature_list()["serving_default"]["inputs"][0]
    return median_ms(lambda: runner(**{name: image}), repeats=repeats, warmup=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images and epochs (CI)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    import keras

    import kdet
    from kdet.export.parity import top_detections_matched
    from kdet.metrics import coco_map

    train_n, test_n, epochs = (16, 4, 2) if args.quick else (200, 64, 30)
    epochs = args.epochs or epochs
    keras.utils.set_random_seed(0)
    x, y = kdet.data.synthetic_arrays(train_n, 128, seed=0)
    xt, yt = kdet.data.synthetic_arrays(test_n, 128, seed=0, split="validation")
    model = kdet.models.RetinaNet(3, backbone="tiny", image_size=128)
    model.compile(evaluate_coco=False)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    expected = model.predict(xt, verbose=0)
    reference = coco_map(yt, expected)
    repeats = 5 if args.quick else 50
    rows = [("Keras (float32)", "-", f"{reference['AP']:.3f}", f"{reference['AP50']:.3f}", "-", "-", "-", "-", "-")]
    with tempfile.TemporaryDirectory() as folder:
        for quantization in QUANTIZATIONS:
            name = quantization or "float32"
            path = kdet.export.litert(model, os.path.join(folder, f"{name}.tflite"), quantization=quantization,
                                      representative_data=[x[i:i + 1].astype(np.float32) for i in range(8)])
            got = batched_litert(path, xt)
            metrics = coco_map(yt, got)
            rows.append((f"LiteRT {name}", f"{os.path.getsize(path) / 1024:.0f}", f"{metrics['AP']:.3f}",
                         f"{metrics['AP50']:.3f}", f"{metrics['AP'] - reference['AP']:+.3f}",
                         f"{metrics['AP50'] - reference['AP50']:+.3f}", f"{top_detections_matched(expected, got):.3f}",
                         f"{top_detections_matched(expected, got, min_score=CONFIDENT):.3f}",
                         f"{latency_ms(path, xt[:1].astype(np.float32), repeats):.2f}"))
            print(rows[-1], flush=True)
    text = (
        "### LiteRT export accuracy (COCO mAP on held-out synthetic images)\n\n"
        f"`python benchmarks/export_accuracy.py{' --quick' if args.quick else ''}`: tiny RetinaNet (128 px) "
        f"trained {epochs} epochs with `compile()` defaults on {train_n} synthetic images, evaluated with "
        f"`kdet.metrics.coco_map` on {test_n} held-out images; int8 calibrated on 8 training images "
        f"(networks int8 but for the heads' predictor convolutions, pre/post-processing float32). "
        f"\"top-10 matched\": fraction of the Keras top-10 detections of every held-out image found in the "
        f"export's output at IoU >= 0.9 with the same label (\"score >= {CONFIDENT}\": of those Keras scores "
        f"at least {CONFIDENT}). "
        f"Latency: batch 1, median of {repeats} runs of one `ai_edge_litert` signature runner "
        f"(default threads). {machine_summary()}\n\n"
        + markdown_table(("model", "size (KiB)", "AP", "AP50", "AP change", "AP50 change", "top-10 matched",
                          f"top-10 matched, score >= {CONFIDENT}", "latency (ms)"), rows)
    )
    return publish(text, args.out, args.quick, "export_accuracy.md", start)


if __name__ == "__main__":
    sys.exit(main())
