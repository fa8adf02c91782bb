"""Trains any architecture on any supported dataset: kdet.training.train from the command line.

    python examples/train.py                                         # tiny RetinaNet on synthetic shapes
    python examples/train.py --model yolov3 --backbone tiny --data synthetic:500 --epochs 50
    python examples/train.py --model retinanet --backbone resnet50 --num-classes 20 \\
        --data voc:VOCdevkit/VOC2007 --val voc:VOCdevkit/VOC2007 --epochs 24 --mixed-precision --mirrored
    python examples/train.py --model ssd --data tfds:voc/2007 --val tfds:voc/2007 --out runs/ssd

Killing it (even with SIGKILL) and running the same command again resumes
from the last backup in --out. Watch it with `tensorboard --logdir runs/kdet/logs`.
"""

import argparse

from kdet.training import ARCHITECTURES, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="retinanet",
                        help=f"architecture ({', '.join(ARCHITECTURES)}), zoo name or .keras path")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--data", default="synthetic:256",
                        help="synthetic[:N], coco:PATH, voc:PATH, yolo:PATH or tfds:NAME")
    parser.add_argument("--val", default="synthetic:64", help="validation data (same forms), '' for none")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the architecture's recipe")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument("--out", default="runs/kdet")
    parser.add_argument("--backup-every", default="epoch", help="'epoch' or a number of steps")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--mirrored", action="store_true", help="tf.distribute.MirroredStrategy on local GPUs")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--fast", action="store_true", help="CI mode: 8 images, 1 epoch of 2 steps")
    args = parser.parse_args(argv)
    if args.fast:
        args.data, args.val, args.epochs, args.steps, args.batch_size = "synthetic:8", "synthetic:4", 1, 2, 4
        args.image_size = 64

    backup_every = args.backup_every if args.backup_every == "epoch" else int(args.backup_every)
    result = train(args.model, args.data, epochs=args.epochs, batch_size=args.batch_size,
                   steps_per_epoch=args.steps, num_classes=args.num_classes, backbone=args.backbone,
                   image_size=args.image_size, validation_data=args.val or None, learning_rate=args.lr,
                   augment=not args.no_augment, out_dir=args.out, backup_every=backup_every,
                   mixed_precision=args.mixed_precision, strategy="mirrored" if args.mirrored else None,
                   verbose=2 if args.fast else "auto")
    print(f"final model: {result.final_path}; best: {result.best_path}; "
          f"last loss {result.history['loss'][-1]:.4f}")
    return result


if __name__ == "__main__":
    main()
