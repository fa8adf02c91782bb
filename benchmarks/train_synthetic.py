"""Learning benchmark: train small detector configurations on synthetic data, report held-out COCO mAP.

Each configuration is trained with its own ``model.compile()`` defaults and a
plain ``model.fit(images_uint8, {"boxes", "labels"}, batch_size, epochs)`` on
the synthetic dataset's train split (``kdet.data.synthetic_arrays``), then
evaluated with ``kdet.metrics.coco_map`` (pycocotools-exact) on the disjoint
test split. This is the generalisation bar of the architecture issues: tiny
configurations at 128 px must reach AP50 >= 0.5 after 30 epochs on ~200 images.

Add an architecture with one line in ``CONFIGS``. Run:

    python benchmarks/train_synthetic.py                      # every configuration
    python benchmarks/train_synthetic.py retinanet_tiny --epochs 30

Writes ``docs/benchmarks/learning.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import REPO, machine_summary, markdown_table, write_fragment  # noqa: E402



def _models():
    import kdet.models

    return kdet.models


# name -> builder of an uncompiled detector taking raw 128-px images (one line per configuration).
CONFIGS = {
    "retinanet_tiny": lambda: _models().RetinaNet(3, backbone="tiny", image_size=128),
    "efficientdet_tiny": lambda: _models().EfficientDet(3, backbone="tiny", image_size=128),
}


def run(name: str, train_images: int = 200, test_images: int = 100, epochs: int = 30, batch_size: int = 8,
        seed: int = 0, verbose: int = 0) -> dict:
    """Trains configuration ``name`` and returns its held-out COCO numbers and timings."""
    import keras

    from kdet.data import synthetic_arrays
    from kdet.metrics import coco_map

    keras.utils.set_random_seed(seed)
    x_train, y_train = synthetic_arrays(train_images, 128, seed=seed, split="train")
    x_test, y_test = synthetic_arrays(test_images, 128, seed=seed, split="test")
    model = CONFIGS[name]()
    model.compile()
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = model.predict(x_test, batch_size=32, verbose=0)
    predict_s = time.perf_counter() - start
    metrics = coco_map(y_test, pred)
    return {"name": name, "params": model.count_params(), "train_images": train_images, "epochs": epochs,
            "train_s": train_s, "predict_ms_per_image": 1e3 * predict_s / test_images,
            "AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"]}


def report(results: list[dict]) -> str:
    rows = [(r["name"], f"{r['params']:,}", r["train_images"], r["epochs"], r["train_s"],
             r["predict_ms_per_image"], r["AP"], r["AP50"], r["AP75"]) for r in results]
    table = markdown_table(["configuration", "params", "train images", "epochs", "train s", "predict ms/img",
                            "AP", "AP50", "AP75"], rows)
    return ("## Learning on synthetic data (held-out COCO mAP)\n\n"
            "`python benchmarks/train_synthetic.py`: `model.compile()` defaults, `model.fit(images, targets, "
            "batch_size=8)` on the synthetic train split (128 px, 3 shape classes), COCO mAP "
            "(pycocotools-exact `kdet.metrics.coco_map`) on the disjoint test split.\n\n"
            f"{table}\nMachine: {machine_summary()}.\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=list(CONFIGS), help=f"any of {list(CONFIGS)}")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "learning.md"))
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    results = []
    for name in args.configs:
        result = run(name, args.train_images, args.test_images, args.epochs, seed=args.seed)
        print(f"{name}: AP50 {result['AP50']:.3f} AP {result['AP']:.3f} in {result['train_s']:.0f} s", flush=True)
        results.append(result)
    print(f"wrote {write_fragment(args.out, report(results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
