"""Trains any architecture (tiny backbone) from scratch on the synthetic shapes with plain model.fit.

    python examples/train_from_scratch.py --arch yolov3
    python examples/train_from_scratch.py --arch faster_rcnn --epochs 40

Prints COCO AP50 on held-out synthetic images (pycocotools conventions).
"""

import argparse

import kdet

BUILDERS = {
    "retinanet": lambda: kdet.models.RetinaNet(num_classes=3, backbone="tiny", image_size=128),
    "efficientdet": lambda: kdet.models.EfficientDet(num_classes=3, backbone="tiny", image_size=128),
    "ssd": lambda: kdet.models.SSD(num_classes=3, backbone="tiny", image_size=128),
    "yolov3": lambda: kdet.models.YOLOV3(num_classes=3, backbone="tiny", image_size=128),
    "faster_rcnn": lambda: kdet.models.FasterRCNN(num_classes=3, backbone="tiny", image_size=128),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="retinanet", choices=sorted(BUILDERS))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default=None, help="save the trained model here (.keras)")
    parser.add_argument("--fast", action="store_true", help="CI mode: 16 images, 1 epoch")
    args = parser.parse_args(argv)
    if args.fast:
        args.images, args.epochs = 16, 1

    x, y = kdet.data.synthetic_arrays(args.images, 128, seed=0)
    x_val, y_val = kdet.data.synthetic_arrays(32, 128, split="validation")
    model = BUILDERS[args.arch]()
    model.compile()
    model.fit(x, y, batch_size=8, epochs=args.epochs, verbose=2)
    metrics = kdet.metrics.coco_map(y_val, model.predict(x_val, batch_size=8, verbose=0))
    print(f"{args.arch}: held-out AP50 {metrics['AP50']:.3f}, AP {metrics['AP']:.3f}")
    if args.out:
        model.save(args.out)
    return metrics


if __name__ == "__main__":
    main()
