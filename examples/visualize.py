"""Ground truth vs predictions gallery (keras.visualization) and a precision/recall curve per class.

    python examples/visualize.py                          # tiny RetinaNet on synthetic -> gallery.png, pr_curves.png
    python examples/visualize.py --model run/final.keras --voc VOCdevkit/VOC2007
"""

import argparse

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import kdet  # noqa: E402


def gallery(images, y_true, y_pred, class_names, path, score=0.3):
    """Cyan: ground truth; yellow: predictions scoring at least ``score``."""
    keep = y_pred["scores"] >= score
    pred = {"boxes": np.where(keep[..., None], y_pred["boxes"], 0.0),
            "labels": np.where(keep, y_pred["labels"], -1)}
    mapping = dict(enumerate(class_names)) if class_names else None
    keras.visualization.plot_bounding_box_gallery(
        images, "xyxy", y_true={"boxes": y_true["boxes"], "labels": y_true["labels"]}, y_pred=pred,
        class_mapping=mapping, rows=2, cols=max(1, len(images) // 2), font_scale=0.4, legend=True)
    plt.savefig(path, bbox_inches="tight")
    plt.close("all")


def pr_curves(y_true, y_pred, class_names, path):
    curves = kdet.metrics.pr_curve(y_true, y_pred)
    plt.figure(figsize=(5, 4))
    for label, curve in sorted(curves.items()):
        name = class_names[label] if class_names else label
        plt.plot(curve["recall"], curve["precision"], label=str(name))
    plt.xlabel("recall")
    plt.ylabel("precision")
    plt.xlim(0, 1)
    plt.ylim(0, 1.05)
    plt.title("Precision / recall at IoU 0.5 (VOC matching)")
    plt.legend()
    plt.savefig(path, bbox_inches="tight")
    plt.close("all")
    return curves


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .keras file or zoo name (default: train a tiny RetinaNet)")
    parser.add_argument("--voc", help="a VOC-format folder to draw from (default: synthetic)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", default=".", help="folder for gallery.png and pr_curves.png")
    parser.add_argument("--fast", action="store_true", help="CI mode: barely trained tiny model")
    args = parser.parse_args(argv)

    from kdet.data.synthetic import SHAPES

    if args.model:
        model = kdet.load(args.model)
    else:
        x, y = kdet.data.synthetic_arrays(16 if args.fast else 200, 128, seed=0)
        model = kdet.models.RetinaNet(num_classes=3, backbone="tiny", image_size=128, class_names=SHAPES[:3])
        model.compile()
        model.fit(x, y, batch_size=8, epochs=1 if args.fast else 30, verbose=0)
    size = model.image_size or (128, 128)
    if args.voc:
        images, y_true = next(iter(kdet.data.voc(args.voc, "val", image_size=size, batch_size=args.images)))
        images, y_true = images.numpy(), {k: v.numpy() for k, v in y_true.items()}
    else:
        images, y_true = kdet.data.synthetic_arrays(args.images, size, split="test")
    y_pred = {k: np.asarray(v) for k, v in model.predict(images, verbose=0).items()}
    gallery(images, y_true, y_pred, model.class_names, f"{args.out}/gallery.png")
    curves = pr_curves(y_true, y_pred, model.class_names, f"{args.out}/pr_curves.png")
    print(f"wrote {args.out}/gallery.png and {args.out}/pr_curves.png ({len(curves)} classes)")
    return curves


if __name__ == "__main__":
    main()
