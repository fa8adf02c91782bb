"""``make demo``: pretrained MTCNN finds faces and landmarks on a bundled photo.

Runs offline: the weights and the image ship inside the kdet package.
Writes ``demo_output/faces.png`` (boxes + 5 landmarks per face) and prints
the detections.

Usage:
    python -m kdet.demo [IMAGE] [--out demo_output/faces.png]
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import pathlib
import time


def bundled_image() -> pathlib.Path:
    """Path of the bundled demo photo (``kdet/assets/images/ivan.jpg``)."""
    return pathlib.Path(str(importlib.resources.files("kdet") / "assets" / "images" / "ivan.jpg"))


def draw_faces(image, faces: dict, path: pathlib.Path) -> None:
    """Draws boxes, scores and landmarks with matplotlib and saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2]
    fig, ax = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    ax.imshow(image)
    for box, score, marks in zip(faces["boxes"], faces["scores"], faces["landmarks"]):
        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=2))
        ax.text(x1, y1 - 3, f"face {score:.2f}", color="black", fontsize=9,
                bbox={"facecolor": "lime", "alpha": 0.8, "pad": 1, "linewidth": 0})
        ax.scatter(marks[:, 0], marks[:, 1], s=14, c=["red", "red", "yellow", "cyan", "cyan"])
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Detect faces and landmarks with pretrained MTCNN.")
    parser.add_argument("image", nargs="?", default=None, help="image path (default: bundled photo)")
    parser.add_argument("--out", default="demo_output/faces.png", help="annotated output PNG")
    args = parser.parse_args(argv)

    from kdet.data.images import load_image
    from kdet.models.mtcnn import MTCNN

    source = pathlib.Path(args.image) if args.image else bundled_image()
    image = load_image(source)
    model = MTCNN()  # packaged original weights, no download
    start = time.perf_counter()
    faces = model.detect(image)
    first = time.perf_counter() - start
    start = time.perf_counter()
    faces = model.detect(image)
    again = time.perf_counter() - start
    names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    report = [{"box_xyxy": [round(float(v), 1) for v in box], "score": round(float(score), 4),
               "landmarks": {n: [round(float(v), 1) for v in p] for n, p in zip(names, marks)}}
              for box, score, marks in zip(faces["boxes"], faces["scores"], faces["landmarks"])]
    print(f"MTCNN on {source} ({image.shape[1]}x{image.shape[0]}): {len(report)} face(s)")
    print(json.dumps(report, indent=2))
    print(f"first call (includes graph tracing or XLA compilation): {first:.2f} s; compiled call: {again * 1000:.1f} ms")
    out = pathlib.Path(args.out)
    draw_faces(image, faces, out)
    print(f"annotated image written to {out.resolve()}")
    return faces


if __name__ == "__main__":
    main()
