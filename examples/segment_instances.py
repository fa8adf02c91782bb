"""Instance segmentation: trains a tiny Mask R-CNN on synthetic shapes with masks, then draws its masks.

    python examples/segment_instances.py                 # 200 images, 30 epochs (the learning bar's protocol)
    python examples/segment_instances.py --images 96 --epochs 15 --picture docs/images/mask_rcnn_synthetic.png

Prints held-out box and mask AP50 (pycocotools conventions) and writes a grid
of held-out images with the detections ``model.detect`` returns: boxes, labels,
scores and masks pasted into the image's pixels.
"""

import argparse

import numpy as np

import kdet
from kdet.data.synthetic import SHAPES
from kdet.visualization import draw_detections

GRID = (2, 3)  # rows, columns of held-out images in the picture


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--picture", default="masks.png", help="where to write the held-out detections (PNG)")
    parser.add_argument("--fast", action="store_true", help="CI mode: 16 images, 1 epoch")
    args = parser.parse_args(argv)
    if args.fast:
        args.images, args.epochs = 16, 1

    x, y = kdet.data.synthetic_arrays(args.images, 128, seed=0, masks=True)
    x_test, y_test = kdet.data.synthetic_arrays(32, 128, split="test", masks=True)
    model = kdet.models.MaskRCNN(num_classes=3, backbone="tiny", image_size=128, class_names=list(SHAPES[:3]))
    model.compile()
    model.fit(x, y, batch_size=8, epochs=args.epochs, verbose=2)
    predicted = model.predict(x_test, batch_size=8, verbose=0)
    box = kdet.metrics.coco_map(y_test, predicted)["AP50"]
    mask = kdet.metrics.coco_map(y_test, predicted, iou_type="segm")["AP50"]
    print(f"tiny Mask R-CNN, {args.images} images x {args.epochs} epochs: held-out box AP50 {box:.3f}, "
          f"mask AP50 {mask:.3f}")

    rows, cols = GRID
    tiles = [draw_detections(x_test[i], model.detect(x_test[i], score_threshold=0.5), model.class_names)
             for i in range(rows * cols)]
    grid = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    from PIL import Image

    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.picture)
    print(f"wrote {args.picture}")
    return {"box_AP50": box, "mask_AP50": mask}


if __name__ == "__main__":
    main()
