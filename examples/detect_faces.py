"""Detects faces and their five landmarks with the pretrained MTCNN (offline, bundled weights).

    python examples/detect_faces.py                      # the bundled photo -> faces.png
    python examples/detect_faces.py photo.jpg --out out.png
"""

import argparse
import pathlib

import numpy as np
from PIL import Image, ImageDraw

import kdet

DEFAULT_IMAGE = pathlib.Path(kdet.__file__).parent / "assets" / "images" / "ivan.jpg"


def draw(image: np.ndarray, faces: dict, path: str) -> None:
    """Draws boxes (green) and landmarks (red dots) on a copy of ``image``."""
    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    for box, score, points in zip(faces["boxes"], faces["scores"], faces["landmarks"]):
        pen.rectangle(box.tolist(), outline=(0, 255, 0), width=3)
        pen.text((box[0], max(0, box[1] - 12)), f"{score:.2f}", fill=(0, 255, 0))
        for x, y in points:
            pen.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 0, 0))
    picture.save(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", default=str(DEFAULT_IMAGE))
    parser.add_argument("--out", default="faces.png")
    parser.add_argument("--fast", action="store_true", help="CI mode: the same, on a half-size image")
    args = parser.parse_args(argv)

    image = kdet.data.load_image(args.image)
    if args.fast:  # fewer pyramid scales: the same cascade in less time
        image = np.asarray(Image.fromarray(image).resize((image.shape[1] // 2, image.shape[0] // 2)))
    model = kdet.load("mtcnn")
    faces = model.detect(image)
    for box, score, points in zip(faces["boxes"], faces["scores"], faces["landmarks"]):
        print(f"face {np.round(box, 1).tolist()} score {score:.3f} "
              f"eyes {np.round(points[:2], 1).tolist()} nose {np.round(points[2], 1).tolist()}")
    draw(image, faces, args.out)
    print(f"{len(faces['boxes'])} face(s); drawn to {args.out}")
    return faces


if __name__ == "__main__":
    main()
