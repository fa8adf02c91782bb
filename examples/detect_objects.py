"""Detects objects in an image with a zoo model.

    python examples/detect_objects.py                                  # YOLOv3 (COCO) on the bundled photo
    python examples/detect_objects.py street.jpg --model efficientdet_d0_coco --score 0.4

Pretrained COCO weights are downloaded once into $KDET_HOME (default ~/.kdet).
Offline, or with --fast (CI), the script says so and instead trains a tiny
RetinaNet on synthetic shapes for a few seconds and detects on a synthetic
image, so that it always runs end to end.
"""

import argparse
import pathlib

import numpy as np
from PIL import Image, ImageDraw

import kdet

DEFAULT_IMAGE = pathlib.Path(kdet.__file__).parent / "assets" / "images" / "ivan.jpg"


def tiny_stand_in(epochs: int):
    """A tiny RetinaNet trained briefly on synthetic shapes, and a held-out synthetic image."""
    from kdet.data.synthetic import SHAPES

    x, y = kdet.data.synthetic_arrays(32, 128, seed=0)
    model = kdet.models.RetinaNet(num_classes=3, backbone="tiny", image_size=128, class_names=SHAPES[:3])
    model.compile()
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    test_image = kdet.data.synthetic_arrays(1, 128, split="test")[0][0]
    return model, test_image


def draw(image, result, class_names, path):
    picture = Image.fromarray(np.asarray(image, np.uint8))
    pen = ImageDraw.Draw(picture)
    for box, score, label in zip(result["boxes"], result["scores"], result["labels"]):
        name = class_names[label] if class_names else str(label)
        pen.rectangle(box.tolist(), outline=(255, 200, 0), width=2)
        pen.text((box[0], max(0, box[1] - 12)), f"{name} {score:.2f}", fill=(255, 200, 0))
    picture.save(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", default=str(DEFAULT_IMAGE))
    parser.add_argument("--model", default="yolov3_darknet53_coco", help="a name from `kdet models`")
    parser.add_argument("--score", type=float, default=0.3)
    parser.add_argument("--out", default="objects.png")
    parser.add_argument("--fast", action="store_true", help="CI mode: no download, tiny stand-in model")
    args = parser.parse_args(argv)

    model = None
    if not args.fast:
        try:
            model = kdet.load(args.model)
            image = kdet.data.load_image(args.image)
        except kdet.WeightsUnavailableError as error:
            print(f"Pretrained weights unavailable ({error}).")
    if model is None:
        print("Using a tiny RetinaNet trained on synthetic shapes instead.")
        model, image = tiny_stand_in(epochs=3 if args.fast else 30)
    result = model.detect(image, score_threshold=args.score)
    for box, score, label in zip(result["boxes"], result["scores"], result["labels"]):
        name = model.class_names[label] if model.class_names else label
        print(f"{name}: {score:.3f} at {np.round(box, 1).tolist()}")
    draw(image, result, model.class_names, args.out)
    print(f"{len(result['boxes'])} detection(s) above {args.score}; drawn to {args.out}")
    return result


if __name__ == "__main__":
    main()
