"""Fine-tunes a RetinaNet to new classes: reuse every weight but the class head, then model.fit.

    python examples/finetune_retinanet.py                         # synthetic: 3 shapes -> 2 new shapes
    python examples/finetune_retinanet.py --voc VOCdevkit/VOC2007 --classes cat dog --backbone resnet50

The source model is a RetinaNet trained on the first three synthetic shapes
(or, with --source, any saved .keras RetinaNet such as a COCO one); the
target has new classes, so its class head starts fresh while backbone, FPN
and box head keep the learned weights (``kdet.zoo.transfer_matching_weights``).
"""

import argparse

import numpy as np

import kdet
from kdet.zoo import transfer_matching_weights


def synthetic_new_classes(num_images: int, split: str):
    """Synthetic images whose objects are shapes 3 and 4 (cross, diamond), relabelled 0 and 1."""
    x, y = kdet.data.synthetic_arrays(num_images, 128, num_classes=5, seed=11, split=split)
    keep = y["labels"] >= 3
    labels = np.where(keep, y["labels"] - 3, -1).astype(np.int32)
    boxes = np.where(keep[..., None], y["boxes"], 0.0).astype(np.float32)
    has_object = keep.any(axis=1)
    return x[has_object], {"boxes": boxes[has_object], "labels": labels[has_object]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="a saved .keras RetinaNet to start from (default: train one)")
    parser.add_argument("--voc", help="a VOC-format folder to fine-tune on (default: synthetic)")
    parser.add_argument("--classes", nargs="+", default=["cross", "diamond"])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--fast", action="store_true", help="CI mode: a few images, 1 epoch")
    args = parser.parse_args(argv)
    if args.fast:
        args.epochs = 1

    if args.source:
        source = kdet.load(args.source)
    else:  # a source model that knows rectangles, ellipses and triangles
        x, y = kdet.data.synthetic_arrays(16 if args.fast else 200, args.image_size, seed=0)
        source = kdet.models.RetinaNet(num_classes=3, backbone=args.backbone, image_size=args.image_size)
        source.compile()
        source.fit(x, y, batch_size=8, epochs=1 if args.fast else 20, verbose=2)

    target = kdet.models.RetinaNet(num_classes=len(args.classes), backbone=args.backbone,
                                   image_size=args.image_size, class_names=args.classes)
    skipped = transfer_matching_weights(source, target)  # returns the variables it could not copy
    print(f"copied {len(target.weights) - len(skipped)} of {len(target.weights)} variables; fresh: {skipped}")
    target.compile()
    if args.voc:
        train = kdet.data.voc(args.voc, "train", class_names=args.classes, image_size=args.image_size,
                              batch_size=8, shuffle=True, augmenter=kdet.data.Augmenter())
        val = kdet.data.voc(args.voc, "val", class_names=args.classes, image_size=args.image_size, batch_size=8)
        target.fit(train, epochs=args.epochs, verbose=2)
        metrics = kdet.metrics.evaluate_coco(target, val)
    else:
        x, y = synthetic_new_classes(24 if args.fast else 300, "train")
        x_val, y_val = synthetic_new_classes(16 if args.fast else 64, "validation")
        target.fit(x, y, batch_size=8, epochs=args.epochs, verbose=2)
        metrics = kdet.metrics.coco_map(y_val, target.predict(x_val, verbose=0))
    print(f"fine-tuned on {args.classes}: AP50 {metrics['AP50']:.3f}")
    return metrics


if __name__ == "__main__":
    main()
